"""``grpo-math train``: GRPO on a 4-bit LoRA model that samples from the generator server and pushes
its adapter back to it after every step.

One step (``train_step``), in order:
  1. sample      the server samples G completions for each of P GSM8K questions with adapter v_k
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

Left out: several updates per batch (``num_iterations`` > 1), overlapping sampling with training
(one-step-off), multi-GPU, reward models.

    grpo-math serve &                                  # the generator server, 127.0.0.1:8000
    grpo-math train --max-steps 10                     # the recipe's defaults
    grpo-math train --output-dir runs/NAME --resume    # continue from the newest checkpoint
"""

import argparse
import dataclasses
import functools
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from shared.flags import add_flags, settings_from_args
from shared.gsm8k import MathProblem, load_gsm8k
from shared.models import is_missing_folder, resolve_model
from shared.protocol import GenerateRequest, GenerateResponse
from shared.rewards import REWARD_FUNCTIONS, WeightedReward, match_format_exactly, score_completions
from trainer.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from trainer.client import GeneratorClient, ServerError
from trainer.evaluate import RATE_METRICS, evaluate
from trainer.grpo import LossConfig, Normaliser, group_advantages, policy_loss, sampler_importance_weights
from trainer.policy import adapter_upload, completion_logprobs, load_policy
from trainer.settings import TrainSettings

logger = logging.getLogger("trainer")


@dataclass(frozen=True)
class Sequence:
    """One sampled completion, as the trainer uses it."""

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    sampler_logprobs: list[float]
    advantage: float


@dataclass
class Run:
    """What the loop carries from step to step besides the model and optimizer."""

    settings: TrainSettings
    run_dir: Path
    client: GeneratorClient
    problems: list[MathProblem]
    eval_questions: list[tuple[int, MathProblem]]  # (test index, question) for --eval-every
    rewards: tuple[WeightedReward, ...]
    loss_config: LossConfig
    device: torch.device
    version_offset: int  # adapter version = step + offset (non-zero when the server was already past the step)
    sampling_version: int | None  # the adapter the next step samples with (None: base model)


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
        batch["input_ids"][row, : prompt + completion] = torch.tensor(sequence.prompt_token_ids + sequence.completion_token_ids)
        batch["attention_mask"][row, : prompt + completion] = 1
        batch["completion_positions"][row, prompt : prompt + completion] = True
        batch["completion_mask"][row, :completion] = True
        batch["sampler_logps"][row, :completion] = torch.tensor(sequence.sampler_logprobs)
    return {name: tensor.to(device) for name, tensor in batch.items()}


# ---- one step --------------------------------------------------------------------------------


def sample(run: Run, problems: list[MathProblem]) -> GenerateResponse:
    settings = run.settings
    reply = run.client.generate(GenerateRequest(
        prompts=[problem.prompt for problem in problems],
        n=settings.num_generations,
        max_tokens=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        adapter_version=run.sampling_version,
    ))
    if reply.adapter_version != run.sampling_version:
        raise RuntimeError(f"asked the server for adapter {run.sampling_version}, it sampled with {reply.adapter_version}")
    return reply


def backward_over_micro_batches(run: Run, policy, trained: list[Sequence], normaliser: Normaliser) -> tuple[float, dict]:
    """Forward + backward of each micro-batch's share of the loss; returns the batch's loss and the
    sums behind the entropy and sampler–trainer gap metrics."""
    settings = run.settings
    policy.train()
    loss_total, sums = 0.0, {"tokens": 0, "entropy": 0.0, "abs_gap": 0.0, "kl_gap": 0.0, "weights": 0.0, "dropped": 0}
    for chunk in micro_batches(trained, settings.micro_batch_size):
        batch = collate(chunk, pad_token_id=0, device=run.device)
        model_inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_positions"], batch["completion_mask"], settings.temperature)
        logps, entropies = completion_logprobs(policy, *model_inputs)  # (B, T) each
        mask = batch["completion_mask"].float()
        weights = None
        if settings.vllm_importance_sampling_correction:
            weights = sampler_importance_weights(logps.detach(), batch["sampler_logps"], mask, settings.vllm_importance_sampling_clip_max)
        ref_logps = None
        if settings.beta != 0.0:
            with torch.no_grad(), policy.disable_adapter():  # the reference: the base model
                ref_logps, _ = completion_logprobs(policy, *model_inputs)
        loss = policy_loss(logps, batch["advantages"], mask, normaliser, run.loss_config, weights, ref_logps)
        loss.backward()
        loss_total += loss.item()
        gap = (logps.detach() - batch["sampler_logps"]) * mask  # log π_trainer − log π_sampler
        sums["tokens"] += int(mask.sum())
        sums["entropy"] += float((entropies * mask).sum())
        sums["abs_gap"] += float(gap.abs().sum())
        sums["kl_gap"] += float(((torch.exp(gap) - 1 - gap) * mask).sum())  # k3 estimate of KL(sampler‖trainer)
        if weights is not None:
            sums["weights"] += float(weights.sum())
            sums["dropped"] += int((weights == 0).sum())
    return loss_total, sums


def train_step(step: int, run: Run, policy, optimizer, scheduler) -> dict[str, float]:
    settings, timings = run.settings, {}
    indices = question_indices(step, settings.prompts_per_step, len(run.problems), settings.seed)
    problems = [run.problems[index] for index in indices]

    # 1. sample
    started = time.perf_counter()
    reply = sample(run, problems)
    timings["sample"] = time.perf_counter() - started
    completions = [completion for group in reply.groups for completion in group.completions]  # P × G, grouped

    # 2. score
    started = time.perf_counter()
    texts = [completion.text for completion in completions]
    group_size = settings.num_generations
    scores = score_completions(
        prompts=[problem.prompt for problem in problems for _ in range(group_size)],
        completions=texts,
        answer=[problem.answer for problem in problems for _ in range(group_size)],
        rewards=run.rewards,
    )
    rewards = torch.tensor(scores.total).view(len(problems), group_size)  # (P, G)
    timings["score"] = time.perf_counter() - started

    # 3. advantages
    advantages = group_advantages(rewards, scale=settings.scale_rewards == "group").flatten()  # (P·G,)
    sequences = [
        Sequence(reply.groups[index // group_size].prompt_token_ids, completion.token_ids, completion.logprobs, advantages[index].item())
        for index, completion in enumerate(completions)
    ]
    trained = [s for s in sequences if s.advantage != 0.0 or settings.beta != 0.0]
    normaliser = Normaliser(
        sequences=len(sequences),
        tokens=sum(len(s.completion_token_ids) for s in sequences),
        max_completion_length=settings.max_completion_length,
    )

    # 4. loss: gradients accumulate over micro-batches
    started = time.perf_counter()
    loss_total, sums = backward_over_micro_batches(run, policy, trained, normaliser)
    timings["train"] = time.perf_counter() - started

    # 5. optimizer step
    started = time.perf_counter()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], settings.max_grad_norm)
    learning_rate = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    timings["optimizer"] = time.perf_counter() - started

    # 6. push the adapter; the next step samples with it
    started = time.perf_counter()
    upload = adapter_upload(policy, version=step + run.version_offset)
    pushed = run.client.push_adapter(upload)
    run.sampling_version = pushed.version
    timings["push"] = time.perf_counter() - started

    # 7. log
    lengths = [len(c.token_ids) for c in completions]
    metrics = {
        "step": step,
        "first_question_index": indices[0],
        "sampled_with_adapter": -1 if reply.adapter_version is None else reply.adapter_version,
        "reward": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        **{f"rewards/{name}": sum(values) / len(values) for name, values in scores.per_function.items()},
        "format_exact_rate": sum(score > 0 for score in match_format_exactly(texts)) / len(completions),
        "zero_std_groups": int((rewards.std(dim=1) == 0).sum()),
        "sequences_trained": len(trained),
        "completion_length_mean": sum(lengths) / len(lengths),
        "completion_length_max": max(lengths),
        "truncated_fraction": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "clipped_fraction": 0.0,  # one update per batch: the ratio is 1, the clip never binds
        "loss": loss_total,
        "grad_norm": grad_norm.item(),
        "learning_rate": learning_rate,
        "push_bytes": len(upload.adapter_model),
        "push_load_ms": pushed.load_ms,
        **{f"time/{phase}_s": seconds for phase, seconds in timings.items()},
        "time/step_s": sum(timings.values()),
        "generation_tokens_per_s": sum(lengths) / max(timings["sample"], 1e-9),
    }
    if trained:  # measured on the sequences that went through the policy
        metrics["entropy"] = sums["entropy"] / sums["tokens"]
        metrics["sampler_gap/mean_abs_logprob_diff"] = sums["abs_gap"] / sums["tokens"]
        metrics["sampler_gap/kl"] = sums["kl_gap"] / sums["tokens"]
        if settings.vllm_importance_sampling_correction:
            metrics["importance_weight_mean"] = sums["weights"] / len(trained)
            metrics["importance_dropped_fraction"] = sums["dropped"] / len(trained)
    return metrics


def periodic_eval(run: Run) -> dict[str, float]:
    """Greedy on the first ``--eval-limit`` test questions with the adapter just pushed."""
    started = time.perf_counter()
    summary, _ = evaluate(run.client, run.eval_questions, run.sampling_version, max_tokens=run.settings.max_completion_length, progress=False)
    metrics = {f"eval/{name}": summary[name]["value"] for name in RATE_METRICS}
    metrics.update({f"eval/{key}": value for key, value in summary.items() if key.startswith("reward/")})
    metrics["time/eval_s"] = time.perf_counter() - started
    return metrics


# ---- set-up and the loop ----------------------------------------------------------------------


def parse_settings(argv: list[str] | None) -> TrainSettings:
    parser = argparse.ArgumentParser(prog="grpo-math train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, TrainSettings)
    settings = settings_from_args(TrainSettings, parser.parse_args(argv))
    checks = (
        ("--learning-rate", settings.learning_rate > 0, "must be > 0"),
        ("--num-generations", settings.num_generations >= 2, "must be at least 2: advantages compare completions within a group"),
        ("--prompts-per-step", settings.prompts_per_step >= 1, "must be at least 1"),
        ("--micro-batch-size", settings.micro_batch_size >= 1, "must be at least 1"),
        ("--max-steps", settings.max_steps >= 1, "must be at least 1"),
        ("--max-completion-length", settings.max_completion_length >= 1, "must be at least 1"),
        ("--temperature", settings.temperature > 0, "must be > 0: the policy is scored at the sampling temperature"),
        ("--top-p", 0 < settings.top_p <= 1, "must be in (0, 1]"),
        ("--max-grad-norm", settings.max_grad_norm > 0, "must be > 0"),
        ("--reward-weights", len(settings.reward_weights) == len(REWARD_FUNCTIONS), f"needs {len(REWARD_FUNCTIONS)} values"),
        ("--keep-checkpoints", settings.keep_checkpoints >= 1, "must be at least 1"),
        ("--resume", not settings.resume or settings.output_dir is not None, "needs --output-dir (the run to continue)"),
    )
    for flag, ok, message in checks:
        if not ok:
            parser.error(f"{flag} {message}")
    for flag, path in (("--init-adapter", settings.init_adapter), ("--model", settings.model)):
        if path is not None and is_missing_folder(path):
            parser.error(f"{flag} {path}: no such folder")
    if settings.init_adapter is not None and not (Path(settings.init_adapter) / "adapter_config.json").is_file():
        parser.error(f"--init-adapter {settings.init_adapter}: no adapter_config.json there (not a PEFT adapter)")
    return settings


def make_run_dir(settings: TrainSettings, model_path: str) -> Path:
    if settings.output_dir is not None:
        return Path(settings.output_dir)
    return Path("runs") / f"{Path(model_path).name}-{datetime.now():%Y%m%d-%H%M%S}"


def main(argv: list[str] | None = None) -> int:
    train(parse_settings(argv))
    return 0


def train(settings: TrainSettings, rewards: tuple[WeightedReward, ...] | None = None) -> Path:
    """The whole run; returns its folder. ``rewards`` replaces the recipe's four (tests use it)."""
    if rewards is None:
        rewards = tuple(dataclasses.replace(r, weight=w) for r, w in zip(REWARD_FUNCTIONS, settings.reward_weights))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    client = GeneratorClient(settings.server_url, api_key=os.environ.get("GRPO_MATH_API_KEY"))
    try:
        health = client.wait_until_healthy(settings.server_timeout)  # fail fast before loading anything
    except ServerError as error:
        raise SystemExit(f"grpo-math train: error: --server-url: {error}") from None
    model_path = resolve_model(settings.model)
    if Path(health.model).name != Path(model_path).name:
        logger.warning("the server serves %s but the trainer trains %s", health.model, model_path)

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    run_dir = make_run_dir(settings, model_path)
    checkpoints = list_checkpoints(run_dir) if settings.resume else []
    if settings.resume and not checkpoints:
        raise SystemExit(f"grpo-math train: error: --resume: no checkpoint in {run_dir / 'checkpoints'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")

    gradient_checkpointing = settings.gradient_checkpointing == "on" or (settings.gradient_checkpointing == "auto" and device.type == "cuda")
    policy = load_policy(model_path, settings, init_adapter=settings.init_adapter, gradient_checkpointing=gradient_checkpointing, device=device)
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=settings.learning_rate, weight_decay=settings.weight_decay
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
            kept = [line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] <= completed_step]
            metrics_path.write_text("".join(line + "\n" for line in kept))

    # The adapter the first step samples with: a trained one (resumed, or --init-adapter) is pushed
    # first; a fresh LoRA (B = 0) equals the base model, which the server serves faster.
    active = client.active_version()
    version_offset = 0 if active is None or active < completed_step else active + 1 - completed_step
    sampling_version = None
    if checkpoints or settings.init_adapter is not None:
        sampling_version = client.push_adapter(adapter_upload(policy, version=completed_step + version_offset)).version

    run = Run(
        settings=settings,
        run_dir=run_dir,
        client=client,
        problems=load_gsm8k("train", source=settings.dataset),
        eval_questions=list(enumerate(load_gsm8k("test")[: settings.eval_limit])) if settings.eval_every else [],
        rewards=rewards,
        loss_config=LossConfig(settings.loss_type, settings.beta, settings.epsilon, settings.epsilon_high or settings.epsilon),
        device=device,
        version_offset=version_offset,
        sampling_version=sampling_version,
    )
    tracker = None
    if settings.report_to == "trackio":
        import trackio

        tracker = trackio.init(project="grpo-math", name=run_dir.name, config=dataclasses.asdict(settings), resume="allow")

    logger.info("run folder %s; steps %d..%d", run_dir, completed_step + 1, settings.max_steps)
    progress = tqdm(range(completed_step + 1, settings.max_steps + 1), initial=completed_step, total=settings.max_steps, desc="GRPO")
    with open(run_dir / "metrics.jsonl", "a") as metrics_file:
        for step in progress:
            metrics = train_step(step, run, policy, optimizer, scheduler)
            if settings.eval_every and step % settings.eval_every == 0:
                metrics.update(periodic_eval(run))
            if settings.save_every and step % settings.save_every == 0:
                save_checkpoint(run_dir, step, policy, optimizer, scheduler, settings.keep_checkpoints)
            metrics_file.write(json.dumps(metrics) + "\n")
            metrics_file.flush()
            if tracker is not None:
                trackio.log({key: value for key, value in metrics.items() if key != "step"}, step=step)
            progress.set_postfix(reward=f"{metrics['reward']:.2f}", format=f"{metrics['format_exact_rate']:.2f}", step_s=f"{metrics['time/step_s']:.1f}")
    policy.save_pretrained(run_dir / "final")
    if tracker is not None:
        trackio.finish()
    client.close()
    print(f"run: {run_dir}\nadapter: {run_dir / 'final'} (PEFT; vllm serve --lora-modules grpo={run_dir / 'final'})")
    if tracker is not None:
        print("dashboard: trackio show --project grpo-math")
    return run_dir


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
