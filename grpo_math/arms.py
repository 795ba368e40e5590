"""``grpo-math arms``: what GRPO adds beyond SFT. From one SFT run per seed, trained until it stops
improving, GRPO and its two controls, evaluated in distribution, out of it, on another task, by
pass@k, by the policy's entropy and by how far each moved from its start (the forgetting measure).

Per seed (``seed-N/``):

1. ``sft/``: SFT on ``--dataset`` for ``--sft-steps`` steps, its adapter kept every
   ``--sft-save-every`` steps; ``sft-validation/``: the adapters of every ``--sft-eval-every``-th step
   evaluated greedily on the validation questions (``--dataset``'s test split after the first
   ``--eval-limit``, so that choosing does not see the reported questions). The **converged SFT**
   adapter is the one with the best validation lenient accuracy (the earliest of equals): where SFT
   stops improving.
2. The arms (``--arms``), each in a folder of its own (``arm-NAME/``), with the same GRPO settings:

   - ``sft``: the converged SFT adapter, no more training;
   - ``sft-grpo``: GRPO from it (the recipe's real order: SFT, then RL);
   - ``sft10-grpo``: GRPO from the ``--sft-short-steps`` adapter (the demo's warm-up; kept from the
     same SFT run, whose learning rate is constant: a 10-step run's adapter but for the examples'
     order, which TRL shuffles over the whole run's examples);
   - ``random-reward``: as ``sft-grpo``, the correctness rewards replaced by a random reward of the
     same mean and spread (``shared.control_rewards:shuffled_correctness``);
   - ``format-only``: as ``sft-grpo``, the correctness rewards' weights 0 (``--reward-weights 1 1 0 0``).

3. Each arm's adapter evaluated greedily on ``--dataset``'s first ``--eval-limit`` test questions (in
   distribution), on each ``--ood-datasets`` and on ``--transfer-dataset``; sampled ``--pass-k``
   times at temperature 1 on the first ``--pass-k-questions`` in distribution (pass@k, maj@k and
   the per-token entropy of the policy, ``trainer/evaluation.py``); and, for the GRPO arms, the KL
   per token from the adapter the arm started from, on one of those samples per question
   (``trainer/divergence.py``).

Each arm's training time is recorded (GRPO: the sum of its steps; SFT: the phase's wall clock, and
the converged adapter's share of it). Resumable: run it again with the same ``--output-dir`` and
finished phases are kept, an interrupted GRPO arm continues from its newest checkpoint, so the
matrix can take several sittings (``--seeds 1``, then ``--seeds 2``, ... ; ``--arms`` likewise).
Writes ``arms.json``, ``results.md`` (the tables and the verdict on the goals) and ``arms.png``.

    grpo-math arms --output-dir runs/arms                   # arithmetic:1-2, 3 seeds, every arm
    grpo-math arms --output-dir runs/arms --seeds 1 --arms sft sft-grpo   # one sitting's share
    grpo-math arms --quick                                  # a few steps, 8 questions (the slow test)
"""

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from grpo_math import recipe
from grpo_math.pipeline import Phases, generator_server, run_pipeline
from shared.datasets import WORKED_SOLUTIONS_HELP, require_dataset
from shared.models import cpu_model_name
from shared.settings import (
    at_least,
    check_fields,
    parse_settings,
    positive,
    read_config,
    require,
    setting,
    write_config,
)
from trainer.evaluation import percent

Arm = Literal["sft", "sft-grpo", "sft10-grpo", "random-reward", "format-only"]
ARMS: tuple[Arm, ...] = ("sft", "sft-grpo", "sft10-grpo", "random-reward", "format-only")
FORMAT_REWARDS = ("shared.rewards:match_format_exactly", "shared.rewards:match_format_approximately")
REWARDS_BY_ARM = {  # the GRPO arms' departures from the four rewards
    "random-reward": dict(reward_funcs=(*FORMAT_REWARDS, "shared.control_rewards:shuffled_correctness")),
    "format-only": dict(reward_weights=(1.0, 1.0, 0.0, 0.0)),
}
ARM_SET_FIELDS = {  # the train settings every GRPO arm sets (from the flags above, or per arm)
    "init_adapter", "seed", "dataset", "max_steps", "prompts_per_step", "max_completion_length", "learning_rate",
    "lr_scheduler_type", "save_every", "report_to", "reward_funcs", "reward_weights", "output_dir", "resume",
}  # fmt: skip
GOAL_POINTS = 0.05  # converged SFT → GRPO over converged SFT, lenient accuracy, intervals apart, every seed
QUICK = dict(
    seeds=(1,),
    sft_steps=4,
    sft_save_every=2,
    sft_eval_every=2,
    sft_short_steps=2,
    grpo_steps=2,
    eval_limit=8,
    validation_limit=8,
    pass_k=2,
    pass_k_questions=4,
    max_completion_length=32,
)


@dataclass(frozen=True)
class ArmsSettings:
    output_dir: str | None = setting(None, "the experiment's folder; none = runs/arms-<time>")
    dataset: str = setting("arithmetic:1-2", f"trained on, and in distribution: {WORKED_SOLUTIONS_HELP}")
    ood_datasets: tuple[str, ...] = setting(
        ("arithmetic:3", "arithmetic:4", "arithmetic:1-2:large"),
        "out of distribution: more steps, and larger numbers (evaluated on their test splits)",
    )
    transfer_dataset: str | None = setting(
        "gsm8k", "another task (a --dataset value), evaluated alike; none = no transfer"
    )
    arms: tuple[Arm, ...] = setting(ARMS, "the arms to run (see above)")
    seeds: tuple[int, ...] = setting((1, 2, 3), "one SFT run and every arm per seed")
    sft_steps: int = setting(150, "SFT steps, past where it stops improving", check=at_least(1))
    sft_save_every: int = setting(10, "keep the SFT adapter every N steps", check=at_least(1))
    sft_eval_every: int = setting(30, "evaluate the kept SFT adapter of every N-th step", check=at_least(1))
    sft_short_steps: int = setting(recipe.EASY_SFT_STEPS, "the sft10-grpo arm's warm-up steps", check=at_least(1))
    grpo_steps: int = setting(40, "GRPO steps of every GRPO arm", check=at_least(1))
    prompts_per_step: int = setting(recipe.EASY_PROMPTS_PER_STEP, "questions per GRPO step", check=at_least(1))
    learning_rate: float = setting(recipe.EASY_GRPO_LEARNING_RATE, "GRPO learning rate (constant)", check=positive())
    max_completion_length: int = setting(
        recipe.MAX_COMPLETION_LENGTH, "most tokens per completion, GRPO and every evaluation", check=at_least(1)
    )
    train_config: str | None = setting(
        None, "YAML or JSON file of more grpo-math train settings for every GRPO arm (a lever to try: num_iterations)"
    )
    eval_limit: int = setting(200, "the first N test questions of every evaluated dataset", check=at_least(1))
    validation_limit: int = setting(100, "SFT validation: the N test questions after --eval-limit", check=at_least(1))
    pass_k: int = setting(8, "completions per question for pass@k and the entropy", check=at_least(2))
    pass_k_questions: int = setting(100, "the first N in-distribution test questions, sampled", check=at_least(1))
    quick: bool = setting(False, f"a few steps on one seed and 8 questions: {QUICK}")

    def __post_init__(self) -> None:
        check_fields(self)
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must differ from one another")
        for name in ("dataset", "transfer_dataset"):
            require_dataset(name, getattr(self, name))
        for value in self.ood_datasets:
            require_dataset("ood_datasets", value)
        for name in ("sft_eval_every", "sft_short_steps"):
            require(getattr(self, name) % self.sft_save_every == 0, name, "must be a multiple of --sft-save-every")
        require(self.sft_short_steps <= self.sft_steps, "sft_short_steps", "must be at most --sft-steps")
        require(self.train_config is None or Path(self.train_config).is_file(), "train_config", "no such file")
        if self.train_config is not None:
            taken = sorted(set(read_config(self.train_config)) & ARM_SET_FIELDS)
            require(not taken, "train_config", f"sets {', '.join(taken)}, which the arms set themselves")


# ---- one seed: SFT until it stops improving ----------------------------------------------------


def sft_adapter(seed_dir: Path, step: int, settings: ArmsSettings) -> Path:
    """The SFT run's adapter at ``step``: a kept checkpoint, or the final adapter."""
    return seed_dir / "sft" if step == settings.sft_steps else seed_dir / "sft" / "trainer" / f"checkpoint-{step}"


def converged_sft(seed_dir: Path, url: str, seed: int, settings: ArmsSettings) -> dict:
    """SFT for --sft-steps, its adapters evaluated on the validation questions; returns the
    validation curve, the converged step and the SFT phase's wall clock."""
    timing = seed_dir / "sft-seconds.json"
    if not timing.exists():
        started = time.monotonic()
        sft = dict(max_steps=settings.sft_steps, save_every=settings.sft_save_every, seed=seed,
                   dataset=settings.dataset, report_to="none")  # fmt: skip
        run_pipeline(seed_dir, url, Phases(sft=sft, grpo=None, evaluation=None), resume=True)
        timing.write_text(json.dumps({"seconds": time.monotonic() - started}) + "\n")
    steps = list(range(settings.sft_eval_every, settings.sft_steps + 1, settings.sft_eval_every))
    if steps[-1] != settings.sft_steps:
        steps.append(settings.sft_steps)
    adapters = [str(sft_adapter(seed_dir, step, settings)) for step in steps]
    questions = f"test[{settings.eval_limit}:{settings.eval_limit + settings.validation_limit}]"
    validation = evaluation(settings, adapter=tuple(adapters), output_dir=str(seed_dir / "sft-validation"),
                            split=questions)  # fmt: skip
    run_pipeline(seed_dir, url, Phases(sft=None, grpo=None, evaluation=validation), resume=True)
    models = json.loads((seed_dir / "sft-validation" / "summary.json").read_text())["models"]
    curve = {step: models[adapter]["lenient_accuracy"]["value"] for step, adapter in zip(steps, adapters, strict=True)}
    best = max(curve.values())
    return {
        "validation_lenient_accuracy": curve,
        "converged_step": next(step for step, value in curve.items() if value == best),
        "seconds": json.loads(timing.read_text())["seconds"],
    }


# ---- one arm: its training, then its evaluations -----------------------------------------------


def evaluation(settings: ArmsSettings, **overrides) -> dict:
    """Greedy, on the first --eval-limit test questions of --dataset, at the arms' completion length."""
    return dict(eval_limit=settings.eval_limit, max_completion_length=settings.max_completion_length,
                dataset=settings.dataset) | overrides  # fmt: skip


def grpo(arm_dir: Path, url: str, start: Path, arm: Arm, seed: int, settings: ArmsSettings) -> tuple[Path, float]:
    """GRPO from ``start`` with the arm's rewards; (the final adapter, the training seconds)."""
    extra = read_config(settings.train_config) if settings.train_config else {}
    phase = dict(
        **extra,
        init_adapter=str(start),
        seed=seed,
        dataset=settings.dataset,
        max_steps=settings.grpo_steps,
        prompts_per_step=settings.prompts_per_step,
        max_completion_length=settings.max_completion_length,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        save_every=10,
        report_to="none",
        **REWARDS_BY_ARM.get(arm, {}),
    )
    run_pipeline(arm_dir, url, Phases(sft=None, grpo=phase, evaluation=None), resume=True)
    rows = [json.loads(line) for line in (arm_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    by_step = {row["step"]: row for row in rows}  # a resumed run's repeated steps: the last one
    return arm_dir / "grpo" / "final", sum(row.get("time/step_s", 0.0) for row in by_step.values())


def evaluate_arm(arm_dir: Path, url: str, adapter: Path, start: Path | None, settings: ArmsSettings) -> dict:
    """Every evaluation of one arm's adapter (see the module's step 3), each in its own folder."""
    greedy = {"in_distribution": settings.dataset, **{f"ood:{name}": name for name in settings.ood_datasets}}
    if settings.transfer_dataset is not None:
        greedy["transfer"] = settings.transfer_dataset
    result = {}
    for index, (key, dataset) in enumerate(greedy.items()):
        folder = arm_dir / f"eval-{index}"  # eval-0: in distribution, then the out-of-distribution ones, transfer
        run_pipeline(arm_dir, url, Phases(None, None, evaluation(settings, adapter=(str(adapter),), dataset=dataset,
                                                                 output_dir=str(folder))), resume=True)  # fmt: skip
        result[key] = {"dataset": dataset, **rates(folder, ("strict_accuracy", "lenient_accuracy"))}
    sampled = arm_dir / "eval-sampled"
    phase = evaluation(settings, adapter=(str(adapter),), output_dir=str(sampled), eval_limit=settings.pass_k_questions,
                       num_generations=settings.pass_k, temperature=1.0)  # fmt: skip
    run_pipeline(arm_dir, url, Phases(None, None, phase), resume=True)
    summary = only_model(sampled)
    result["sampled"] = {
        f"pass@{settings.pass_k}": summary[f"pass@{settings.pass_k}"],
        f"maj@{settings.pass_k}": summary[f"maj@{settings.pass_k}"],
        "entropy_per_token": summary["entropy_per_token"],
    }
    if start is not None:
        result["kl_to_start"] = kl_to_start(arm_dir, adapter, start)
    return result


def kl_to_start(arm_dir: Path, adapter: Path, start: Path) -> dict:
    """KL(π_arm ‖ π_start) per token on the first sampled completion of each question (kept in
    ``kl.json``: it loads the model, so a resumed run does not measure it twice)."""
    from shared.models import resolve_model
    from trainer.divergence import kl_per_token

    path = arm_dir / "kl.json"
    if not path.exists():
        rows = [json.loads(line) for line in (arm_dir / "eval-sampled" / "completions.jsonl").read_text().splitlines()]
        first = list({row["question_index"]: row for row in reversed(rows)}.values())  # one per question
        measured = kl_per_token(resolve_model("auto"), str(adapter), str(start), first)
        path.write_text(json.dumps({**measured, "start": str(start)}) + "\n")
    return json.loads(path.read_text())


def only_model(eval_dir: Path) -> dict:
    return next(iter(json.loads((eval_dir / "summary.json").read_text())["models"].values()))


def rates(eval_dir: Path, names: tuple[str, ...]) -> dict:
    summary = only_model(eval_dir)
    return {name: summary[name] for name in names}


# ---- the matrix ----------------------------------------------------------------------------------


def run_seed(seed_dir: Path, url: str, seed: int, settings: ArmsSettings) -> dict:
    """One seed: converged SFT, then every arm of --arms, trained and evaluated."""
    sft = converged_sft(seed_dir, url, seed, settings)
    converged = sft_adapter(seed_dir, sft["converged_step"], settings)
    print(f"seed {seed}: SFT stops improving at step {sft['converged_step']} "
          f"(validation lenient accuracy by step: {sft['validation_lenient_accuracy']})", flush=True)  # fmt: skip
    sft_seconds_per_step = sft["seconds"] / settings.sft_steps
    arms = {}
    for arm in settings.arms:
        arm_dir = seed_dir / f"arm-{arm}"
        if arm == "sft":
            adapter, start, seconds = converged, None, sft_seconds_per_step * sft["converged_step"]
        else:
            short = arm == "sft10-grpo"
            start = sft_adapter(seed_dir, settings.sft_short_steps, settings) if short else converged
            adapter, seconds = grpo(arm_dir, url, start, arm, seed, settings)
            seconds += sft_seconds_per_step * (settings.sft_short_steps if short else sft["converged_step"])
        print(f"seed {seed}, arm {arm}: evaluating {adapter}", flush=True)
        arms[arm] = {"training_minutes": seconds / 60, **evaluate_arm(arm_dir, url, adapter, start, settings)}
    return {"sft": sft, "arms": arms}


def run_arms(settings: ArmsSettings) -> Path:
    folder = Path(settings.output_dir or Path("runs") / f"arms-{datetime.now():%Y%m%d-%H%M%S}")
    write_config(settings, folder / "settings.json")
    results_file = folder / "arms.json"
    kept = json.loads(results_file.read_text())["seeds"] if results_file.exists() else {}
    with generator_server(folder) as server:
        print(f"arms {folder}: server {server.url} (log {server.log_path})", flush=True)
        for seed in settings.seeds:
            measured = run_seed(folder / f"seed-{seed}", server.url, seed, settings)
            earlier = kept.get(str(seed), {}).get("arms", {})
            kept[str(seed)] = {"cpu": cpu_model_name(), "sft": measured["sft"], "arms": {**earlier, **measured["arms"]}}
            results_file.write_text(json.dumps({"settings": asdict(settings), "seeds": kept}, indent=2) + "\n")
    tables = report(kept, settings)
    (folder / "results.md").write_text(tables)
    chart(folder / "arms.png", kept, settings)
    print(tables)
    return folder


# ---- the report ----------------------------------------------------------------------------------


def apart_above(better: dict, worse: dict, points: float = 0.0) -> bool:
    """``better``'s rate at least ``points`` above ``worse``'s, and their intervals apart.

    >>> apart_above({"value": 0.6, "ci95": [0.5, 0.7]}, {"value": 0.4, "ci95": [0.3, 0.49]}, 0.05)
    True
    >>> apart_above({"value": 0.6, "ci95": [0.5, 0.7]}, {"value": 0.4, "ci95": [0.3, 0.51]})
    False
    """
    return better["value"] - worse["value"] >= points and better["ci95"][0] > worse["ci95"][1]


def verdicts(seeds: dict) -> dict[str, list[bool]]:
    """Per seed that ran the arms a goal compares: (1) converged SFT → GRPO ≥ 5 points of lenient
    accuracy over converged SFT, in distribution or on any out-of-distribution set, intervals apart;
    (2) GRPO's in-distribution lenient accuracy above each control's, intervals apart."""
    first, second = [], []
    for by_seed in seeds.values():
        arms = by_seed["arms"]
        if "sft" in arms and "sft-grpo" in arms:
            keys = [key for key in arms["sft-grpo"] if key == "in_distribution" or key.startswith("ood:")]
            grpo, sft = arms["sft-grpo"], arms["sft"]
            first.append(any(apart_above(grpo[k]["lenient_accuracy"], sft[k]["lenient_accuracy"], GOAL_POINTS)
                             for k in keys))  # fmt: skip
        if {"sft-grpo", "random-reward", "format-only"} <= set(arms):
            ours = arms["sft-grpo"]["in_distribution"]["lenient_accuracy"]
            second.append(all(apart_above(ours, arms[control]["in_distribution"]["lenient_accuracy"])
                              for control in ("random-reward", "format-only")))  # fmt: skip
    return {"grpo_beats_converged_sft": first, "correctness_beats_controls": second}


def report(seeds: dict, settings: ArmsSettings) -> str:
    """Markdown: per seed and arm every measure; the SFT curve; the verdict on the two goals."""
    sampled = f"pass@{settings.pass_k}"
    ood_keys = [f"ood:{name}" for name in settings.ood_datasets]
    header = ["seed", "arm", "training min", "in-dist strict %", "in-dist lenient %",
              *[f"{key.removeprefix('ood:')} lenient %" for key in ood_keys],
              "transfer lenient %", f"{sampled} %", "entropy (nats/token)", "KL to start (nats/token)"]  # fmt: skip
    lines = [f"Measured on {', '.join(sorted({s['cpu'] for s in seeds.values()}))}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for seed, by_seed in seeds.items():
        for arm, measured in by_seed["arms"].items():
            cells = [seed, arm, f"{measured['training_minutes']:.1f}",
                     percent(measured["in_distribution"]["strict_accuracy"]),
                     percent(measured["in_distribution"]["lenient_accuracy"]),
                     *[percent(measured[key]["lenient_accuracy"]) if key in measured else "—" for key in ood_keys],
                     percent(measured["transfer"]["lenient_accuracy"]) if "transfer" in measured else "—",
                     percent(measured["sampled"][sampled]) if sampled in measured["sampled"] else "—",
                     f"{measured['sampled']['entropy_per_token']:.3f}",
                     f"{measured['kl_to_start']['kl_per_token']:.4f}" if "kl_to_start" in measured
                     else "—"]  # fmt: skip
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines += ["", "SFT: validation lenient accuracy by step, and where it stops improving:", ""]
    for seed, by_seed in seeds.items():
        curve = ", ".join(
            f"{step}: {100 * value:.0f} %" for step, value in by_seed["sft"]["validation_lenient_accuracy"].items()
        )
        lines.append(f"- seed {seed}: {curve}; converged at step {by_seed['sft']['converged_step']}")
    lines += ["", "Goals (per seed that ran the arms compared):", ""]
    for goal, met in verdicts(seeds).items():
        state = "not measured" if not met else f"met on {sum(met)} of {len(met)} seeds"
        lines.append(f"- {goal.replace('_', ' ')}: {state}")
    return "\n".join(lines) + "\n"


def chart(path: Path, seeds: dict, settings: ArmsSettings) -> None:
    """Lenient accuracy per arm on each evaluated set: the median over seeds, min–max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["in_distribution", *[f"ood:{name}" for name in settings.ood_datasets]]
    keys += ["transfer"] if settings.transfer_dataset else []
    arms = [arm for arm in ARMS if any(arm in s["arms"] for s in seeds.values())]
    figure, axis = plt.subplots(figsize=(max(8, 1.6 * len(keys)), 4.5))
    width = 0.8 / max(1, len(arms))
    for offset, arm in enumerate(arms):
        for index, key in enumerate(keys):
            values = [
                100 * s["arms"][arm][key]["lenient_accuracy"]["value"] for s in seeds.values() if arm in s["arms"]
            ]
            if not values:
                continue
            middle = statistics.median(values)
            error = [[middle - min(values)], [max(values) - middle]]
            axis.bar(index + offset * width, middle, width, yerr=error, capsize=3, color=f"C{offset}",
                     label=arm if index == 0 else None)  # fmt: skip
    axis.set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(keys))],
                    [key.removeprefix("ood:") for key in keys], fontsize=8)  # fmt: skip
    axis.set_ylabel("lenient accuracy, % (median over seeds, min–max)")
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(ArmsSettings, argv, prog="grpo-math arms", description=__doc__)
    if settings.quick:
        settings = replace(settings, **QUICK)
    folder = run_arms(settings)
    print(f"arms: {folder} (arms.json, results.md, arms.png)")
    return 0
