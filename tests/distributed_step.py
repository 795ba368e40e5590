"""One GRPO update on a fixed batch, run by ``tests/test_distributed.py``: under ``torchrun`` (every
rank trains its share, gradients summed) or as one process. Every rank writes, to OUT (rank 0) or
OUT with ``.rank<r>`` before its suffix, the LoRA weights before (``start/<name>``) and after the
optimizer step (``<name>``) and the gradient the optimizer was given (``grad/<name>``: summed over
the ranks, before clipping). ``--share-of-rank 0 --of 2`` in one process trains only what rank 0's
share would be, with no sum: what a missing all-reduce would leave on rank 0.
``--sequence-gradients`` (one process) also writes ``abs_sum/<name>``, Σ_i |g_i| over the batch's
sequences, each sequence's gradient computed alone: what the rounding bound of a sum of the g_i
in another order is made of.

    torchrun --nproc-per-node 2 -m tests.distributed_step OUT.safetensors
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from shared.gsm8k import load_gsm8k, solution_reasoning
from shared.models import resolve_model
from shared.prompting import format_reference_completion
from trainer.batching import Sequence
from trainer.distributed import Ranks
from trainer.grpo import LossConfig, Normaliser
from trainer.settings import TrainSettings
from trainer.step import Run, backward_share, optimizer_step
from trainer.train import load_learner

SETTINGS = TrainSettings(
    lora_dropout=0.0, micro_batch_size=1, learning_rate=1e-3, vllm_importance_sampling_correction=False, seed=0
)


def fixed_sequences(tokenizer, count: int = 8) -> list[Sequence]:
    """GSM8K prompts with their reference solutions as completions, advantages ±1 in turn."""
    sequences = []
    for index, problem in enumerate(load_gsm8k("train")[:count]):
        text = tokenizer.apply_chat_template(problem.prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        reference = format_reference_completion(solution_reasoning(problem.solution), problem.answer)
        completion_ids = tokenizer(reference, add_special_tokens=False)["input_ids"][:48]
        advantage = 1.0 if index % 2 == 0 else -1.0
        sequences.append(Sequence(prompt_ids, completion_ids, [0.0] * len(completion_ids), advantage))
    return sequences


def output_of(path: str, rank: int) -> str:
    return path if rank == 0 else str(Path(path).with_suffix(f".rank{rank}{Path(path).suffix}"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--share-of-rank", type=int)
    parser.add_argument("--of", type=int, default=2)
    parser.add_argument("--sequence-gradients", action="store_true")
    arguments = parser.parse_args()
    from transformers import AutoTokenizer

    ranks = Ranks.from_environment()
    model_path = resolve_model("auto")
    torch.manual_seed(0)
    learner, _ = load_learner(SETTINGS, model_path, ranks.device(), [])
    trained = [(name, p) for name, p in learner.policy.named_parameters() if p.requires_grad]
    with torch.no_grad():  # B ≠ 0, so the gradients reach lora_A as well as lora_B
        for name, parameter in trained:
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    ranks.copy_from_main([p for _, p in trained])
    sequences = fixed_sequences(AutoTokenizer.from_pretrained(model_path))
    normaliser = Normaliser(len(sequences), sum(len(s.completion_token_ids) for s in sequences), 48)
    if arguments.share_of_rank is not None:  # one process, one rank's share, nothing summed
        sequences = Ranks(arguments.share_of_rank, arguments.of).share(sequences)
    tensors = {f"start/{name}": p.detach().float().clone() for name, p in trained}
    run = Run(SETTINGS, None, None, [], [], (), LossConfig(), ranks.device(), ranks)
    if arguments.sequence_gradients:
        absolute_sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in trained}
        for sequence in sequences:
            backward_share(run, learner.policy, [sequence], normaliser)
            for name, p in trained:
                absolute_sums[name] += p.grad.double().abs()
            learner.policy.zero_grad(set_to_none=True)
        tensors.update({f"abs_sum/{name}": total for name, total in absolute_sums.items()})
    stats = backward_share(run, learner.policy, sequences, normaliser)
    tensors.update({f"grad/{name}": p.grad.detach().clone() for name, p in trained})
    optimizer_step(learner, SETTINGS.max_grad_norm, stats.loss)
    tensors.update({name: p.detach().float().contiguous() for name, p in trained})
    save_file(tensors, output_of(arguments.output, ranks.rank))
    print(f"rank {ranks.rank}: loss {stats.loss:.6f} sequences {stats.sequences}")
    ranks.close()


if __name__ == "__main__":
    main()
