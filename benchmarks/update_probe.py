"""The trainer's update on one fixed step-sized batch, timed in one process: forward + backward of
every micro-batch, as ``train_step`` runs it (``trainer.step.backward_share``), each variant in
turn, ``--repetitions`` times interleaved. Prints one ``@@ {json}`` line: seconds and the
sampler–trainer gap by variant, the update's model FLOPs, this machine's matmul FLOP/s in the
compute dtype (bf16 on CPU) measured here, and the padding share. On a GPU where there is one.

The batch: with ``--server-url``, completions the server samples for the first GSM8K train
questions (their token ids and sampler logprobs, as a step gets them); without, random tokens
(then the gap means nothing). Advantages are ±1 either way: the update's cost does not depend on them.

Variants, each adding one change to the one before:

- ``per-micro-batch``: bitsandbytes dequantises every nf4 layer in each forward and backward, the
  LM head's product in float32, its gradient by autograd under activation checkpointing
  (``checkpointed_head_logprobs``, here: the trainer before ``--dequantize-once``,
  ``--lm-head-dtype`` and ``HeadLogprobs``)
- ``dequantised once``: ``--dequantize-once on``, one dequantised copy for the update
- ``compute-dtype head``: and ``--lm-head-dtype compute`` (bf16 on CPU)
- ``head gradient in the forward``: and ``HeadLogprobs``, the head's gradient computed where its
  softmax is
- ``shared prompt forward``: and ``--shared-prompt-forward``, each group's prompt run once for its
  completions (the trainer's defaults on CPU)

``--profile VARIANT`` prints torch.profiler's table of that variant's update instead.

    python -m benchmarks.update_probe --sequences 16 --completion-tokens 256 --repetitions 3
"""

import argparse
import json
import random
import sys
import time

VARIANTS = {  # name: (dequantise once, LM head in the compute dtype, head gradient in the forward, shared prompt)
    "per-micro-batch": (False, False, False, False),
    "dequantised once": (True, False, False, False),
    "compute-dtype head": (True, True, False, False),
    "head gradient in the forward": (True, True, True, False),
    "shared prompt forward": (True, True, True, True),
}


def step_sequences(count: int, prompt_tokens: int, completion_tokens: int, seed: int = 0, group_size: int = 8) -> list:
    """``count`` sequences of random tokens: groups of ``group_size`` that share a prompt of
    ``prompt_tokens``, completions between a quarter of ``completion_tokens`` and all of it (a
    step's spread), advantages ±1."""
    from trainer.batching import Sequence

    generator = random.Random(seed)
    sequences = []
    for index in range(count):
        length = generator.randint(max(1, completion_tokens // 4), completion_tokens)
        if index % group_size == 0:
            prompt = [generator.randrange(3, 40000) for _ in range(prompt_tokens)]
        sequences.append(
            Sequence(
                prompt_token_ids=prompt,
                completion_token_ids=[generator.randrange(3, 40000) for _ in range(length)],
                sampler_logprobs=[-5.0] * length,
                advantage=1.0 if index % 2 else -1.0,
            )
        )
    return sequences


def sampled_sequences(server_url: str, count: int, completion_tokens: int, group_size: int = 8) -> list:
    """``count`` completions the server samples (temperature 1, base model) for the first GSM8K
    train questions, ``group_size`` per question; advantages ±1."""
    from shared.gsm8k import load_gsm8k
    from shared.protocol import GenerateRequest
    from trainer.batching import Sequence
    from trainer.generators import GrpoMathServer

    questions = load_gsm8k("train")[: max(1, count // group_size)]
    reply = GrpoMathServer(server_url).generate(
        GenerateRequest(
            prompts=[question.prompt for question in questions],
            n=min(count, group_size),
            max_tokens=completion_tokens,
            temperature=1.0,
        )
    )
    completions = [(group, completion) for group in reply.groups for completion in group.completions]
    return [
        Sequence(group.prompt_token_ids, completion.token_ids, completion.logprobs, 1.0 if index % 2 else -1.0)
        for index, (group, completion) in enumerate(completions[:count])
    ]


def update_flops(policy, sequences: list, lora_rank: int, lora_targets: tuple[str, ...], shared_prompt: bool) -> float:
    """Model FLOPs of one update (no recomputation counted): the frozen linear layers' forward and
    input gradient (4 per weight per token), LoRA's forward, input and weight gradients (6), the LM
    head at completion positions only (4 per weight per scored token), causal attention (6 L² d per
    layer and sequence). ``shared_prompt``: each distinct prompt's tokens count once (attention
    still counts every sequence's L², as the completions attend to the whole prompt)."""
    from trainer.batching import same_prompt
    from trainer.policy import nf4_layers

    config = policy.get_base_model().config
    tokens = sum(s.tokens for s in sequences)
    if shared_prompt:
        tokens -= sum((len(group) - 1) * len(group[0].prompt_token_ids) for group in same_prompt(sequences))
    scored = sum(len(s.completion_token_ids) for s in sequences)
    layers = nf4_layers(policy)
    base = sum(layer.in_features * layer.out_features for _, layer in layers)
    adapted = [layer for name, layer in layers if name.endswith(tuple(f"{t}.base_layer" for t in lora_targets))]
    lora = sum(lora_rank * (layer.in_features + layer.out_features) for layer in adapted)
    head = config.hidden_size * config.vocab_size
    attention = sum(6 * s.tokens**2 * config.hidden_size for s in sequences)
    return 4 * base * tokens + 6 * lora * tokens + 4 * head * scored + attention * config.num_hidden_layers


def checkpointed_head_logprobs(
    hidden, targets, head_weight, temperature: float, head_dtype, chunk_tokens: int
) -> tuple:
    """The reference for ``trainer.policy.HeadLogprobs``: the same log-probabilities and entropies,
    with the gradient left to autograd, each chunk under activation checkpointing (its logits are
    computed again for the backward). The trainer's LM head before ``HeadLogprobs``."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def chunk_logprobs(hidden_rows, target_rows) -> tuple:
        logits = (hidden_rows.to(head_dtype) @ head_weight.to(head_dtype).T).float() / temperature  # (n, vocab)
        log_normaliser = torch.logsumexp(logits, dim=-1)  # (n,)
        logprobs = logits.gather(1, target_rows[:, None]).squeeze(1) - log_normaliser
        with torch.no_grad():
            entropy = log_normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        return logprobs, entropy

    chunks = [
        checkpoint(
            chunk_logprobs,
            hidden[start : start + chunk_tokens],
            targets[start : start + chunk_tokens],
            use_reentrant=False,
        )
        for start in range(0, targets.numel(), chunk_tokens)
    ]
    return torch.cat([logprobs for logprobs, _ in chunks]), torch.cat([entropy for _, entropy in chunks])


def wait_for(device) -> None:
    """Return once ``device`` has run the work queued on it (CUDA runs it asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device, dtype, size: int = 2048, repetitions: int = 5) -> float:
    """The best of ``repetitions`` (size × size) @ (size × size) products in ``dtype``, in FLOP/s."""
    import torch

    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    torch.matmul(a, b)
    seconds = []
    for _ in range(repetitions):
        wait_for(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        wait_for(device)
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / min(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=16, help="a step's prompts × G")
    parser.add_argument("--prompt-tokens", type=int, default=150, help="random batch only")
    parser.add_argument("--server-url", default=None, help="sample the batch from this grpo-math server")
    parser.add_argument("--completion-tokens", type=int, default=256, help="the longest completion")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--profile", choices=VARIANTS, help="print torch.profiler's table of this variant's update")
    args = parser.parse_args()

    import torch

    from shared.models import resolve_model
    from trainer.batching import micro_batches
    from trainer.grpo import LossConfig, Normaliser
    from trainer.policy import HeadLogprobs, compute_dtype_for, load_policy, nf4_dequantized_once
    from trainer.settings import TrainSettings
    from trainer.step import Run, backward_share

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = TrainSettings(micro_batch_size=args.micro_batch, lora_dropout=0.0)
    compute_dtype = compute_dtype_for(device)
    policy = load_policy(
        resolve_model("auto"), settings, init_adapter=None, gradient_checkpointing=False, device=device
    )
    if args.server_url:
        sequences = sampled_sequences(args.server_url, args.sequences, args.completion_tokens)
    else:
        sequences = step_sequences(args.sequences, args.prompt_tokens, args.completion_tokens)
    normaliser = Normaliser(len(sequences), sum(len(s.completion_token_ids) for s in sequences), args.completion_tokens)

    def update(
        dequantize_once: bool, head_in_compute_dtype: bool, head_gradient_in_forward: bool, shared_prompt: bool
    ) -> tuple[float, float]:
        """Seconds of one update, and its mean |log π_trainer − log π_sampler| per token."""
        head_dtype = compute_dtype if head_in_compute_dtype else torch.float32
        run = Run(
            settings,
            None,
            None,
            [],
            [],
            (),
            LossConfig(),
            device,
            lm_head_dtype=head_dtype,
            head=HeadLogprobs.apply if head_gradient_in_forward else checkpointed_head_logprobs,
            shared_prompt=shared_prompt,
        )
        started = time.perf_counter()
        with nf4_dequantized_once(policy, enabled=dequantize_once):
            stats = backward_share(run, policy, sequences, normaliser)
        wait_for(device)
        seconds = time.perf_counter() - started
        policy.zero_grad(set_to_none=True)
        return seconds, stats.abs_gap / stats.tokens

    update(*VARIANTS["per-micro-batch"])  # untimed: first-call allocations
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            update(*VARIANTS[args.profile])
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return 0
    seconds, gaps = {name: [] for name in VARIANTS}, {}
    for _ in range(args.repetitions):
        for name, variant in VARIANTS.items():
            update_seconds, gaps[name] = update(*variant)
            seconds[name].append(update_seconds)
    real = sum(s.tokens for s in sequences)
    padded = sum(len(chunk) * max(s.tokens for s in chunk) for chunk in micro_batches(sequences, args.micro_batch))
    result = {
        "seconds": seconds,
        "sampler_gap": gaps if args.server_url else None,
        "update_flops": {  # by variant
            name: update_flops(policy, sequences, settings.lora_r, settings.lora_target_modules, variant[3])
            for name, variant in VARIANTS.items()
        },
        "matmul_flops_per_second": matmul_flops_per_second(device, compute_dtype),
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "matmul_flops_per_second_by_dtype": {  # small products: bf16 without native kernels is slow
            str(dtype).removeprefix("torch."): matmul_flops_per_second(device, dtype, size=512)
            for dtype in dict.fromkeys((compute_dtype, torch.bfloat16, torch.float32))
        },
        "padding_share": (padded - real) / padded,
        "tokens": real,
        "threads": torch.get_num_threads(),
    }
    print("@@", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
