"""``grpo-math train``: GRPO on a 4-bit LoRA model that samples from the generator server and pushes
its adapter back to it after every step.

One step (``train_step``), in order:
  1. sample      the server samples G completions for each of P GSM8K questions with adapter v_k
                 (with --max-staleness: the batch a producer thread sampled ahead is taken)
  2. score       the four rewards of ``shared/rewards.py``, summed with their weights
  3. advantages  (r − group mean) / (group std + 1e-4) within each question's group
  4. loss        the clipped policy loss of TRL 1.16 (``dapo`` by default) on the 4-bit LoRA policy,
                 over micro-batches of similar length, each sequence weighted by π_trainer/π_sampler
                 (TRL's ``sequence_mask``: the server runs another precision than the nf4 trainer)
  5. optimizer   gradient-norm clip, AdamW, linear learning-rate decay
  6. push        the adapter's PEFT bytes to ``POST /v1/adapters`` as v_{k+1}
  7. log         one row to ``metrics.jsonl`` and trackio, the tqdm bar

With one update per batch the "old" policy of the ratio is the loss's own forward pass, detached:
no second forward for it. Sequences whose advantage is 0 (a group with equal rewards) add nothing
to the loss when beta is 0, so they are not run at all; their tokens still count in the normaliser.

With ``--max-staleness S`` (S ≥ 1) a producer thread (``trainer/producer.py``) samples the next
steps while this one trains, each batch with the newest adapter pushed and at most S optimizer
steps older than the policy that trains on it (an older one is dropped and sampled again); the
importance weights use the sampler's own logprobs, so they correct the staleness too.

Left out: several updates per batch (``num_iterations`` > 1), multi-GPU, reward models.

    grpo-math serve &                                  # the generator server, 127.0.0.1:8000
    grpo-math train --max-steps 10                     # the recipe's defaults
    grpo-math train --output-dir runs/NAME --resume    # continue from the newest checkpoint
"""

import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from shared.gsm8k import MathProblem, load_gsm8k
from shared.models import resolve_model
from shared.protocol import GenerateRequest, GenerateResponse
from shared.rewards import REWARD_FUNCTIONS, RewardScores, WeightedReward, match_format_exactly, score_completions
from shared.settings import SettingsError, parse_settings
from trainer.batching import Sequence, collate, micro_batches
from trainer.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from trainer.evaluation import RATE_METRICS, evaluate
from trainer.generators import Generator, GeneratorError, connect_generator, wait_until_healthy
from trainer.grpo import LossConfig, Normaliser, group_advantages, policy_loss, sampler_importance_weights
from trainer.policy import adapter_upload, completion_logprobs, load_policy
from trainer.producer import BatchProducer, SampledBatch
from trainer.settings import TrainSettings, check_against_server

logger = logging.getLogger("trainer")


@dataclass(frozen=True)
class Run:
    """What every step reads and no step changes (the model and optimizer are passed beside it)."""

    settings: TrainSettings
    run_dir: Path
    generator: Generator
    problems: list[MathProblem]
    eval_questions: list[tuple[int, MathProblem]]  # (test index, question) for --eval-every
    rewards: tuple[WeightedReward, ...]
    loss_config: LossConfig
    device: torch.device


@dataclass(frozen=True)
class LossStats:
    """What the forward + backward of one micro-batch measured, as sums; ``+`` adds two up, so the
    step's record is the sum over its micro-batches."""

    loss: float = 0.0  # the micro-batches' shares of the batch loss
    sequences: int = 0  # sequences that went through the policy
    tokens: int = 0  # their completion tokens
    entropy: float = 0.0  # summed over those tokens
    abs_gap: float = 0.0  # |log π_trainer − log π_sampler|, summed over tokens
    kl_gap: float = 0.0  # k3 estimate of KL(sampler‖trainer), summed over tokens
    importance_weight: float = 0.0  # π_trainer/π_sampler, summed over sequences
    dropped: int = 0  # sequences whose importance weight exceeded the cap

    def __add__(self, other: "LossStats") -> "LossStats":
        return LossStats(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))


@dataclass(frozen=True)
class StepResult:
    adapter_version: int  # the version pushed at the end of the step: the next step samples with it
    metrics: dict[str, float]


@dataclass
class Sampling:
    """Where each step's batch comes from, and the adapter the trainer pushed last (the only state
    the loop carries from step to step besides the model and optimizer): sampled now with that
    adapter, or, with a producer (``--max-staleness`` S ≥ 1), sampled ahead and taken from it."""

    run: Run
    policy: object
    version: int | None  # the server's version of the newest pushed adapter (None: the base model)
    policy_version: int  # the step whose update made it (0: the initial adapter)
    producer: BatchProducer | None = None
    dropped: int = 0  # batches too stale to train on

    def batch(self, step: int) -> SampledBatch:
        if self.producer is not None:
            batch = self.producer.take(step, self.restore)
            if self.policy_version - batch.policy_version <= self.run.settings.max_staleness:
                return batch
            self.dropped += 1  # never trained on: sampled again, now, with the newest adapter
        return self.now(step)

    def now(self, step: int) -> SampledBatch:
        """Sample with the newest adapter; a server that lost it (restarted) gets it again."""
        try:
            return SampledBatch(step, sample(self.run, step, self.version), self.version, self.policy_version)
        except GeneratorError as error:
            if error.status != 404 or self.version is None:
                raise
            logger.warning("the server no longer has adapter %s (%s)", self.version, error)
            self.restore()
            return SampledBatch(step, sample(self.run, step, self.version), self.version, self.policy_version)

    def restore(self) -> None:
        """Push the policy's current adapter again (the trainer's thread: the policy has not changed
        since the newest version was pushed); later batches, the producer's too, sample with it."""
        version = self.run.generator.push_adapter(adapter_upload(self.policy, version="next")).version
        logger.warning("pushed the current adapter again as version %s", version)
        self.pushed(version, self.policy_version)

    def pushed(self, version: int, policy_version: int) -> None:
        self.version, self.policy_version = version, policy_version
        if self.producer is not None:
            self.producer.publish(version, policy_version)


@contextlib.contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Record the seconds the block took as ``timings[phase]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = time.perf_counter() - started


# ---- data ------------------------------------------------------------------------------------


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


# ---- one step --------------------------------------------------------------------------------


def problems_of(run: Run, step: int) -> tuple[list[int], list[MathProblem]]:
    indices = question_indices(step, run.settings.prompts_per_step, len(run.problems), run.settings.seed)
    return indices, [run.problems[index] for index in indices]


def sample(run: Run, step: int, adapter_version: int | None) -> GenerateResponse:
    """The groups of ``step``'s questions, sampled with ``adapter_version``."""
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


def backward_micro_batch(run: Run, policy, sequences: list[Sequence], normaliser: Normaliser) -> LossStats:
    """Forward + backward of one micro-batch's share of the loss (gradients accumulate)."""
    settings = run.settings
    batch = collate(sequences, pad_token_id=0, device=run.device)
    model_inputs = dict(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        completion_positions=batch["completion_positions"],
        completion_mask=batch["completion_mask"],
        temperature=settings.temperature,
    )
    logps, entropies = completion_logprobs(policy, **model_inputs)  # (B, T) each
    mask = batch["completion_mask"].float()  # (B, T)
    weights = None  # (B, 1)
    if settings.vllm_importance_sampling_correction:
        weights = sampler_importance_weights(
            logps.detach(), batch["sampler_logps"], mask, settings.vllm_importance_sampling_clip_max
        )
    ref_logps = None
    if settings.beta != 0.0:
        with torch.no_grad(), policy.disable_adapter():  # the reference: the base model
            ref_logps, _ = completion_logprobs(policy, **model_inputs)
    loss = policy_loss(logps, batch["advantages"], mask, normaliser, run.loss_config, weights, ref_logps)
    loss.backward()
    gap = (logps.detach() - batch["sampler_logps"]) * mask  # (B, T): log π_trainer − log π_sampler
    return LossStats(
        loss=loss.item(),
        sequences=len(sequences),
        tokens=int(mask.sum()),
        entropy=float((entropies * mask).sum()),
        abs_gap=float(gap.abs().sum()),
        kl_gap=float(((torch.exp(gap) - 1 - gap) * mask).sum()),
        importance_weight=0.0 if weights is None else float(weights.sum()),
        dropped=0 if weights is None else int((weights == 0).sum()),
    )


def train_step(step: int, run: Run, policy, optimizer, scheduler, sampling: Sampling) -> StepResult:
    """One GRPO step on the questions of ``step``, sampled with the newest adapter (or, with
    ``--max-staleness``, one at most S steps older); returns the adapter version it pushed (the
    one it sampled with where it skipped the update) and the step's metrics row."""
    settings, timings = run.settings, {}
    indices, problems = problems_of(run, step)
    group_size = settings.num_generations

    with timed(timings, "sample"):  # with a producer: waiting for the batch it sampled ahead
        batch = sampling.batch(step)
    reply, sampling_version = batch.reply, batch.adapter_version
    staleness = sampling.policy_version - batch.policy_version  # optimizer steps behind the newest adapter
    completions = [completion for group in reply.groups for completion in group.completions]  # P × G, grouped

    with timed(timings, "score"):
        scores = score(run, problems, [completion.text for completion in completions])
    rewards = torch.tensor(scores.total).view(len(problems), group_size)  # (P, G)
    if not torch.isfinite(rewards).all():
        return skipped_step(step, indices[0], sampling_version, scheduler, "NaN/Inf rewards", timings)

    advantages = group_advantages(rewards, scale=settings.scale_rewards == "group").flatten()  # (P·G,)
    sequences = [
        Sequence(
            prompt_token_ids=reply.groups[index // group_size].prompt_token_ids,
            completion_token_ids=completion.token_ids,
            sampler_logprobs=completion.logprobs,
            advantage=advantages[index].item(),
        )
        for index, completion in enumerate(completions)
    ]
    trained = [s for s in sequences if s.advantage != 0.0 or settings.beta != 0.0]
    normaliser = Normaliser(
        sequences=len(sequences),
        tokens=sum(len(s.completion_token_ids) for s in sequences),
        max_completion_length=settings.max_completion_length,
    )

    with timed(timings, "train"):  # the loss: gradients accumulate over micro-batches
        stats = LossStats()
        for chunk in micro_batches(trained, settings.micro_batch_size):
            stats += backward_micro_batch(run, policy, chunk, normaliser)

    with timed(timings, "optimizer"):
        trainable = [p for p in policy.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm).item()
        if not (math.isfinite(stats.loss) and math.isfinite(grad_norm)):  # nothing of it reaches the adapter
            optimizer.zero_grad(set_to_none=True)
            return skipped_step(step, indices[0], sampling_version, scheduler, "NaN/Inf loss or gradients", timings)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    with timed(timings, "push"):  # the next step samples with this version
        upload = adapter_upload(policy, version="next")
        pushed = run.generator.push_adapter(upload)

    metrics = metrics_row(
        step=step,
        first_question_index=indices[0],
        staleness=staleness,
        stale_batches_dropped=sampling.dropped,
        reply=reply,
        scores=scores,
        rewards=rewards,
        stats=stats,
        grad_norm=grad_norm,
        learning_rate=learning_rate,
        push_bytes=len(upload.adapter_model),
        push_load_ms=pushed.load_ms,
        timings=timings,
    )
    return StepResult(adapter_version=pushed.version, metrics=metrics)


def skipped_step(step: int, first_question_index: int, version, scheduler, reason: str, timings) -> StepResult:
    """A step whose rewards, loss or gradients were not finite: no optimizer step, nothing pushed
    (the next step samples with the same version); the learning-rate schedule moves on."""
    scheduler.step()
    logger.warning("step %d skipped: %s; nothing pushed", step, reason)
    row = {
        "step": step,
        "first_question_index": first_question_index,
        "sampled_with_adapter": -1 if version is None else version,
        "skipped": 1,
        "skip_reason": reason,
    }
    row.update({f"time/{phase}_s": seconds for phase, seconds in timings.items()})
    return StepResult(adapter_version=version, metrics={**row, "time/step_s": sum(timings.values())})


def metrics_row(
    *,
    step: int,
    first_question_index: int,
    staleness: int,
    stale_batches_dropped: int,
    reply: GenerateResponse,
    scores: RewardScores,
    rewards: torch.Tensor,
    stats: LossStats,
    grad_norm: float,
    learning_rate: float,
    push_bytes: int,
    push_load_ms: float,
    timings: dict[str, float],
) -> dict[str, float]:
    """The step's row of ``metrics.jsonl`` (and trackio). ``rewards``: (P, G) weighted totals."""
    completions = [completion for group in reply.groups for completion in group.completions]
    lengths = [len(completion.token_ids) for completion in completions]
    row = {
        "step": step,
        "first_question_index": first_question_index,
        "sampled_with_adapter": -1 if reply.adapter_version is None else reply.adapter_version,
        "staleness": staleness,
        "stale_batches_dropped": stale_batches_dropped,
        "reward": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        **{f"rewards/{name}": sum(values) / len(values) for name, values in scores.per_function.items()},
        "zero_std_groups": int((rewards.std(dim=1) == 0).sum()),
        "sequences_trained": stats.sequences,
        "completion_length_mean": sum(lengths) / len(lengths),
        "completion_length_max": max(lengths),
        "truncated_fraction": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "loss": stats.loss,
        "grad_norm": grad_norm,
        "learning_rate": learning_rate,
        "push_bytes": push_bytes,
        "push_load_ms": push_load_ms,
        **{f"time/{phase}_s": seconds for phase, seconds in timings.items()},
        "time/step_s": sum(timings.values()),
        "generation_tokens_per_s": sum(lengths) / max(timings["sample"], 1e-9),
    }
    format_scores = scores.per_function.get(match_format_exactly.__name__)
    if format_scores is not None:  # the strict format's own reward: > 0 where the format matched
        row["format_exact_rate"] = sum(score > 0 for score in format_scores) / len(format_scores)
    if stats.sequences:  # measured on the sequences that went through the policy
        row["entropy"] = stats.entropy / stats.tokens
        row["sampler_gap/mean_abs_logprob_diff"] = stats.abs_gap / stats.tokens
        row["sampler_gap/kl"] = stats.kl_gap / stats.tokens
        row["importance_weight_mean"] = stats.importance_weight / stats.sequences
        row["importance_dropped_fraction"] = stats.dropped / stats.sequences
    return row


def periodic_eval(run: Run, adapter_version: int) -> dict[str, float]:
    """Greedy on the first ``--eval-limit`` test questions with the adapter just pushed."""
    timings: dict[str, float] = {}
    with timed(timings, "eval"):
        summary, _ = evaluate(
            run.generator,
            run.eval_questions,
            adapter_version,
            max_tokens=run.settings.max_completion_length,
            progress=False,
        )
    metrics = {f"eval/{name}": summary[name]["value"] for name in RATE_METRICS}
    metrics.update({f"eval/{key}": value for key, value in summary.items() if key.startswith("reward/")})
    metrics["time/eval_s"] = timings["eval"]
    return metrics


# ---- set-up and the loop ----------------------------------------------------------------------


def step_of(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line a killed run left half-written.

    >>> step_of('{"step": 3, "reward": 1.0}'), step_of('{"step": 4, "rew')
    (3, inf)
    """
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def make_run_dir(settings: TrainSettings, model_path: str) -> Path:
    if settings.output_dir is not None:
        return Path(settings.output_dir)
    return Path("runs") / f"{Path(model_path).name}-{datetime.now():%Y%m%d-%H%M%S}"


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(TrainSettings, argv, prog="grpo-math train", description=__doc__)
    try:
        train(settings)
    except GeneratorError as error:  # the retries are spent, or the server refused a request
        raise SystemExit(f"grpo-math train: error: the generator: {error}") from None
    return 0


def connect(settings: TrainSettings) -> Generator:
    """The generator, healthy, with limits that admit these settings; exits with a message naming
    the flag otherwise. Called before any model is loaded."""
    generator = connect_generator(
        settings.generator,
        settings.server_url,
        settings.vllm_adapter_dir,
        vllm_adapter_keep=max(3, settings.max_staleness + 2),  # every version a batch in flight may use
        api_key=settings.api_key(),
        ca_bundle=settings.ca_bundle,
        retry_seconds=settings.server_retry_seconds,
    )
    try:
        health = wait_until_healthy(generator, settings.server_timeout)
        check_against_server(settings, health)
    except GeneratorError as error:
        raise SystemExit(f"grpo-math train: error: --server-url {' '.join(settings.server_url)}: {error}") from None
    except SettingsError as error:
        raise SystemExit(f"grpo-math train: error: {error}") from None
    return generator


def train(settings: TrainSettings, rewards: tuple[WeightedReward, ...] | None = None) -> Path:
    """The whole run; returns its folder. ``rewards`` replaces the recipe's four (tests use it)."""
    if rewards is None:
        rewards = tuple(dataclasses.replace(r, weight=w) for r, w in zip(REWARD_FUNCTIONS, settings.reward_weights))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = connect(settings)
    model_path = resolve_model(settings.model)
    served_model = generator.health().model
    if Path(served_model).name != Path(model_path).name:
        logger.warning("the server serves %s but the trainer trains %s", served_model, model_path)

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    run_dir = make_run_dir(settings, model_path)
    checkpoints = list_checkpoints(run_dir) if settings.resume else []
    if settings.resume and not checkpoints:
        raise SystemExit(f"grpo-math train: error: --resume: no checkpoint in {run_dir / 'checkpoints'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")

    gradient_checkpointing = settings.gradient_checkpointing == "on" or (
        settings.gradient_checkpointing == "auto" and device.type == "cuda"
    )
    policy = load_policy(
        model_path,
        settings,
        init_adapter=settings.init_adapter,
        gradient_checkpointing=gradient_checkpointing,
        device=device,
    )
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
    )
    scheduler = (
        get_linear_schedule_with_warmup(optimizer, settings.warmup_steps, settings.max_steps)
        if settings.lr_scheduler_type == "linear"
        else get_constant_schedule_with_warmup(optimizer, settings.warmup_steps)
    )
    completed_step = load_checkpoint(checkpoints[-1], policy, optimizer, scheduler) if checkpoints else 0
    if checkpoints:
        logger.info("resumed from %s (step %d)", checkpoints[-1], completed_step)
        metrics_path = run_dir / "metrics.jsonl"  # rows of steps after the checkpoint are run again
        if metrics_path.exists():
            kept = [line for line in metrics_path.read_text().splitlines() if step_of(line) <= completed_step]
            metrics_path.write_text("".join(line + "\n" for line in kept))

    # The adapter the first step samples with: a trained one (resumed, or --init-adapter) is pushed
    # first; a fresh LoRA (B = 0) equals the base model, which the server serves faster.
    first_version = None
    if checkpoints or settings.init_adapter is not None:
        first_version = generator.push_adapter(adapter_upload(policy, version="next")).version

    run = Run(
        settings=settings,
        run_dir=run_dir,
        generator=generator,
        problems=load_gsm8k("train", source=settings.dataset),
        eval_questions=list(enumerate(load_gsm8k("test")[: settings.eval_limit])) if settings.eval_every else [],
        rewards=rewards,
        loss_config=LossConfig(
            settings.loss_type, settings.beta, settings.epsilon, settings.epsilon_high or settings.epsilon
        ),
        device=device,
    )
    tracker = None
    if settings.report_to == "trackio":
        import trackio

        tracker = trackio.init(
            project="grpo-math", name=run_dir.name, config=dataclasses.asdict(settings), resume="allow"
        )

    logger.info("run folder %s; steps %d..%d", run_dir, completed_step + 1, settings.max_steps)
    steps = range(completed_step + 1, settings.max_steps + 1)
    sampling = Sampling(run, policy, version=first_version, policy_version=completed_step)
    if settings.max_staleness > 0:  # batches in flight at a resume are sampled again
        sampling.producer = BatchProducer(
            lambda step, version: sample(run, step, version),
            steps,
            settings.max_staleness,
            first_version,
            completed_step,
        )
    progress = tqdm(steps, initial=completed_step, total=settings.max_steps, desc="GRPO")
    try:
        with open(run_dir / "metrics.jsonl", "a") as metrics_file:
            train_loop(run, policy, optimizer, scheduler, sampling, progress, metrics_file, tracker)
    finally:
        if sampling.producer is not None:
            sampling.producer.close()
    policy.save_pretrained(run_dir / "final")
    if tracker is not None:
        trackio.finish()
    generator.close()
    print(f"run: {run_dir}\nadapter: {run_dir / 'final'} (PEFT; vllm serve --lora-modules grpo={run_dir / 'final'})")
    if tracker is not None:
        print("dashboard: trackio show --project grpo-math")
    return run_dir


def train_loop(run: Run, policy, optimizer, scheduler, sampling: Sampling, progress, metrics_file, tracker) -> None:
    """Step after step: train, evaluate, log, checkpoint; stops the run after too many bad steps."""
    settings, run_dir = run.settings, run.run_dir
    bad_steps = 0  # skipped (NaN/Inf) in a row
    for step in progress:
        result = train_step(step, run, policy, optimizer, scheduler, sampling)
        metrics = result.metrics
        if metrics.get("skipped"):
            bad_steps += 1
        else:
            bad_steps = 0
            sampling.pushed(result.adapter_version, policy_version=step)
        sampling_version = result.adapter_version
        if settings.eval_every and step % settings.eval_every == 0:
            metrics.update(periodic_eval(run, sampling_version))
        metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()  # before the checkpoint: a row is never missing from a step a resume skips
        if settings.save_every and step % settings.save_every == 0:
            save_checkpoint(run_dir, step, policy, optimizer, scheduler, settings.keep_checkpoints)
        if tracker is not None:
            tracker.log({key: value for key, value in metrics.items() if key != "step"}, step=step)
        if bad_steps >= settings.max_bad_steps:
            raise SystemExit(
                f"grpo-math train: error: {bad_steps} steps in a row skipped ({metrics['skip_reason']}); stopping "
                f"before a bad adapter reaches the server. The last pushed adapter is version {sampling_version}; "
                f"checkpoints: {run_dir / 'checkpoints'} (--max-bad-steps)"
            )
        progress.set_postfix(
            reward=f"{metrics.get('reward', math.nan):.2f}",
            format=f"{metrics.get('format_exact_rate', math.nan):.2f}",
            step_s=f"{metrics['time/step_s']:.1f}",
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
