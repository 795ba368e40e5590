"""``grpo-math train``: GRPO on a 4-bit LoRA model that samples from the generator server and pushes
its adapter back to it after every step.

The run, top to bottom: connect to the server and check the settings against its limits (before
any model loads) → the policy (nf4 base + LoRA), AdamW and the schedule, restored from the newest
checkpoint with ``--resume`` → every ``auto`` setting resolved (``trainer.settings.resolve``),
logged and written to the run folder's ``settings.json`` → push a trained starting adapter (resumed, or
``--init-adapter``) → step after step: ``train_step`` (``trainer/step.py``: sample → score →
advantages → loss → optimizer step → push → log), a periodic greedy evaluation, the row to
``metrics.jsonl`` and trackio, a checkpoint → the final adapter in PEFT format.

With ``--max-staleness S`` (S ≥ 1) a producer thread (``trainer/producer.py``) samples the next
steps while this one trains, each batch at most S optimizer steps older than the policy that
trains on it; the importance weights use the sampler's own logprobs, so they correct the
staleness too.

Several trainer processes (``torchrun`` / ``accelerate launch``): rank 0 samples and broadcasts
each batch, every rank trains its share, the gradients are summed, rank 0 pushes, evaluates, logs
and checkpoints (``trainer/distributed.py``). Left out: reward models, sharding the base model (FSDP).

    grpo-math serve &                                  # the generator server, 127.0.0.1:8000
    grpo-math train --max-steps 10                     # the recipe's defaults
    grpo-math train --output-dir runs/NAME --resume    # continue from the newest checkpoint
    torchrun --nproc-per-node 2 -m grpo_math train --max-steps 10   # two trainer processes
"""

import dataclasses
import functools
import json
import logging
import math
import random
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from shared.datasets import load_problems
from shared.models import local_model_problems, resolve_model
from shared.rewards import RewardError, WeightedReward
from shared.settings import SettingsError, parse_settings, write_config
from shared.versions import DEFAULT_ADAPTER_KEEP, adapter_keep_for
from trainer import metrics as names
from trainer.adapter_sync import AdapterSync, GapWatch, SamplerMismatch
from trainer.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from trainer.distributed import Ranks
from trainer.evaluation import evaluate, rate_metrics
from trainer.generators import Generator, GeneratorError, connect_generator, wait_until_healthy
from trainer.grpo import LossConfig
from trainer.policy import (
    compute_dtype_for,
    dequantized_copy_bytes,
    enable_gradient_checkpointing,
    free_memory_bytes,
    load_policy,
)
from trainer.producer import Batches
from trainer.settings import TrainSettings, check_against_server, check_prompt_lengths, resolve
from trainer.step import Lead, Learner, Run, sample, timed, train_step

logger = logging.getLogger("trainer")


class TrainingError(RuntimeError):
    """The run cannot start or go on; the message says why and what was kept."""


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(TrainSettings, argv, prog="grpo-math train", description=__doc__)
    try:
        train(settings)
    except GeneratorError as error:  # the retries are spent, or the server refused a request
        raise SystemExit(f"grpo-math train: error: the generator: {error}") from None
    except (TrainingError, SamplerMismatch, SettingsError, RewardError) as error:  # checkpoints are kept
        raise SystemExit(f"grpo-math train: error: {error}") from None
    return 0


def train(settings: TrainSettings, rewards: tuple[WeightedReward, ...] | None = None) -> Path:
    """The whole run; returns its folder. ``rewards`` replaces ``--reward-funcs`` (tests use it)."""
    if rewards is None:
        rewards = settings.rewards()
    ranks = Ranks.from_environment()
    try:
        return train_ranks(settings, rewards, ranks)
    finally:
        ranks.close()


def train_ranks(settings: TrainSettings, rewards: tuple[WeightedReward, ...], ranks: Ranks) -> Path:
    """The run on this process: rank 0 of one, or one rank of several (``trainer/distributed.py``)."""
    device = ranks.device()
    generator = connect(settings) if ranks.main else None  # rank 0 alone talks to the servers
    model_path = resolve_model(settings.model)
    targets = None if settings.init_adapter else settings.lora_target_modules  # an adapter brings its own
    for flag, message in local_model_problems(model_path, targets):  # before any weights load
        raise SettingsError(flag, message)
    if ranks.main and Path(served := generator.health().model).name != Path(model_path).name:
        logger.warning("the server serves %s but the trainer trains %s", served, model_path)
    load = functools.partial(load_problems, dataset=settings.dataset, system_prompt=settings.system_prompt)
    problems = load(settings.dataset_train_split)  # a dataset the run cannot use fails here, naming the flag
    eval_problems = load(settings.dataset_test_split)[: settings.eval_limit] if settings.eval_every else []
    if ranks.main:  # before any weights load: every prompt leaves room for a whole completion
        check_prompt_lengths(problems + eval_problems, model_path, generator.health().limits, settings)

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    run_dir = ranks.from_main(
        Path(settings.output_dir or Path("runs") / f"{Path(model_path).name}-{datetime.now():%Y%m%d-%H%M%S}")
    )
    checkpoints = list_checkpoints(run_dir) if settings.resume else []
    if settings.resume and not checkpoints:
        raise TrainingError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    learner, completed_step = load_learner(settings, model_path, device, checkpoints)
    settings = ranks.from_main(  # every auto made on or off, once, by rank 0 for every rank
        resolve(settings, device.type == "cuda", dequantized_copy_bytes(learner.policy), free_memory_bytes(device))
    )
    if settings.gradient_checkpointing == "on":
        enable_gradient_checkpointing(learner.policy)
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(settings, run_dir / "settings.json")  # --config it to run the same again
        logger.info("settings, every auto resolved: %s", ", ".join(f"{k}={v}" for k, v in vars(settings).items()))
    ranks.copy_from_main([p for p in learner.policy.parameters() if p.requires_grad])  # one starting adapter
    sync = None
    if ranks.main:
        if checkpoints:
            forget_rows_after(run_dir / "metrics.jsonl", completed_step)  # those steps are run again
        sync = AdapterSync(generator, learner.policy, adapter_version=None, policy_step=completed_step)
        if checkpoints or settings.init_adapter is not None:
            sync.push(policy_step=completed_step)  # a fresh LoRA (B = 0) is the base model, which serves faster

    run = Run(
        settings=settings,
        run_dir=run_dir,
        generator=generator,
        problems=problems,
        eval_questions=list(enumerate(eval_problems)) if ranks.main else [],
        rewards=rewards,
        loss_config=LossConfig(
            settings.loss_type, settings.beta, settings.epsilon, settings.epsilon_high or settings.epsilon
        ),
        device=device,
        ranks=ranks,
        dequantize_once=settings.dequantize_once == "on",
        lm_head_dtype=torch.float32 if settings.lm_head_dtype == "float32" else compute_dtype_for(device),
        shared_prompt=settings.shared_prompt_forward == "on",
    )
    steps = range(completed_step + 1, settings.max_steps + 1)
    if not ranks.main:  # rank 0 samples, pushes, evaluates and logs; the others train their share
        for step in steps:
            train_step(step, run, learner, Lead(ranks))
        return run_dir
    logger.info("run folder %s; steps %d..%d", run_dir, steps.start, settings.max_steps)
    batches = Batches(lambda step, version: sample(run, step, version), sync, steps, settings.max_staleness)
    tracker = start_tracker(settings, run_dir)
    try:
        train_loop(run, learner, Lead(ranks, batches, sync), steps, tracker)
    finally:
        batches.close()
    learner.policy.save_pretrained(run_dir / "final")
    if tracker is not None:
        tracker.finish()
    generator.close()
    print(f"run: {run_dir}\nadapter: {run_dir / 'final'} (PEFT; vllm serve --lora-modules grpo={run_dir / 'final'})")
    if tracker is not None:
        print("dashboard: trackio show --project grpo-math")
    return run_dir


def connect(settings: TrainSettings) -> Generator:
    """The generator, healthy, with limits that admit these settings; raises naming the flag
    otherwise. Called before any model is loaded."""
    generator = connect_generator(
        settings.generator,
        settings.server_url,
        settings.vllm_adapter_dir,
        vllm_adapter_keep=max(DEFAULT_ADAPTER_KEEP, adapter_keep_for(settings.max_staleness)),
        api_key=settings.api_key(),
        ca_bundle=settings.ca_bundle,
        retry_seconds=settings.server_retry_seconds,
    )
    try:
        health = wait_until_healthy(generator, settings.server_timeout)
    except GeneratorError as error:
        raise TrainingError(f"--server-url {' '.join(settings.server_url)}: {error}") from None
    check_against_server(settings, health)
    return generator


def load_learner(
    settings: TrainSettings, model_path: str, device: torch.device, checkpoints: list[Path]
) -> tuple[Learner, int]:
    """The policy (without gradient checkpointing: ``resolve`` decides that once it is loaded), AdamW
    and the schedule, restored from the newest of ``checkpoints`` if any; and the step they
    completed (0 for a new run)."""
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    policy = load_policy(
        model_path, settings, init_adapter=settings.init_adapter, gradient_checkpointing=False, device=device
    )
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
    completed_step = 0
    if checkpoints:
        completed_step = load_checkpoint(checkpoints[-1], policy, optimizer, scheduler)
        logger.info("resumed from %s (step %d)", checkpoints[-1], completed_step)
    return Learner(policy, optimizer, scheduler), completed_step


def step_of(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line a killed run left half-written.

    >>> step_of('{"step": 3, "reward": 1.0}'), step_of('{"step": 4, "rew')
    (3, inf)
    """
    try:
        return json.loads(line)[names.STEP]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def forget_rows_after(metrics_path: Path, completed_step: int) -> None:
    """A resumed run runs the steps after its checkpoint again: their rows go."""
    if metrics_path.exists():
        kept = [line for line in metrics_path.read_text().splitlines() if step_of(line) <= completed_step]
        metrics_path.write_text("".join(line + "\n" for line in kept))


def start_tracker(settings: TrainSettings, run_dir: Path):
    """trackio's run (offline store), or None with ``--report-to none``."""
    if settings.report_to != "trackio":
        return None
    import trackio

    return trackio.init(project="grpo-math", name=run_dir.name, config=dataclasses.asdict(settings), resume="allow")


def periodic_eval(run: Run, adapter_version: int | None) -> dict[str, float]:
    """Greedy on the first ``--eval-limit`` test questions with the adapter just pushed."""
    timings: dict[str, float] = {}
    with timed(timings, "eval"):
        summary, _ = evaluate(
            run.generator,
            run.eval_questions,
            adapter_version,
            max_completion_length=run.settings.max_completion_length,
            progress=False,
            rewards=run.rewards,
        )
    metrics = {names.eval_key(name): summary[name]["value"] for name in rate_metrics(summary)}
    metrics.update({names.eval_key(key): value for key, value in summary.items() if key.startswith("reward/")})
    metrics[names.time_key("eval")] = timings["eval"]
    return metrics


def train_loop(run: Run, learner: Learner, lead: Lead, steps: range, tracker) -> None:
    """Step after step: train, evaluate, log, checkpoint; stops the run after too many bad steps."""
    settings, run_dir = run.settings, run.run_dir
    bad_steps = 0  # skipped (NaN/Inf) in a row
    gap_watch = GapWatch(settings.max_sampler_gap)
    progress = tqdm(steps, initial=steps.start - 1, total=settings.max_steps, desc="GRPO")
    with open(run_dir / "metrics.jsonl", "a") as metrics_file:
        for step in progress:
            result = train_step(step, run, learner, lead)
            metrics = result.metrics
            bad_steps = bad_steps + 1 if result.skipped else 0
            if settings.eval_every and step % settings.eval_every == 0:
                metrics.update(periodic_eval(run, result.adapter_version))
            metrics_file.write(json.dumps(metrics) + "\n")
            metrics_file.flush()  # before the checkpoint: a row is never missing from a step a resume skips
            if settings.save_every and step % settings.save_every == 0:
                save_checkpoint(
                    run_dir, step, learner.policy, learner.optimizer, learner.scheduler, settings.keep_checkpoints
                )
            if tracker is not None:
                tracker.log({key: value for key, value in metrics.items() if key != names.STEP}, step=step)
            gap_watch.check(metrics, lead.sync, settings.server_url)
            if bad_steps >= settings.max_bad_steps:
                raise TrainingError(
                    f"{bad_steps} steps in a row skipped ({metrics[names.SKIP_REASON]}); stopping before a bad "
                    f"adapter reaches the server. The last pushed adapter is version {result.adapter_version}; "
                    f"checkpoints: {run_dir / 'checkpoints'} (--max-bad-steps)"
                )
            progress.set_postfix(
                reward=f"{metrics.get(names.REWARD, math.nan):.2f}",
                format=f"{metrics.get(names.FORMAT_EXACT_RATE, math.nan):.2f}",
                right=f"{metrics.get(names.STRICT_ACCURACY, math.nan):.2f}",
                step_s=f"{metrics[names.STEP_SECONDS]:.1f}",
            )
