"""A step's row of ``metrics.jsonl`` (and trackio), and the names of its metrics.

The names are constants: the report, the study and the benchmarks import them rather than retype
the strings. docs/metrics.md describes each one.
"""

import dataclasses
import math
import statistics
from dataclasses import dataclass

import torch

from shared.protocol import GenerateResponse
from shared.rewards import RewardScores, match_format_exactly

# ---- metric names ----------------------------------------------------------------------------
STEP = "step"
FIRST_QUESTION_INDEX = "first_question_index"
SAMPLED_WITH_ADAPTER = "sampled_with_adapter"  # the adapter_version that sampled the batch (-1: the base model)
STALENESS = "staleness"
STALE_BATCHES_DROPPED = "stale_batches_dropped"
REWARD = "reward"
REWARD_STD = "reward_std"
ZERO_STD_GROUPS = "zero_std_groups"
SEQUENCES_TRAINED = "sequences_trained"
COMPLETION_LENGTH_MEAN = "completion_length_mean"
COMPLETION_LENGTH_MAX = "completion_length_max"
TRUNCATED_FRACTION = "truncated_fraction"
LOSS = "loss"
GRAD_NORM = "grad_norm"
LEARNING_RATE = "learning_rate"
PUSH_BYTES = "push_bytes"
PUSH_LOAD_MS = "push_load_ms"
STEP_SECONDS = "time/step_s"
GENERATION_TOKENS_PER_S = "generation_tokens_per_s"
FORMAT_EXACT_RATE = "format_exact_rate"
STRICT_ACCURACY = "strict_accuracy"  # sampled completions with the strict format and the right answer
ENTROPY = "entropy"
SAMPLER_GAP = "sampler_gap/mean_abs_logprob_diff"
SAMPLER_GAP_KL = "sampler_gap/kl"
IMPORTANCE_WEIGHT_MEAN = "importance_weight_mean"
IMPORTANCE_DROPPED_FRACTION = "importance_dropped_fraction"
CLIP_RATIO = "clip_ratio/region_mean"  # tokens whose ratio the clip held, over every update of the batch (TRL's)
SKIPPED = "skipped"
SKIP_REASON = "skip_reason"
PHASES = ("sample", "score", "train", "optimizer", "push")  # train_step's timed phases, in order


def reward_key(reward_name: str, statistic: str = "mean") -> str:
    """A reward function's mean (or std) over the step's completions it applied to (TRL's names).

    >>> reward_key("check_answer_correctness"), reward_key("check_answer_correctness", "std")
    ('rewards/check_answer_correctness/mean', 'rewards/check_answer_correctness/std')
    """
    return f"rewards/{reward_name}/{statistic}"


def is_reward_mean(key: str) -> bool:
    """Whether ``key`` is one reward function's mean (``reward_key``).

    >>> is_reward_mean("rewards/f/mean"), is_reward_mean("rewards/f/std"), is_reward_mean("reward")
    (True, False, False)
    """
    return key.startswith("rewards/") and key.endswith("/mean")


def reward_statistics(per_function: dict[str, list[float]]) -> dict[str, float]:
    """Each reward function's mean and (unbiased) std over the completions it applied to (NaN: it
    returned None); a function that applied to none has no entry.

    >>> reward_statistics({"f": [1.0, 3.0, float("nan")], "g": [float("nan")]})
    {'rewards/f/mean': 2.0, 'rewards/f/std': 1.4142135623730951}
    """
    row = {}
    for name, values in per_function.items():
        applied = [value for value in values if not math.isnan(value)]
        if applied:
            row[reward_key(name)] = sum(applied) / len(applied)
            row[reward_key(name, "std")] = statistics.stdev(applied) if len(applied) > 1 else 0.0
    return row


def time_key(phase: str) -> str:
    """The seconds of one of ``PHASES``.

    >>> time_key("sample")
    'time/sample_s'
    """
    return f"time/{phase}_s"


def eval_key(name: str) -> str:
    """A periodic evaluation's metric (``trainer.evaluation``'s names).

    >>> eval_key("strict_accuracy")
    'eval/strict_accuracy'
    """
    return f"eval/{name}"


@dataclass(frozen=True)
class LossStats:
    """What the forward + backward of one micro-batch measured, as sums; ``+`` adds two up, so the
    step's record is the sum over its micro-batches."""

    loss: float = 0.0  # the micro-batches' shares of the batch loss
    sequences: int = 0  # sequences trained on (through the loss)
    tokens: int = 0  # completion tokens that went through the policy (trained on, or only measured)
    entropy: float = 0.0  # summed over those tokens
    abs_gap: float = 0.0  # |log π_trainer − log π_sampler|, summed over tokens
    kl_gap: float = 0.0  # k3 estimate of KL(sampler‖trainer), summed over tokens
    importance_weight: float = 0.0  # π_trainer/π_sampler, summed over sequences
    dropped: int = 0  # sequences whose importance weight exceeded the cap
    clipped: int = 0  # trained tokens whose ratio π/π_old the clip held (only with --num-iterations > 1)
    clip_tokens: int = 0  # trained tokens the clip was judged on, over every update

    def __add__(self, other: "LossStats") -> "LossStats":
        return LossStats(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))


def timing_metrics(timings: dict[str, float]) -> dict[str, float]:
    return {**{time_key(phase): seconds for phase, seconds in timings.items()}, STEP_SECONDS: sum(timings.values())}


def metrics_row(
    *,
    step: int,
    first_question_index: int,
    staleness: int,
    stale_batches_dropped: int,
    reply: GenerateResponse,
    scores: RewardScores,
    strictly_correct: list[bool],
    rewards: torch.Tensor,
    stats: LossStats,
    grad_norm: float,
    learning_rate: float,
    push_bytes: int,
    push_load_ms: float,
    timings: dict[str, float],
) -> dict[str, float]:
    """The step's row. ``rewards``: (P, G) weighted totals (NaN: unscorable); ``strictly_correct``: one verdict per
    completion (P·G), strict format and the right answer; empty where the dataset has no ``answer``."""
    completions = [completion for group in reply.groups for completion in group.completions]
    lengths = [len(completion.token_ids) for completion in completions]
    row = {
        STEP: step,
        FIRST_QUESTION_INDEX: first_question_index,
        SAMPLED_WITH_ADAPTER: -1 if reply.adapter_version is None else reply.adapter_version,
        STALENESS: staleness,
        STALE_BATCHES_DROPPED: stale_batches_dropped,
        REWARD: rewards.nanmean().item(),  # NaN: a completion no reward function applied to
        REWARD_STD: rewards[~rewards.isnan()].std().item(),
        **reward_statistics(scores.per_function),
        ZERO_STD_GROUPS: int((rewards.std(dim=1) == 0).sum()),
        SEQUENCES_TRAINED: stats.sequences,
        COMPLETION_LENGTH_MEAN: sum(lengths) / len(lengths),
        COMPLETION_LENGTH_MAX: max(lengths),
        TRUNCATED_FRACTION: sum(c.finish_reason == "length" for c in completions) / len(completions),
        LOSS: stats.loss,
        GRAD_NORM: grad_norm,
        LEARNING_RATE: learning_rate,
        PUSH_BYTES: push_bytes,
        PUSH_LOAD_MS: push_load_ms,
        **timing_metrics(timings),
        GENERATION_TOKENS_PER_S: sum(lengths) / max(timings["sample"], 1e-9),
    }
    if strictly_correct:  # a task without an ``answer`` column has no right answer to count
        row[STRICT_ACCURACY] = sum(strictly_correct) / len(strictly_correct)
    format_scores = scores.per_function.get(match_format_exactly.__name__)
    if format_scores is not None:  # the strict format's own reward: > 0 where the format matched
        row[FORMAT_EXACT_RATE] = sum(score > 0 for score in format_scores) / len(format_scores)
    if stats.tokens:  # measured on the sequences that went through the policy
        row[ENTROPY] = stats.entropy / stats.tokens
        row[SAMPLER_GAP] = stats.abs_gap / stats.tokens
        row[SAMPLER_GAP_KL] = stats.kl_gap / stats.tokens
    if stats.sequences:  # the sequences trained on
        row[IMPORTANCE_WEIGHT_MEAN] = stats.importance_weight / stats.sequences
        row[IMPORTANCE_DROPPED_FRACTION] = stats.dropped / stats.sequences
    if stats.clip_tokens:
        row[CLIP_RATIO] = stats.clipped / stats.clip_tokens
    return row


def skipped_row(
    step: int, first_question_index: int, adapter_version: int | None, reason: str, timings: dict[str, float]
) -> dict:
    """The row of a step whose loss or gradients were not finite."""
    return {
        STEP: step,
        FIRST_QUESTION_INDEX: first_question_index,
        SAMPLED_WITH_ADAPTER: -1 if adapter_version is None else adapter_version,
        SKIPPED: 1,
        SKIP_REASON: reason,
        **timing_metrics(timings),
    }
