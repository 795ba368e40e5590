"""A step's sampled completions as the trainer batches them: one ``Sequence`` per completion,
micro-batches of similar length, and the right-padded tensors of one micro-batch. Pure torch."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sequence:
    """One sampled completion, as the trainer uses it."""

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    sampler_logprobs: list[float]
    advantage: float


def micro_batches(sequences: list[Sequence], size: int) -> list[list[Sequence]]:
    """Sequences sorted by length, then cut into micro-batches: little padding in each."""
    ordered = sorted(sequences, key=lambda s: len(s.prompt_token_ids) + len(s.completion_token_ids))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def collate(sequences: list[Sequence], pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors of one micro-batch: B sequences, L = longest prompt + completion,
    T = longest completion."""
    longest = max(len(s.prompt_token_ids) + len(s.completion_token_ids) for s in sequences)
    longest_completion = max(len(s.completion_token_ids) for s in sequences)
    batch = {
        "input_ids": torch.full((len(sequences), longest), pad_token_id, dtype=torch.long),  # (B, L)
        "attention_mask": torch.zeros(len(sequences), longest, dtype=torch.long),  # (B, L)
        "completion_positions": torch.zeros(len(sequences), longest, dtype=torch.bool),  # (B, L)
        "completion_mask": torch.zeros(len(sequences), longest_completion, dtype=torch.bool),  # (B, T)
        "sampler_logps": torch.zeros(len(sequences), longest_completion),  # (B, T)
        "advantages": torch.tensor([s.advantage for s in sequences]),  # (B,)
    }
    for row, sequence in enumerate(sequences):
        prompt, completion = len(sequence.prompt_token_ids), len(sequence.completion_token_ids)
        batch["input_ids"][row, : prompt + completion] = torch.tensor(
            sequence.prompt_token_ids + sequence.completion_token_ids
        )
        batch["attention_mask"][row, : prompt + completion] = 1
        batch["completion_positions"][row, prompt : prompt + completion] = True
        batch["completion_mask"][row, :completion] = True
        batch["sampler_logps"][row, :completion] = torch.tensor(sequence.sampler_logprobs)
    return {name: tensor.to(device) for name, tensor in batch.items()}
