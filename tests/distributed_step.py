"""One GRPO update on a fixed batch, run by ``tests/test_distributed.py``: under ``torchrun`` (every
rank trains its share, gradients summed) or as one process; rank 0 writes the LoRA weights after
the optimizer step to OUT. ``--share-of-rank 0 --of 2`` in one process trains only what rank 0's
share would be, with no sum: what a missing all-reduce would leave on rank 0.

    torchrun --nproc-per-node 2 -m tests.distributed_step OUT.safetensors
"""

import argparse

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--share-of-rank", type=int)
    parser.add_argument("--of", type=int, default=2)
    arguments = parser.parse_args()
    from transformers import AutoTokenizer

    ranks = Ranks.from_environment()
    settings = TrainSettings(
        lora_dropout=0.0, micro_batch_size=1, learning_rate=1e-3, vllm_importance_sampling_correction=False, seed=0
    )
    model_path = resolve_model("auto")
    torch.manual_seed(0)
    learner, _ = load_learner(settings, model_path, ranks.device(), [])
    ranks.copy_from_main([p for p in learner.policy.parameters() if p.requires_grad])
    sequences = fixed_sequences(AutoTokenizer.from_pretrained(model_path))
    normaliser = Normaliser(len(sequences), sum(len(s.completion_token_ids) for s in sequences), 48)
    if arguments.share_of_rank is not None:  # one process, one rank's share, nothing summed
        sequences = Ranks(arguments.share_of_rank, arguments.of).share(sequences)
    trained = [(name, p) for name, p in learner.policy.named_parameters() if p.requires_grad]
    weights = {f"start/{name}": p.detach().float().clone() for name, p in trained}
    run = Run(settings, None, None, [], [], (), LossConfig(), ranks.device(), ranks)
    stats = backward_share(run, learner.policy, sequences, normaliser)
    optimizer_step(learner, settings.max_grad_norm, stats.loss)
    if ranks.main:
        weights.update({name: p.detach().float().contiguous() for name, p in trained})
        save_file(weights, arguments.output)
        print(f"loss {stats.loss:.6f} sequences {stats.sequences}")
    ranks.close()


if __name__ == "__main__":
    main()
