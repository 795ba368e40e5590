"""The ``time-to-accuracy`` scenario of ``grpo-math bench``: how fast each peer learns, in held-out
accuracy per GRPO step and per minute of training, on the task where the embedded model learns
(``--dataset``, ``arithmetic:1`` by default). MLPerf Training's metric: the training wall clock to a
quality target, here the SFT adapter's held-out strict accuracy + 10 points.

For each ``--seeds`` seed: a 10-step SFT adapter (the demo's warm-up), evaluated (step 0); then each
peer trains ``--max-steps`` GRPO steps from it, with the same settings (4 questions × 8 completions,
learning rate 1e-4 constant, ``--max-completion-length``'s first value, temperature 1.0, beta 0, the
same loss, LoRA and rewards) on the same questions in the same order, and is evaluated greedily on
the same first ``--eval-limit`` test questions every ``--eval-every`` steps. The evaluations' time is
not training time: each peer's clock is the sum of its steps' seconds.

Peers (``--peers``; ours in merge mode always runs, the others are compared with it):

- ``merge``: this project's server (merge mode, the CPU default) and trainer, evaluated in the run
  (``--eval-every``);
- ``lora``: the same with the server in lora mode;
- ``merge-fp32-head``, ``merge-whole-sequences``, ``merge-no-importance-correction``: ours with one of
  its departures from the recipe's computation turned off (``benchmarks.training.OURS_VARIANTS``);
- ``recipe``: TRL's ``GRPOTrainer`` as it ships, generating with transformers (the notebook's way,
  ``benchmarks/peers/trl_recipe.py``); its checkpoints every ``--eval-every`` steps are evaluated
  afterwards by the same evaluation;
- ``trl-colocate``: the same with TRL's colocated vLLM engine (reported with its error where it
  refuses to run here); ``trl-async`` is not part of this scenario.

Resumable: with the same ``--output-dir``, a finished SFT adapter, evaluation or peer run is kept,
ours continues from its newest checkpoint and TRL from its own. The recipe's steps are several
times ours (run times: ``docs/results/2026-12-08-time-to-accuracy.md``), so ``--seeds 1`` then
``--seeds 2`` ... runs the seeds a sitting at a time: ``curves.json`` keeps the seeds run before
(``earlier_seeds``), so a results page's copy of it, put in a fresh ``--output-dir``, is continued
the same way. Writes ``time-to-accuracy/curves.json``, ``time-to-accuracy.md`` (the tables) and
``time_to_accuracy.png`` (accuracy by step and by training minute).
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.measure import LORA_SERVER, SHARED_SERVER, Figure, machine
from benchmarks.training import OURS_VARIANTS, run_process
from grpo_math import recipe
from grpo_math.pipeline import Phases, run_pipeline
from shared.protocol import AdapterUpload
from trainer import metrics as names
from trainer.evaluation import percent, wilson_interval

TRL_MODES = {"recipe": "transformers", "trl-colocate": "colocate"}
OURS = ("merge", "lora", *OURS_VARIANTS)
TARGET_POINTS = 0.10  # the quality target: the SFT adapter's held-out strict accuracy + 10 points
GOALS = {  # against the recipe: the same learning (ours − recipe ≥ −3 points at the last step), ≥ 5× sooner
    "accuracy": ">= -3",
    "time": ">= 5",
}
ACCURACIES = ("strict_accuracy", "lenient_accuracy", "strict_format_rate")


def sizes(context) -> dict:
    """The scenario's sizes: the flags', or a few steps on 8 questions with --quick."""
    settings = context.settings
    if context.quick:
        return dict(seeds=(1,), steps=2, eval_every=1, eval_limit=8, length=32, dataset=settings.dataset)
    return dict(
        seeds=settings.seeds,
        steps=settings.max_steps,
        eval_every=settings.eval_every,
        eval_limit=settings.eval_limit,
        length=settings.max_completion_length[0],
        dataset=settings.dataset,
    )


def time_to_accuracy(context) -> list[Figure]:
    size = sizes(context)
    folder = context.output_dir / "time-to-accuracy"
    peers = ["merge", *(peer for peer in context.peers if peer != "merge" and (peer in OURS or peer in TRL_MODES))]
    merge_url = context.server(*SHARED_SERVER).url
    curves = earlier_seeds(folder / "curves.json", size["seeds"])  # seed → peer → curve
    for seed in size["seeds"]:
        seed_dir = folder / f"seed-{seed}"
        sft = warm_up(seed_dir, merge_url, seed, size)
        curves[str(seed)] = {"cpu": machine()["cpu"], "sft": step_zero(seed_dir, sft)}
        for peer in peers:
            run_dir = seed_dir / peer
            if peer in TRL_MODES:
                curve = trl_peer(context, run_dir, TRL_MODES[peer], sft, merge_url, seed, size)
            else:
                url = context.server(*LORA_SERVER).url if peer == "lora" else merge_url
                curve = our_peer(run_dir, url, OURS_VARIANTS.get(peer, {}), sft, seed, size)
            curves[str(seed)][peer] = {"step_zero": curves[str(seed)]["sft"], **curve}
    (folder / "curves.json").write_text(json.dumps(curves, indent=2) + "\n")
    context.raw["time_to_accuracy"] = {"sizes": {**size, "seeds": list(size["seeds"])}, "curves_file": str(folder)}
    (context.output_dir / "time-to-accuracy.md").write_text(tables(curves, size["steps"]))
    chart(context.output_dir / "time_to_accuracy.png", curves)
    return figures(curves, peers, size["steps"])


# ---- the runs -----------------------------------------------------------------------------------


def earlier_seeds(curves_file: Path, seeds: tuple[int, ...]) -> dict:
    """The curves of seeds measured in an earlier sitting and not run now (``curves.json`` kept from
    before, or a results page's copy put there), so that seeds run a sitting at a time, or on
    different machines, add up. Each seed's ratios compare peers that ran on the same machine;
    ``cpu`` says which."""
    if not curves_file.exists():
        return {}
    return {seed: curve for seed, curve in json.loads(curves_file.read_text()).items() if int(seed) not in seeds}


def peer_curves(by_peer: dict) -> dict:
    """One seed's curves by peer, without its SFT adapter's evaluation and its CPU."""
    return {peer: curve for peer, curve in by_peer.items() if peer not in ("sft", "cpu")}


def evaluation(size: dict, **overrides) -> dict:
    """Greedy, on the first --eval-limit test questions, at the peers' completion length."""
    return (
        dict(eval_limit=size["eval_limit"], max_completion_length=size["length"], dataset=size["dataset"]) | overrides
    )


def warm_up(seed_dir: Path, url: str, seed: int, size: dict) -> Path:
    """The seed's SFT adapter (the demo's warm-up: 10 steps), and its evaluation: every peer's step 0."""
    sft = dict(max_steps=recipe.EASY_SFT_STEPS, seed=seed, dataset=size["dataset"], report_to="none")
    step_zero_eval = evaluation(size, adapter=(str(seed_dir / "sft"),), output_dir=str(seed_dir / "eval-sft"))
    run_pipeline(seed_dir, url, Phases(sft=sft, grpo=None, evaluation=step_zero_eval), resume=True)
    return seed_dir / "sft"


def grpo_settings(seed: int, size: dict) -> dict:
    """What every peer trains with (the demo's GRPO settings on the easy task)."""
    return dict(
        seed=seed,
        dataset=size["dataset"],
        max_steps=size["steps"],
        prompts_per_step=recipe.EASY_PROMPTS_PER_STEP,
        max_completion_length=size["length"],
        learning_rate=recipe.EASY_GRPO_LEARNING_RATE,
        lr_scheduler_type="constant",
    )


def our_peer(run_dir: Path, url: str, overrides: dict, sft: Path, seed: int, size: dict) -> dict:
    """``grpo-math train`` from the SFT adapter, evaluated every --eval-every steps in the run."""
    grpo = dict(
        **grpo_settings(seed, size),
        init_adapter=str(sft),
        eval_every=size["eval_every"],
        eval_limit=size["eval_limit"],
        save_every=size["eval_every"],
        report_to="none",
        **overrides,
    )
    run_pipeline(run_dir, url, Phases(sft=None, grpo=grpo, evaluation=None), resume=True)
    rows = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    questions = evaluated_questions(run_dir.parent / "eval-sft")  # the same questions, greedy: one each
    points, seconds = [], 0.0
    for row in rows:
        seconds += row.get(names.STEP_SECONDS, 0.0)
        if names.eval_key("strict_accuracy") in row:
            rates = {name: rate(row[names.eval_key(name)], questions) for name in ACCURACIES}
            points.append({"step": row[names.STEP], "seconds": seconds, **rates})
    return {
        "points": points,
        "sampled_strict_accuracy": [row.get(names.STRICT_ACCURACY) for row in rows],
        "step_seconds": [row.get(names.STEP_SECONDS) for row in rows],
    }


def trl_peer(context, run_dir: Path, mode: str, sft: Path, url: str, seed: int, size: dict) -> dict:
    """TRL's ``GRPOTrainer`` from the SFT adapter, its checkpoints evaluated afterwards."""
    lines = read_steps(run_dir)
    if lines and "error" in lines[-1]:
        return {"error": " ".join(lines[-1]["error"].split())}  # not runnable here as it ships: tried once
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / f"checkpoint-{size['steps']}"
    if not (lines and lines[-1].get("step") == size["steps"] and AdapterUpload.is_adapter_folder(last)):
        settings = grpo_settings(seed, size)
        command = [sys.executable, "-m", "benchmarks.peers.trl_recipe", "--mode", mode,
                   "--steps", str(size["steps"]), "--max-completion-length", str(size["length"]),
                   "--init-adapter", str(sft), "--dataset", settings["dataset"],
                   "--prompts-per-step", str(settings["prompts_per_step"]),
                   "--learning-rate", str(settings["learning_rate"]),
                   "--lr-scheduler-type", settings["lr_scheduler_type"], "--seed", str(seed),
                   "--output-dir", str(run_dir), "--save-every", str(size["eval_every"])]  # fmt: skip
        if any(checkpoints.glob("checkpoint-*")):
            command.append("--resume")
        try:
            run_process(command, context.output_dir / f"trl-{mode}.log", timeout=context.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"stopped after --timeout {context.timeout:.0f} s; run again to continue"}
        lines = read_steps(run_dir)
        if not lines or "error" in lines[-1]:
            return {"error": " ".join(lines[-1]["error"].split()) if lines else f"no output; see trl-{mode}.log"}
    steps = list(range(size["eval_every"], size["steps"] + 1, size["eval_every"]))
    adapters = tuple(str(checkpoints / f"checkpoint-{step}") for step in steps)
    missing = [adapter for adapter in adapters if not AdapterUpload.is_adapter_folder(adapter)]
    if missing:
        return {"error": f"TRL saved no adapter at {', '.join(missing)}"}
    run_pipeline(run_dir, url, Phases(None, None, evaluation(size, adapter=adapters, output_dir=str(run_dir / "eval"))),
                 resume=True)  # fmt: skip
    models = json.loads((run_dir / "eval" / "summary.json").read_text())["models"]
    by_step = {line["step"]: line for line in lines}  # a resumed run's repeated steps: the last one
    elapsed = [sum(by_step[s]["seconds"] for s in range(1, step + 1)) for step in steps]
    return {
        "points": [
            {"step": step, "seconds": seconds, **{name: models[adapter][name] for name in ACCURACIES}}
            for step, seconds, adapter in zip(steps, elapsed, adapters, strict=True)
        ],
        "sampled_strict_accuracy": [by_step[s].get("strict_accuracy") for s in sorted(by_step)],
        "step_seconds": [by_step[s]["seconds"] for s in sorted(by_step)],
    }


def read_steps(run_dir: Path) -> list[dict]:
    path = run_dir / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def evaluated_questions(eval_dir: Path) -> int:
    return json.loads((eval_dir / "summary.json").read_text())["models"].popitem()[1]["completions"]


def step_zero(seed_dir: Path, sft: Path) -> dict:
    """The SFT adapter's evaluation: step 0 of every peer."""
    models = json.loads((seed_dir / "eval-sft" / "summary.json").read_text())["models"]
    return {"step": 0, "seconds": 0.0, **{name: models[str(sft)][name] for name in ACCURACIES}}


def rate(value: float, total: int) -> dict:
    """A rate measured on ``total`` questions, with its Wilson interval (as ``grpo-math eval`` writes).

    >>> measured = rate(0.25, 8)
    >>> measured["successes"], [round(bound, 3) for bound in measured["ci95"]]
    (2, [0.071, 0.591])
    """
    successes = round(value * total)
    return {"value": value, "successes": successes, "ci95": list(wilson_interval(successes, total))}


# ---- figures, tables, chart ---------------------------------------------------------------------


def reached(curve: dict, target: float) -> float | None:
    """Training seconds at the first evaluation at or above ``target`` strict accuracy; None: never.

    >>> curve = {"points": [{"seconds": 60.0, "strict_accuracy": {"value": 0.3}},
    ...                     {"seconds": 120.0, "strict_accuracy": {"value": 0.45}}]}
    >>> reached(curve, 0.4), reached(curve, 0.5)
    (120.0, None)
    """
    return next((p["seconds"] for p in curve["points"] if p["strict_accuracy"]["value"] >= target), None)


def last_point(curve: dict, steps: int) -> dict | None:
    return next((p for p in curve.get("points", []) if p["step"] == steps), None)


def summary_figure(name: str, values: list[float], goal: str | None, unit: str, note: str = "") -> Figure:
    """The mean over seeds as the value (the goals are on the mean), with median, min and max."""
    if not values:
        nan = float("nan")
        return Figure(name, nan, goal, unit, nan, nan, nan, 0, note)
    mean = statistics.mean(values)
    return Figure(name, mean, goal, unit, statistics.median(values), min(values), max(values), len(values), note)


def figures(curves: dict, peers: list[str], steps: int) -> list[Figure]:
    """Per peer against ours (merge): held-out accuracy at the last step (points), the training time
    to the SFT adapter's strict accuracy + 10 points, and the seconds per step, over the seeds."""
    result = []
    for peer in peers[1:]:
        ran = {seed: c for seed, c in curves.items() if peer in c}  # an earlier sitting may have run fewer peers
        trained = {seed: c for seed, c in ran.items() if "error" not in c[peer] and "error" not in c["merge"]}
        errors = [c[peer]["error"] for c in ran.values() if "error" in c[peer]]
        note = f"not runnable here as it ships: {errors[0][:300]}" if errors and not trained else ""
        goals = GOALS if peer in TRL_MODES else {"accuracy": None, "time": None}
        for metric, label in (("strict_accuracy", "strict"), ("lenient_accuracy", "lenient")):
            differences = []
            for c in trained.values():
                ours, theirs = last_point(c["merge"], steps), last_point(c[peer], steps)
                if ours and theirs:
                    differences.append(100 * (ours[metric]["value"] - theirs[metric]["value"]))
            goal = goals["accuracy"] if metric == "strict_accuracy" else None
            name = f"held-out {label} accuracy at step {steps}: ours − {peer}"
            result.append(summary_figure(name, differences, goal, "points", note))
        ratios, never = [], []
        for seed, c in trained.items():
            target = c["sft"]["strict_accuracy"]["value"] + TARGET_POINTS
            ours, theirs = reached(c["merge"], target), reached(c[peer], target)
            if ours and theirs:
                ratios.append(theirs / ours)
            else:
                never.append(f"seed {seed}: {'ours' if not ours else peer} never reached SFT + 10 points")
        name = f"training time to SFT + 10 points: {peer} ÷ ours"
        result.append(summary_figure(name, ratios, goals["time"], "×", note or "; ".join(never)))
        per_step = [statistics.median(c[peer]["step_seconds"]) / statistics.median(c["merge"]["step_seconds"])
                    for c in trained.values()]  # fmt: skip
        result.append(summary_figure(f"seconds per training step: {peer} ÷ ours", per_step, None, "×", note))
    return result


def tables(curves: dict, steps: int) -> str:
    """Markdown: per seed and peer, held-out strict and lenient accuracy and strict format at each
    evaluation with Wilson intervals, the training minutes there, and the sampled right answers."""
    machines = ", ".join(f"seed {seed}: {by_peer.get('cpu', 'CPU not recorded')}" for seed, by_peer in curves.items())
    lines = [
        f"Measured on {machines}.",
        "",
        "| seed | peer | step | training min | strict accuracy % | lenient accuracy % | strict format % |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, by_peer in curves.items():
        for peer, curve in peer_curves(by_peer).items():
            if "error" in curve:
                lines.append(f"| {seed} | {peer} | — | — | failed: {curve['error'][:120]} | | |")
                continue
            for point in [curve["step_zero"], *curve["points"]]:
                cells = [percent(point[name]) for name in ACCURACIES]
                minutes = f"{point['seconds'] / 60:.1f}"
                lines.append(f"| {seed} | {peer} | {point['step']} | {minutes} | " + " | ".join(cells) + " |")
    lines += ["", "Sampled completions strictly right, mean over the run's first and last steps (a third of its "
              "steps, at most 10, each):", "",
              "| seed | peer | steps each | first steps | last steps |", "|---|---|---|---|---|"]  # fmt: skip
    for seed, by_peer in curves.items():
        for peer, curve in peer_curves(by_peer).items():
            sampled = [value for value in curve.get("sampled_strict_accuracy", []) if value is not None]
            if sampled:
                window = min(10, max(1, len(sampled) // 3))
                first, last = statistics.mean(sampled[:window]), statistics.mean(sampled[-window:])
                lines.append(f"| {seed} | {peer} | {window} | {100 * first:.1f} % | {100 * last:.1f} % |")
    return "\n".join(lines) + "\n"


def chart(path: Path, curves: dict) -> None:
    """Held-out strict accuracy by GRPO step and by training minute, one line per peer and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_minute) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict(zip(["merge", "recipe", "trl-colocate", "lora", *OURS_VARIANTS], palette))
    markers = "os^Dv"
    for index, (seed, by_peer) in enumerate(curves.items()):
        for peer, curve in peer_curves(by_peer).items():
            if "error" in curve:
                continue
            points = [curve["step_zero"], *curve["points"]]
            accuracy = [100 * p["strict_accuracy"]["value"] for p in points]
            label = f"{'ours' if peer == 'merge' else peer}, seed {seed}"
            style = dict(color=colours[peer], marker=markers[index % len(markers)], label=label)
            by_step.plot([p["step"] for p in points], accuracy, **style)
            by_minute.plot([p["seconds"] / 60 for p in points], accuracy, **style)
        target = 100 * (by_peer["sft"]["strict_accuracy"]["value"] + TARGET_POINTS)
        for axis in (by_step, by_minute):
            axis.axhline(target, color="grey", linestyle=":", linewidth=1)
    by_step.set_xlabel("GRPO step")
    by_minute.set_xlabel("training minutes (evaluations not counted)")
    by_step.set_ylabel("held-out strict accuracy, %")
    by_step.set_title("per step (dotted: SFT + 10 points)")
    by_minute.set_title("per minute")
    for axis in (by_step, by_minute):
        axis.set_ylim(bottom=0)  # from zero: a dip of a point reads as one
        axis.grid(alpha=0.3)
    by_minute.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
