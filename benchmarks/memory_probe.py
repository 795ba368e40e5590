"""One forward + backward of the trainer's policy over a step-sized batch, in its own process, to
measure its peak memory: peak RSS on CPU, peak allocated on GPU. Prints one ``@@ {json}`` line.

    python -m benchmarks.memory_probe --load-in-4bit --sequences 16 --tokens 400 --micro-batch 2
"""

import argparse
import json
import resource
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, required=True)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=400, help="prompt + completion tokens per sequence")
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--micro-batch", type=int, default=2)
    args = parser.parse_args()

    import torch

    from shared.models import resolve_model
    from trainer.batching import Sequence, collate, micro_batches
    from trainer.policy import completion_logprobs, compute_dtype_for, load_policy
    from trainer.settings import TrainSettings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = TrainSettings(load_in_4bit=args.load_in_4bit)
    policy = load_policy(
        resolve_model("auto"), settings, init_adapter=None, gradient_checkpointing=device.type == "cuda", device=device
    )
    loaded_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    weight_bytes = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    generator = torch.Generator().manual_seed(0)
    completion = args.tokens - args.prompt_tokens
    sequences = [
        Sequence(
            prompt_token_ids=torch.randint(3, 40000, (args.prompt_tokens,), generator=generator).tolist(),
            completion_token_ids=torch.randint(3, 40000, (completion,), generator=generator).tolist(),
            sampler_logprobs=[-5.0] * completion,
            advantage=1.0,
        )
        for _ in range(args.sequences)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for chunk in micro_batches(sequences, args.micro_batch):
        batch = collate(chunk, pad_token_id=0, device=device)
        logps, _ = completion_logprobs(policy, batch, temperature=1.0)
        (-(logps * batch.completion_mask).sum() / batch.completion_mask.sum()).backward()
    result = {
        "load_in_4bit": args.load_in_4bit,
        "compute_dtype": str(compute_dtype_for(device)).removeprefix("torch."),  # the unquantised base's dtype too
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": loaded_rss_mb,
        "weights_mb": weight_bytes / 2**20,
        "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    print("@@", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
