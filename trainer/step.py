"""One GRPO step, ``train_step``, in the order it runs:

  1. sample      the server's groups for the step's P questions: G completions each, sampled with
                 the newest adapter (with --max-staleness: the batch the producer sampled ahead)
  2. score       the reward functions (``--reward-funcs``; the four of ``shared/rewards.py``), summed with weights
  3. advantages  (r − group mean) / (group std + 1e-4) within each question's group
  4. loss        the clipped policy loss of TRL 1.16 (``dapo`` by default) on the 4-bit LoRA policy,
                 over micro-batches of similar length, each sequence weighted by π_trainer/π_sampler
                 (TRL's ``sequence_mask``: the server runs another precision than the nf4 trainer);
                 with ``--dequantize-once`` on a copy of the base dequantised once for the update;
                 with ``--shared-prompt-forward`` each question's prompt runs once for its group;
                 with ``--mask-truncated-completions`` a completion cut off at the limit counts in none
  5. optimizer   gradient-norm clip, AdamW; with ``--num-iterations`` μ > 1, steps 4-5 μ times on the
                 batch, π_old the policy before the first (the clip acts); the schedule steps once
  6. push        the adapter's PEFT bytes to the server as the next version (``AdapterSync``)
  7. log         the step's metrics row (``trainer/metrics.py``), returned to the loop

With one update per batch the "old" policy of the ratio is the loss's own forward pass, detached:
no second forward for it (with μ > 1, one pass without gradients gives it, as in TRL). Sequences
whose advantage is 0 (a group with equal rewards) add nothing to the loss when beta is 0, so they
are not run at all; their tokens still count in the normaliser. Where no group trains, one
micro-batch goes through the policy without gradients, so the sampler–trainer gap is measured
every step.
A step whose loss or gradients are not finite is skipped: no update, nothing pushed. A reward function
that raises or returns no finite score (``shared.rewards.RewardError``) stops the run before the update.
"""

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.prompting import Problem
from shared.protocol import GenerateRequest, GenerateResponse
from shared.rewards import WeightedReward
from trainer.adapter_sync import AdapterSync, Pushed
from trainer.batching import Sequence, collate, micro_batches, question_indices, same_prompt
from trainer.distributed import Ranks
from trainer.evaluation import score_reply, strictly_correct
from trainer.generators import Generator, GeneratorError
from trainer.grpo import (
    LossConfig,
    Normaliser,
    clipped,
    group_advantages,
    policy_loss,
    sampler_importance_weights,
)
from trainer.metrics import LossStats, metrics_row, skipped_row
from trainer.policy import HeadLogprobs, PromptPrefix, completion_logprobs, nf4_dequantized_once, prompt_prefix
from trainer.producer import Batches, SampledBatch
from trainer.settings import TrainSettings

logger = logging.getLogger("trainer")


@dataclass(frozen=True)
class Run:
    """What every step reads and no step changes."""

    settings: TrainSettings
    run_dir: Path
    generator: Generator
    problems: list[Problem]  # the training questions
    eval_questions: list[tuple[int, Problem]]  # (test index, question) for --eval-every
    rewards: tuple[WeightedReward, ...]
    loss_config: LossConfig
    device: torch.device
    ranks: Ranks = Ranks()  # the trainer processes of this run (``trainer/distributed.py``)
    dequantize_once: bool = False  # the update computes with a dequantised copy of the nf4 base (``--dequantize-once``)
    lm_head_dtype: torch.dtype = torch.float32  # the LM head's product when scoring (``--lm-head-dtype``)
    head: Callable = HeadLogprobs.apply  # scores completion tokens with their gradient (``completion_logprobs``)
    shared_prompt: bool = False  # a group's prompt runs once, its keys and values shared (``--shared-prompt-forward``)


@dataclass(frozen=True)
class Learner:
    """What a step's update changes."""

    policy: object  # the PEFT model: 4-bit base + LoRA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass(frozen=True)
class Lead:
    """Rank 0's duties in a step, behind one seam: it takes the step's batch from the sampler (now,
    or ahead with ``--max-staleness``) and pushes the adapter after the update, and every rank gets
    both from it (``trainer/distributed.py``); it alone logs the row ``train_step`` returns. One
    process is rank 0 of one. ``batches`` and ``sync`` are rank 0's (None on the others)."""

    ranks: Ranks
    batches: Batches | None = None
    sync: AdapterSync | None = None

    def take(self, step: int) -> tuple[SampledBatch, int, int]:
        """The step's batch, how many optimizer steps behind the newest adapter its sampler was, and
        the stale batches dropped so far."""
        taken = None
        if self.ranks.main:
            batch = self.batches.take(step)
            taken = (batch, self.sync.policy_step - batch.policy_step, self.batches.dropped)
        return self.ranks.from_main(taken)

    def push(self, step: int) -> Pushed:
        """The adapter after ``step``'s update, pushed as the next version; the push on every rank."""
        return self.ranks.from_main(self.sync.push(policy_step=step) if self.ranks.main else None)


@dataclass(frozen=True)
class StepResult:
    adapter_version: int | None  # the version the next step samples with: pushed now, or the same one if skipped
    metrics: dict[str, float]
    skipped: bool = False


@contextlib.contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block took to ``timings[phase]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started


def problems_of(run: Run, step: int) -> tuple[list[int], list[Problem]]:
    indices = question_indices(step, run.settings.prompts_per_step, len(run.problems), run.settings.seed)
    return indices, [run.problems[index] for index in indices]


def sample(run: Run, step: int, adapter_version: int | None) -> GenerateResponse:
    """The groups of ``step``'s questions, sampled with ``adapter_version``: TRL's names become the
    wire's here (``num_generations`` → ``n``, ``max_completion_length`` → ``max_tokens``)."""
    settings = run.settings
    _, problems = problems_of(run, step)
    reply = run.generator.generate(
        GenerateRequest(
            prompts=[problem.prompt for problem in problems],
            n=settings.num_generations,
            max_tokens=settings.max_completion_length,
            temperature=settings.temperature,
            top_p=settings.top_p,
            adapter_version=adapter_version,
        )
    )
    if reply.adapter_version != adapter_version:  # never train on another policy's samples as if they were ours
        raise GeneratorError(f"asked the server for adapter {adapter_version}, it sampled with {reply.adapter_version}")
    return reply


def sequences_of(reply: GenerateResponse, advantages: torch.Tensor) -> list[Sequence]:
    """One ``Sequence`` per completion, P × G in group order; ``advantages``: (P·G,)."""
    completions = [(group, completion) for group in reply.groups for completion in group.completions]
    return [
        Sequence(
            prompt_token_ids=group.prompt_token_ids,
            completion_token_ids=completion.token_ids,
            sampler_logprobs=completion.logprobs,
            advantage=advantage,
            truncated=completion.finish_reason == "length",
        )
        for (group, completion), advantage in zip(completions, advantages.tolist(), strict=True)
    ]


def to_train(sequences: list[Sequence], settings: TrainSettings) -> tuple[list[Sequence], Normaliser]:
    """The sequences that go through the loss, and the batch-wide counts that normalise it. A
    sequence whose advantage is 0 adds nothing to the loss at beta 0 and is not run, but its
    tokens count; with ``--mask-truncated-completions`` (TRL's) a completion cut off at the limit
    counts in neither, though it counts as a sequence (TRL's ``grpo`` and ``dr_grpo`` divide by all).

    >>> batch = [Sequence([1], [2, 3], [-1.0] * 2, 0.5), Sequence([1], [4], [-1.0], 0.0),
    ...          Sequence([1], [5, 6, 7], [-1.0] * 3, -0.5, truncated=True)]
    >>> trained, normaliser = to_train(batch, TrainSettings(max_completion_length=3))
    >>> [s.advantage for s in trained], normaliser
    ([0.5, -0.5], Normaliser(sequences=3, tokens=6, max_completion_length=3))
    >>> trained, normaliser = to_train(batch, TrainSettings(max_completion_length=3, mask_truncated_completions=True))
    >>> [s.advantage for s in trained], normaliser.tokens
    ([0.5], 3)
    """
    counted = [s for s in sequences if not (settings.mask_truncated_completions and s.truncated)]
    trained = [s for s in counted if s.advantage != 0.0 or settings.beta != 0.0]
    tokens = sum(len(s.completion_token_ids) for s in counted)
    return trained, Normaliser(len(sequences), tokens, settings.max_completion_length)


def backward_micro_batch(
    run: Run, policy, sequences: list[Sequence], normaliser: Normaliser, prefix: PromptPrefix | None = None
) -> LossStats:
    """Forward + backward of one micro-batch's share of the loss (gradients accumulate; with a
    ``prefix``, the prompt's share waits in ``prefix.read`` for ``prefix.backward()``)."""
    settings = run.settings
    skipped = prefix.tokens if prefix is not None else 0
    batch = collate(sequences, pad_token_id=0, device=run.device, skipped_prompt_tokens=skipped)
    logps, entropies = completion_logprobs(
        policy,
        batch,
        settings.temperature,
        head_dtype=run.lm_head_dtype,
        head=run.head,
        prefix=prefix,
    )  # (B, T)
    mask = batch.completion_mask.float()  # (B, T)
    old = batch.old_logprobs  # (B, T) the policy before the batch's first update; None: μ = 1, logps itself
    before_update = logps.detach() if old is None else old
    weights = None  # (B, 1)
    if settings.vllm_importance_sampling_correction:
        weights = sampler_importance_weights(
            before_update, batch.sampler_logprobs, mask, settings.vllm_importance_sampling_clip_max
        )
    reference_logps = None
    if settings.beta != 0.0:
        with torch.no_grad(), policy.disable_adapter():  # the reference: the base model
            reference_prefix = (
                None if prefix is None else prompt_prefix(policy, sequences[0].prompt_token_ids, run.device)
            )
            reference_logps, _ = completion_logprobs(
                policy, batch, settings.temperature, head_dtype=run.lm_head_dtype, prefix=reference_prefix
            )
    loss = policy_loss(logps, batch.advantages, mask, normaliser, run.loss_config, weights, reference_logps, old)
    loss.backward()
    held = clipped(torch.exp(logps.detach() - before_update), batch.advantages, run.loss_config) & batch.completion_mask
    return LossStats(
        loss=loss.item(),
        sequences=len(sequences),
        importance_weight=0.0 if weights is None else float(weights.sum()),
        dropped=0 if weights is None else int((weights == 0).sum()),
        clipped=int(held.sum()),
        clip_tokens=0 if old is None else int(mask.sum()),
        **measured(logps.detach(), entropies, batch.sampler_logprobs, mask),
    )


def measure_micro_batch(run: Run, policy, sequences: list[Sequence]) -> LossStats:
    """The entropy and sampler–trainer gap of ``sequences``, no loss: a step where every group
    scored alike trains nothing, yet ``--max-sampler-gap`` still checks it, on one micro-batch:
    a whole group at 1,024 tokens costs a large share of such a step (see the performance page)."""
    batch = collate(sequences, pad_token_id=0, device=run.device)
    with torch.no_grad():
        logps, entropies = completion_logprobs(policy, batch, run.settings.temperature, head_dtype=run.lm_head_dtype)
    return LossStats(**measured(logps, entropies, batch.sampler_logprobs, batch.completion_mask.float()))


def measured(logps: torch.Tensor, entropies: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """Token sums of the entropy and of the gap to the sampler; every tensor (B, T)."""
    gap = (logps - sampler_logprobs) * mask  # log π_trainer − log π_sampler
    return dict(
        tokens=int(mask.sum()),
        entropy=float((entropies * mask).sum()),
        abs_gap=float(gap.abs().sum()),
        kl_gap=float(((torch.exp(gap) - 1 - gap) * mask).sum()),
    )


def in_micro_batches(run: Run, policy, sequences: list[Sequence], work) -> None:
    """``work(chunk, prefix)`` on ``sequences`` in micro-batches of similar length (with
    ``run.shared_prompt``: each prompt once, then its completions' micro-batches, whose prompt's
    gradient goes through its forward once they are done)."""
    for group in same_prompt(sequences) if run.shared_prompt else [sequences]:
        prefix = prompt_prefix(policy, group[0].prompt_token_ids, run.device) if run.shared_prompt else None
        for chunk in micro_batches(group, run.settings.micro_batch_size):
            work(chunk, prefix)
        if prefix is not None:
            prefix.backward()


def backward_share(run: Run, policy, trained: list[Sequence], normaliser: Normaliser) -> LossStats:
    """Forward + backward of this rank's share of ``trained`` (``in_micro_batches``); then the
    gradients and the stats summed over every rank (one process: its own)."""
    stats = []
    in_micro_batches(
        run,
        policy,
        run.ranks.share(trained),
        lambda chunk, prefix: stats.append(backward_micro_batch(run, policy, chunk, normaliser, prefix)),
    )
    run.ranks.sum_gradients([p for p in policy.parameters() if p.requires_grad])
    return run.ranks.sum_stats(sum(stats, LossStats()))


def with_old_logprobs(run: Run, policy, trained: list[Sequence]) -> list[Sequence]:
    """``trained`` with this rank's share carrying the policy's log-probabilities before the batch's
    first update (π_old of the ratio, with ``--num-iterations`` > 1): one pass without gradients,
    run as the updates run (``in_micro_batches``), as TRL computes ``old_per_token_logps``."""
    old: dict[int, list[float]] = {}

    def measure(chunk: list[Sequence], prefix: PromptPrefix | None) -> None:
        skipped = 0 if prefix is None else prefix.tokens
        batch = collate(chunk, pad_token_id=0, device=run.device, skipped_prompt_tokens=skipped)
        logps, _ = completion_logprobs(policy, batch, run.settings.temperature, head_dtype=run.lm_head_dtype,
                                       prefix=prefix)  # fmt: skip
        for sequence, row in zip(chunk, logps, strict=True):
            old[id(sequence)] = row[: len(sequence.completion_token_ids)].tolist()

    with torch.no_grad():
        in_micro_batches(run, policy, run.ranks.share(trained), measure)
    return [dataclasses.replace(s, old_logprobs=old[id(s)]) if id(s) in old else s for s in trained]


def optimizer_step(
    learner: Learner, max_grad_norm: float, loss: float, schedule: bool = True
) -> tuple[float, float] | None:
    """Clip, AdamW step, and (``schedule``) the schedule's step: (the gradient norm, the learning rate
    used), or None where the loss or the gradients are not finite (then nothing of them reaches the
    adapter)."""
    trainable = [p for p in learner.policy.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm).item()
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        learner.optimizer.zero_grad(set_to_none=True)
        return None
    learning_rate = learner.scheduler.get_last_lr()[0]
    learner.optimizer.step()
    if schedule:
        learner.scheduler.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return grad_norm, learning_rate


def update(
    run: Run, learner: Learner, sequences: list[Sequence], trained: list[Sequence], normaliser: Normaliser, timings
) -> tuple[LossStats, tuple[float, float] | None]:
    """``--num-iterations`` (μ) forwards, backwards and optimizer steps on the one sampled batch, the
    schedule stepping once: the first update's stats, with the clip counted over every update, and
    the last update's (gradient norm, learning rate), or None where one was not finite. Where no
    group trains, the gap to the sampler is still measured, on one micro-batch."""
    settings, policy = run.settings, learner.policy
    with nf4_dequantized_once(policy, enabled=run.dequantize_once):
        if not trained:  # nothing to learn from; the gap to the sampler is still measured
            with timed(timings, "train"):
                stats = measure_micro_batch(run, policy, sequences[: settings.micro_batch_size])
            with timed(timings, "optimizer"):
                return stats, optimizer_step(learner, settings.max_grad_norm, stats.loss)
        if settings.num_iterations > 1:
            with timed(timings, "train"):
                trained = with_old_logprobs(run, policy, trained)
        first = None
        for iteration in range(settings.num_iterations):
            with timed(timings, "train"):  # gradients accumulate over micro-batches (and ranks)
                stats = backward_share(run, policy, trained, normaliser)
            first = stats if first is None else dataclasses.replace(
                first, clipped=first.clipped + stats.clipped, clip_tokens=first.clip_tokens + stats.clip_tokens
            )  # fmt: skip
            last = iteration == settings.num_iterations - 1
            with timed(timings, "optimizer"):
                result = optimizer_step(learner, settings.max_grad_norm, stats.loss, schedule=last)
            if result is None:  # the step is skipped (``skipped_step`` moves the schedule on)
                return first, None
    return first, result


def train_step(step: int, run: Run, learner: Learner, lead: Lead) -> StepResult:
    """One GRPO step on the questions of ``step``, as one rank runs it; returns the version the next
    step samples with and the step's metrics row."""
    settings, timings = run.settings, {}
    indices, problems = problems_of(run, step)

    with timed(timings, "sample"):  # with a producer: waiting for the batch it sampled ahead
        batch, staleness, stale_batches_dropped = lead.take(step)

    with timed(timings, "score"):
        scores = score_reply(problems, batch.reply, run.rewards)  # every reward on the P × G completions
        texts = [completion.text for group in batch.reply.groups for completion in group.completions]
        answers = [problem.answer for problem in problems for _ in range(settings.num_generations)]
        correct = [strictly_correct(text, answer) for text, answer in zip(texts, answers, strict=True) if answer]
    rewards = torch.tensor(scores.total).view(len(problems), settings.num_generations)  # (P, G), NaN: unscorable

    advantages = group_advantages(rewards, scale=settings.scale_rewards == "group").flatten()  # (P·G,)
    sequences = sequences_of(batch.reply, advantages)
    trained, normaliser = to_train(sequences, settings)

    stats, optimized = update(run, learner, sequences, trained, normaliser, timings)  # the loss, AdamW (μ times)
    if optimized is None:
        return skipped_step(step, indices[0], batch.adapter_version, learner, "NaN/Inf loss or gradients", timings)

    with timed(timings, "push"):  # the next step samples with this version
        pushed = lead.push(step)

    metrics = metrics_row(
        step=step,
        first_question_index=indices[0],
        staleness=staleness,
        stale_batches_dropped=stale_batches_dropped,
        reply=batch.reply,
        scores=scores,
        strictly_correct=correct,
        rewards=rewards,
        stats=stats,
        grad_norm=optimized[0],
        learning_rate=optimized[1],
        push_bytes=pushed.adapter_bytes,
        push_load_ms=pushed.load_ms,
        timings=timings,
    )
    return StepResult(adapter_version=pushed.adapter_version, metrics=metrics)


def skipped_step(
    step: int, first_question_index: int, adapter_version: int | None, learner: Learner, reason: str, timings
) -> StepResult:
    """No optimizer step, nothing pushed (the next step samples with the same version); the
    learning-rate schedule moves on."""
    learner.scheduler.step()
    logger.warning("step %d skipped: %s; nothing pushed", step, reason)
    row = skipped_row(step, first_question_index, adapter_version, reason, timings)
    return StepResult(adapter_version=adapter_version, metrics=row, skipped=True)
