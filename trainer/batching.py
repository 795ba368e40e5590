"""What a step trains on: which questions (a seeded order, reshuffled every epoch), one ``Sequence``
per sampled completion, the sequences that share a prompt, micro-batches of similar length, and the
right-padded tensors of one micro-batch (``MicroBatch``). Pure Python and torch."""

import functools
import random
from dataclasses import dataclass, fields

import torch


@functools.lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    return random.Random(seed * 1_000_003 + epoch).sample(range(size), size)


def question_indices(step: int, per_step: int, size: int, seed: int) -> list[int]:
    """Which of the ``size`` questions step ``step`` trains on: a seeded shuffle, reshuffled every
    epoch. A function of (seed, step) alone, so a resumed run continues the same order.

    >>> question_indices(1, 2, 10, seed=0), question_indices(6, 2, 10, seed=0)  # step 6 starts epoch 2
    ([6, 9], [2, 1])
    """
    indices = []
    for position in range((step - 1) * per_step, step * per_step):
        epoch, index = divmod(position, size)
        indices.append(_epoch_order(size, seed, epoch)[index])
    return indices


@dataclass(frozen=True)
class Sequence:
    """One sampled completion, as the trainer uses it."""

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    sampler_logprobs: list[float]
    advantage: float
    truncated: bool = False  # cut off at the length limit (TRL's mask_truncated_completions masks it)
    old_logprobs: list[float] | None = None  # the trainer's own, before the batch's first update (μ > 1)

    @property
    def tokens(self) -> int:
        """Prompt + completion tokens: the length of its row in a micro-batch."""
        return len(self.prompt_token_ids) + len(self.completion_token_ids)


@dataclass(frozen=True)
class MicroBatch:
    """B sequences, right-padded: L = the longest prompt + completion, T = the longest completion."""

    input_ids: torch.Tensor  # (B, L) prompt + completion token ids
    attention_mask: torch.Tensor  # (B, L) 1 on tokens, 0 on padding
    completion_positions: torch.Tensor  # (B, L) True where a completion token sits
    completion_mask: torch.Tensor  # (B, T) True for the first len(completion_i) entries of row i
    sampler_logprobs: torch.Tensor  # (B, T) the sampler's log π of each completion token, 0 on padding
    advantages: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor | None = None  # (B, T) the trainer's before the first update, where known

    def to(self, device: torch.device) -> "MicroBatch":
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return MicroBatch(**{name: None if value is None else value.to(device) for name, value in values.items()})


def same_prompt(sequences: list[Sequence]) -> list[list[Sequence]]:
    """``sequences`` grouped by prompt, in the order each prompt first appears (a GRPO group's
    completions share one).

    >>> [[s.advantage for s in group] for group in same_prompt([
    ...     Sequence([1, 2], [3], [-1.0], 0.5), Sequence([4], [3], [-1.0], 1.0), Sequence([1, 2], [5], [-1.0], -0.5)])]
    [[0.5, -0.5], [1.0]]
    """
    groups: dict[tuple[int, ...], list[Sequence]] = {}
    for sequence in sequences:
        groups.setdefault(tuple(sequence.prompt_token_ids), []).append(sequence)
    return list(groups.values())


def micro_batches(sequences: list[Sequence], size: int) -> list[list[Sequence]]:
    """Sequences sorted by length, then cut into micro-batches: little padding in each."""
    ordered = sorted(sequences, key=lambda s: s.tokens)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def collate(
    sequences: list[Sequence], pad_token_id: int, device: torch.device, skipped_prompt_tokens: int = 0
) -> MicroBatch:
    """The right-padded tensors of one micro-batch, on ``device``. ``skipped_prompt_tokens``: the
    leading prompt tokens each row leaves out because the model has them already, as the keys and
    values of a prompt the sequences share (``trainer.policy.PromptPrefix``)."""
    if skipped_prompt_tokens and len({tuple(s.prompt_token_ids[:skipped_prompt_tokens]) for s in sequences}) > 1:
        raise ValueError("rows that skip prompt tokens must share them")
    count = len(sequences)
    longest = max(s.tokens for s in sequences) - skipped_prompt_tokens
    longest_completion = max(len(s.completion_token_ids) for s in sequences)
    input_ids = torch.full((count, longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(count, longest, dtype=torch.long)
    completion_positions = torch.zeros(count, longest, dtype=torch.bool)
    completion_mask = torch.zeros(count, longest_completion, dtype=torch.bool)
    sampler_logprobs = torch.zeros(count, longest_completion)
    with_old = all(s.old_logprobs is not None for s in sequences)
    old_logprobs = torch.zeros(count, longest_completion) if with_old else None
    for row, sequence in enumerate(sequences):
        prompt_token_ids = sequence.prompt_token_ids[skipped_prompt_tokens:]
        prompt, completion = len(prompt_token_ids), len(sequence.completion_token_ids)
        input_ids[row, : prompt + completion] = torch.tensor(prompt_token_ids + sequence.completion_token_ids)
        attention_mask[row, : prompt + completion] = 1
        completion_positions[row, prompt : prompt + completion] = True
        completion_mask[row, :completion] = True
        sampler_logprobs[row, :completion] = torch.tensor(sequence.sampler_logprobs)
        if with_old:
            old_logprobs[row, :completion] = torch.tensor(sequence.old_logprobs)
    advantages = torch.tensor([s.advantage for s in sequences])
    return MicroBatch(
        input_ids, attention_mask, completion_positions, completion_mask, sampler_logprobs, advantages, old_logprobs
    ).to(device)
