"""One GRPO step, ``train_step``, in the order it runs:

  1. sample      the server's groups for the step's P questions: G completions each, sampled with
                 the newest adapter (with --max-staleness: the batch the producer sampled ahead)
  2. score       the four rewards of ``shared/rewards.py``, summed with their weights
  3. advantages  (r − group mean) / (group std + 1e-4) within each question's group
  4. loss        the clipped policy loss of TRL 1.16 (``dapo`` by default) on the 4-bit LoRA policy,
                 over micro-batches of similar length, each sequence weighted by π_trainer/π_sampler
                 (TRL's ``sequence_mask``: the server runs another precision than the nf4 trainer);
                 with ``--dequantize-once`` on a copy of the base dequantised once for the update;
                 with ``--shared-prompt-forward`` each question's prompt runs once for its group
  5. optimizer   gradient-norm clip, AdamW, the learning-rate schedule
  6. push        the adapter's PEFT bytes to the server as the next version (``AdapterSync``)
  7. log         the step's metrics row (``trainer/metrics.py``), returned to the loop

With one update per batch the "old" policy of the ratio is the loss's own forward pass, detached:
no second forward for it. Sequences whose advantage is 0 (a group with equal rewards) add nothing
to the loss when beta is 0, so they are not run at all; their tokens still count in the normaliser.
Where no group trains, one group goes through the policy without gradients, so the sampler–trainer
gap is measured every step.
A step whose rewards, loss or gradients are not finite is skipped: no update, nothing pushed.
"""

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.gsm8k import MathProblem
from shared.protocol import GenerateRequest, GenerateResponse
from shared.rewards import RewardScores, WeightedReward, score_completions
from trainer.adapter_sync import AdapterSync
from trainer.batching import Sequence, collate, micro_batches, question_indices, same_prompt
from trainer.distributed import Ranks
from trainer.evaluation import strictly_correct
from trainer.generators import Generator, GeneratorError
from trainer.grpo import LossConfig, Normaliser, group_advantages, policy_loss, sampler_importance_weights
from trainer.metrics import LossStats, metrics_row, skipped_row
from trainer.policy import PromptPrefix, completion_logprobs, nf4_dequantized_once, prompt_prefix
from trainer.producer import Batches
from trainer.settings import TrainSettings

logger = logging.getLogger("trainer")


@dataclass(frozen=True)
class Run:
    """What every step reads and no step changes."""

    settings: TrainSettings
    run_dir: Path
    generator: Generator
    problems: list[MathProblem]  # the training questions
    eval_questions: list[tuple[int, MathProblem]]  # (test index, question) for --eval-every
    rewards: tuple[WeightedReward, ...]
    loss_config: LossConfig
    device: torch.device
    ranks: Ranks = Ranks()  # the trainer processes of this run (``trainer/distributed.py``)
    dequantize_once: bool = False  # the update computes with a dequantised copy of the nf4 base (``--dequantize-once``)
    lm_head_dtype: torch.dtype = torch.float32  # the LM head's product when scoring (``--lm-head-dtype``)
    head_gradient_in_forward: bool = True  # False: the head's gradient by autograd (the update probe's reference)
    shared_prompt: bool = False  # a group's prompt runs once, its keys and values shared (``--shared-prompt-forward``)


@dataclass(frozen=True)
class Learner:
    """What a step's update changes."""

    policy: object  # the PEFT model: 4-bit base + LoRA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass(frozen=True)
class StepResult:
    adapter_version: int | None  # the version the next step samples with: pushed now, or the same one if skipped
    metrics: dict[str, float]
    skipped: bool = False


@contextlib.contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Record the seconds the block took as ``timings[phase]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = time.perf_counter() - started


def problems_of(run: Run, step: int) -> tuple[list[int], list[MathProblem]]:
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


def score(run: Run, problems: list[MathProblem], texts: list[str]) -> RewardScores:
    """Every reward on every completion; ``texts`` are the P × G completions, grouped by question."""
    group_size = run.settings.num_generations
    return score_completions(
        prompts=[problem.prompt for problem in problems for _ in range(group_size)],
        completions=texts,
        answer=[problem.answer for problem in problems for _ in range(group_size)],
        rewards=run.rewards,
    )


def sequences_of(reply: GenerateResponse, advantages: torch.Tensor) -> list[Sequence]:
    """One ``Sequence`` per completion, P × G in group order; ``advantages``: (P·G,)."""
    completions = [(group, completion) for group in reply.groups for completion in group.completions]
    return [
        Sequence(
            prompt_token_ids=group.prompt_token_ids,
            completion_token_ids=completion.token_ids,
            sampler_logprobs=completion.logprobs,
            advantage=advantage,
        )
        for (group, completion), advantage in zip(completions, advantages.tolist(), strict=True)
    ]


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
        head_gradient_in_forward=run.head_gradient_in_forward,
        prefix=prefix,
    )  # (B, T)
    mask = batch.completion_mask.float()  # (B, T)
    weights = None  # (B, 1)
    if settings.vllm_importance_sampling_correction:
        weights = sampler_importance_weights(
            logps.detach(), batch.sampler_logprobs, mask, settings.vllm_importance_sampling_clip_max
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
    loss = policy_loss(logps, batch.advantages, mask, normaliser, run.loss_config, weights, reference_logps)
    loss.backward()
    return LossStats(
        loss=loss.item(),
        sequences=len(sequences),
        importance_weight=0.0 if weights is None else float(weights.sum()),
        dropped=0 if weights is None else int((weights == 0).sum()),
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


def backward_share(run: Run, policy, trained: list[Sequence], normaliser: Normaliser) -> LossStats:
    """Forward + backward of this rank's share of ``trained``, in micro-batches of similar length
    (with ``run.shared_prompt``: each prompt once, then its completions' micro-batches); then the
    gradients and the stats summed over every rank (one process: its own)."""
    stats = LossStats()
    share = run.ranks.share(trained)
    for group in same_prompt(share) if run.shared_prompt else [share]:
        prefix = prompt_prefix(policy, group[0].prompt_token_ids, run.device) if run.shared_prompt else None
        for chunk in micro_batches(group, run.settings.micro_batch_size):
            stats += backward_micro_batch(run, policy, chunk, normaliser, prefix)
        if prefix is not None:
            prefix.backward()
    run.ranks.sum_gradients([p for p in policy.parameters() if p.requires_grad])
    return run.ranks.sum_stats(stats)


def optimizer_step(learner: Learner, max_grad_norm: float, loss: float) -> tuple[float, float] | None:
    """Clip, AdamW step, schedule step: (the gradient norm, the learning rate used), or None where
    the loss or the gradients are not finite (then nothing of them reaches the adapter)."""
    trainable = [p for p in learner.policy.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm).item()
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        learner.optimizer.zero_grad(set_to_none=True)
        return None
    learning_rate = learner.scheduler.get_last_lr()[0]
    learner.optimizer.step()
    learner.scheduler.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return grad_norm, learning_rate


def train_step(step: int, run: Run, learner: Learner, batches: Batches, sync: AdapterSync) -> StepResult:
    """One GRPO step on the questions of ``step``; returns the version the next step samples with
    and the step's metrics row."""
    settings, timings = run.settings, {}
    indices, problems = problems_of(run, step)

    with timed(timings, "sample"):  # with a producer: waiting for the batch it sampled ahead
        batch = run.ranks.from_main(batches.take(step) if run.ranks.main else None)
    staleness = sync.policy_step - batch.policy_step if run.ranks.main else 0  # steps behind the newest adapter

    with timed(timings, "score"):
        texts = [completion.text for group in batch.reply.groups for completion in group.completions]
        scores = score(run, problems, texts)
        answers = [problem.answer for problem in problems for _ in range(settings.num_generations)]
        correct = [strictly_correct(text, answer) for text, answer in zip(texts, answers, strict=True)]
    rewards = torch.tensor(scores.total).view(len(problems), settings.num_generations)  # (P, G)
    if not torch.isfinite(rewards).all():
        return skipped_step(step, indices[0], batch.adapter_version, learner, "NaN/Inf rewards", timings)

    advantages = group_advantages(rewards, scale=settings.scale_rewards == "group").flatten()  # (P·G,)
    sequences = sequences_of(batch.reply, advantages)
    trained = [s for s in sequences if s.advantage != 0.0 or settings.beta != 0.0]
    normaliser = Normaliser(
        sequences=len(sequences),
        tokens=sum(len(s.completion_token_ids) for s in sequences),
        max_completion_length=settings.max_completion_length,
    )

    # the loss: gradients accumulate over micro-batches (and ranks)
    with timed(timings, "train"), nf4_dequantized_once(learner.policy, enabled=run.dequantize_once):
        stats = backward_share(run, learner.policy, trained, normaliser)
        if not trained and run.ranks.main:  # nothing to learn from; the gap to the sampler is still measured
            stats = measure_micro_batch(run, learner.policy, sequences[: settings.micro_batch_size])

    with timed(timings, "optimizer"):
        update = optimizer_step(learner, settings.max_grad_norm, stats.loss)
    if update is None:
        return skipped_step(step, indices[0], batch.adapter_version, learner, "NaN/Inf loss or gradients", timings)

    with timed(timings, "push"):  # the next step samples with this version (rank 0 pushes)
        pushed = run.ranks.from_main(sync.push(policy_step=step) if run.ranks.main else None)
    if not run.ranks.main:  # rank 0 alone logs
        return StepResult(adapter_version=pushed.adapter_version, metrics={})

    metrics = metrics_row(
        step=step,
        first_question_index=indices[0],
        staleness=staleness,
        stale_batches_dropped=batches.dropped,
        reply=batch.reply,
        scores=scores,
        strictly_correct=correct,
        rewards=rewards,
        stats=stats,
        grad_norm=update[0],
        learning_rate=update[1],
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
