"""``grpo-math study``: does GRPO teach the embedded model the maths, or only the format? Measured
over seeds, on the same GSM8K test questions, with 95 % intervals.

1. starts ``grpo-math serve`` (merge mode on CPU) and evaluates the base model greedily on the first
   ``--questions`` test questions with ``--base-max-tokens`` (1024: its answers are not cut off);
2. for each seed: format warm-up (``grpo-math sft``, that seed), then GRPO with the recipe's four
   rewards, evaluating the adapter greedily on the same questions every ``--eval-every`` steps
   (``eval/*`` rows in the run's metrics.jsonl), and a final evaluation that keeps every completion;
3. writes ``study.json`` (the settings, the base model's and each seed's final metrics with Wilson
   intervals, the failure kinds of every final answer), ``curves.png`` (each reward and the test
   accuracies by step, one line per seed, overlaid) and ``results.md`` (the table the README quotes).

One study is one setting. To find what moves the answer-correctness reward, change one flag per
study (``--num-generations 16``, ``--max-completion-length 512``, ``--learning-rate``, ``--lr-scheduler-type``,
``--temperature``, ``--sft-steps``) and put the studies side by side with ``--compare``.

The goal: strict accuracy after GRPO above the base model's lenient accuracy (the last number of
its answer, whatever the format), its interval clear of the base's, on every seed.

    grpo-math study                                   # runs/study-<time>/, ≈ 50 min per seed on 2 cores
    grpo-math study --num-generations 16 --output-dir runs/study-g16
    grpo-math study --compare runs/study-a runs/study-g16   # one table of finished studies
    grpo-math study --quick                           # a few steps, one seed, 8 questions (the slow test)
"""

import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from grpo_math.local_server import LocalServer
from shared.settings import at_least, check_fields, parse_settings, positive, require, setting

QUICK = dict(
    seeds=(1,), questions=8, base_max_tokens=64, sft_steps=4, grpo_steps=3, eval_every=2, max_completion_length=64
)
ACCURACIES = ("strict_accuracy", "lenient_accuracy", "strict_format_rate")
# What went wrong in an answer, one kind each, in this order of precedence.
FAILURE_KINDS = (
    "correct",  # strict format, right number
    "truncated, looping",  # cut off at the token limit while repeating itself
    "truncated",  # cut off at the token limit otherwise
    "format, a number of the question",  # the strict format, <SOLUTION> repeats a number the question gives
    "format, wrong number",  # the strict format, another wrong number in <SOLUTION>
    "right number, no format",  # the last number is right, the strict format is missing
    "no format, wrong number",
)


@dataclass(frozen=True)
class StudySettings:
    output_dir: str | None = setting(None, "study folder; none = runs/study-<time>")
    seeds: tuple[int, ...] = setting((1, 2, 3), "one warm-up + GRPO run per seed")
    questions: int = setting(200, "the first N GSM8K test questions, for every evaluation", check=at_least(1))
    base_max_tokens: int = setting(1024, "completion tokens of the base model's evaluation", check=at_least(1))
    sft_steps: int = setting(40, "format warm-up steps (batch 4, lr 1e-3, as the demo)", check=at_least(1))
    grpo_steps: int = setting(150, "GRPO steps per seed", check=at_least(1))
    eval_every: int = setting(25, "evaluate the adapter every N GRPO steps", check=at_least(1))
    num_generations: int = setting(8, "completions per question (G)", check=at_least(2))
    max_completion_length: int = setting(256, "GRPO and evaluation completion tokens", check=at_least(1))
    learning_rate: float = setting(3e-4, "GRPO learning rate", check=positive())
    lr_scheduler_type: Literal["linear", "constant"] = setting("constant", "GRPO learning-rate schedule")
    temperature: float = setting(1.0, "GRPO sampling temperature", check=positive())
    max_staleness: int = setting(0, "GRPO --max-staleness (0 = synchronous)", check=at_least(0))
    quick: bool = setting(False, f"a few steps on one seed and 8 questions: {QUICK}")
    compare: tuple[str, ...] = setting((), "only put these finished study folders side by side in one table")

    def __post_init__(self) -> None:
        check_fields(self)
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must differ from one another")
        for folder in self.compare:
            require((Path(folder) / "study.json").is_file(), "compare", f"{folder}: no study.json (not a study)")


# ---- the commands each phase runs, built just before it runs ----------------------------------


def warmup_settings(study: StudySettings, seed_dir: Path, seed: int):
    from trainer.sft import SFTSettings

    return SFTSettings(
        output_dir=str(seed_dir / "warmup"),
        max_steps=study.sft_steps,
        batch_size=4,
        learning_rate=1e-3,
        seed=seed,
        report_to="none",
    )


def grpo_settings(study: StudySettings, seed_dir: Path, seed: int, server_url: str):
    from trainer.settings import TrainSettings

    return TrainSettings(
        server_url=(server_url,),
        init_adapter=str(seed_dir / "warmup"),
        output_dir=str(seed_dir / "grpo"),
        seed=seed,
        max_steps=study.grpo_steps,
        num_generations=study.num_generations,
        max_completion_length=study.max_completion_length,
        temperature=study.temperature,
        learning_rate=study.learning_rate,
        lr_scheduler_type=study.lr_scheduler_type,
        max_staleness=study.max_staleness,
        eval_every=study.eval_every,
        eval_limit=study.questions,
        save_every=25,
        report_to="none",
    )


def eval_settings(study: StudySettings, server_url: str, output_dir: Path, adapter: str | None):
    from trainer.evaluate import EvalSettings

    return EvalSettings(
        server_url=server_url,
        base=adapter is None,
        adapter=() if adapter is None else (adapter,),
        limit=study.questions,
        max_tokens=study.base_max_tokens if adapter is None else study.max_completion_length,
        output_dir=str(output_dir),
    )


# ---- what the study reports -------------------------------------------------------------------


def looping(text: str, tail: int = 100) -> bool:
    """Its last ``tail`` characters occur earlier in the text too: stuck repeating itself.

    >>> looping("So 3 + 4 = 7. " * 20), looping("The answer is 7.")
    (True, False)
    """
    return len(text) > 2 * tail and text[-tail:] in text[:-tail]


def copied(row: dict) -> bool:
    """The ``<SOLUTION>`` answer is one of the numbers the question gives.

    >>> copied({"question": "Tom has 1,200 apples and eats 3.", "strict_answer": "1200"})
    True
    """
    from trainer.evaluation import NUMBER, normalise_answer_text

    return row["strict_answer"] in {normalise_answer_text(number) for number in NUMBER.findall(row["question"])}


def failure_kind(row: dict) -> str:
    """One completion's row (``trainer.evaluation.verdicts`` and its text) → what went wrong.

    >>> failure_kind({"strict_correct": False, "truncated": False, "strict_format": False, "lenient_correct": True})
    'right number, no format'
    """
    if row["strict_correct"]:
        return "correct"
    if row["truncated"]:
        return "truncated, looping" if looping(row.get("completion", "")) else "truncated"
    if row["strict_format"]:
        return "format, a number of the question" if copied(row) else "format, wrong number"
    return "right number, no format" if row["lenient_correct"] else "no format, wrong number"


def failure_kinds(completions_path: Path) -> dict[str, int]:
    rows = [json.loads(line) for line in completions_path.read_text().splitlines()]
    counts = Counter(failure_kind(row) for row in rows)
    return {kind: counts.get(kind, 0) for kind in FAILURE_KINDS}


def final_metrics(eval_dir: Path) -> dict:
    """The rates (value, ci95) of an evaluation folder's one model, and its failure kinds."""
    (summary,) = json.loads((eval_dir / "summary.json").read_text())["models"].values()
    return {
        **{name: summary[name] for name in ACCURACIES},
        "truncation_rate": summary["truncation_rate"],
        "completion_length_mean": summary["completion_length_mean"],
        "failure_kinds": failure_kinds(eval_dir / "completions.jsonl"),
    }


def goal_met(seed_final: dict, base: dict) -> bool:
    """Strict accuracy after GRPO above the base's lenient accuracy, the intervals apart.

    >>> goal_met({"strict_accuracy": {"ci95": [0.2, 0.3]}}, {"lenient_accuracy": {"ci95": [0.1, 0.19]}})
    True
    """
    return seed_final["strict_accuracy"]["ci95"][0] > base["lenient_accuracy"]["ci95"][1]


def percent(metric: dict) -> str:
    """``{"value": 0.25, "ci95": [0.2, 0.31]}`` → ``'25.0 % [20.0–31.0]'``."""
    low, high = metric["ci95"]
    return f"{100 * metric['value']:.1f} % [{100 * low:.1f}–{100 * high:.1f}]"


def read_rows(metrics_path: Path) -> list[dict]:
    return [json.loads(line) for line in metrics_path.read_text().splitlines()]


def curves_chart(study_dir: Path, seeds: tuple[int, ...], base: dict) -> Path:
    """Each reward (smoothed over 10 steps) and the test accuracies by step; one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.rewards import REWARD_FUNCTIONS
    from trainer.report import smooth

    reward_keys = ("reward", *(f"rewards/{reward.name}" for reward in REWARD_FUNCTIONS))
    eval_keys = ("eval/strict_accuracy", "eval/lenient_accuracy", "eval/strict_format_rate")
    figure, axes = plt.subplots(2, 4, figsize=(18, 8))
    panels = list(axes.flat)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, seed in zip(colours, seeds):
        rows = read_rows(study_dir / f"seed-{seed}" / "grpo" / "metrics.jsonl")
        trained = [row for row in rows if "reward" in row]
        for axis, key in zip(panels, reward_keys):
            steps = [row["step"] for row in trained]
            axis.plot(steps, smooth([row[key] for row in trained], window=10), color=colour, label=f"seed {seed}")
            axis.set_title(f"{key} (mean of 10 steps)", fontsize=9)
        evaluated = [row for row in rows if "eval/strict_accuracy" in row]
        for axis, key in zip(panels[len(reward_keys) :], eval_keys):
            axis.plot([row["step"] for row in evaluated], [row[key] for row in evaluated], "o-", color=colour)
            axis.set_title(f"{key}, greedy on the test questions", fontsize=9)
    panels[len(reward_keys)].axhline(
        base["lenient_accuracy"]["value"], color="black", linestyle="--", label="base, lenient (goal)"
    )
    panels[len(reward_keys)].legend(fontsize=8)
    panels[0].legend(fontsize=8)
    for axis in panels:
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = study_dir / "curves.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def results_table(studies: dict[str, dict]) -> str:
    """Markdown: one row per (study, seed) and one for each study's base model."""
    lines = [
        "| study | changed | model | strict accuracy | lenient accuracy | strict format | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = next(iter(studies.values()))["settings"]
    for name, study in studies.items():
        changed = {
            key: value
            for key, value in study["settings"].items()
            if key not in ("output_dir", "compare") and value != reference.get(key)
        }
        changed_text = ", ".join(f"{key}={value}" for key, value in changed.items()) or "—"
        base = study["base"]
        lines.append(
            f"| {name} | {changed_text} | base ({study['settings']['base_max_tokens']} tokens) | "
            + " | ".join(percent(base[metric]) for metric in ACCURACIES)
            + " | |"
        )
        for seed, final in study["seeds"].items():
            lines.append(
                f"| {name} | {changed_text} | seed {seed} after GRPO | "
                + " | ".join(percent(final[metric]) for metric in ACCURACIES)
                + f" | {'met' if goal_met(final, base) else 'missed'} |"
            )
    return "\n".join(lines) + "\n"


# ---- the study ----------------------------------------------------------------------------------


def run_study(study: StudySettings) -> Path:
    from trainer.evaluate import run_eval
    from trainer.sft import run_sft
    from trainer.train import train

    study_dir = Path(study.output_dir or Path("runs") / f"study-{datetime.now():%Y%m%d-%H%M%S}")
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "settings.json").write_text(json.dumps(asdict(study), indent=2) + "\n")
    server = LocalServer([], study_dir / "server.log")
    print(f"study {study_dir}: server {server.url} (log {server.log_path})", flush=True)
    with server:
        print(f"base model, {study.base_max_tokens} tokens, {study.questions} questions", flush=True)
        run_eval(eval_settings(study, server.url, study_dir / "base", adapter=None))
        for seed in study.seeds:
            seed_dir = study_dir / f"seed-{seed}"
            print(f"seed {seed}: warm-up ({study.sft_steps} steps), GRPO ({study.grpo_steps} steps)", flush=True)
            run_sft(warmup_settings(study, seed_dir, seed))
            train(grpo_settings(study, seed_dir, seed, server.url))
            run_eval(eval_settings(study, server.url, seed_dir / "eval", adapter=str(seed_dir / "grpo" / "final")))
    print(write_report(study_dir, study))
    return study_dir


def write_report(study_dir: Path, study: StudySettings) -> str:
    """study.json, curves.png and results.md from the study's folders; returns the table."""
    base = final_metrics(study_dir / "base")
    seeds = {str(seed): final_metrics(study_dir / f"seed-{seed}" / "eval") for seed in study.seeds}
    result = {"settings": asdict(study), "base": base, "seeds": seeds}
    (study_dir / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    curves_chart(study_dir, study.seeds, base)
    table = results_table({study_dir.name: result})
    (study_dir / "results.md").write_text(table + "\nFailure kinds of the final answers:\n\n" + kinds_table(result))
    return table


def kinds_table(result: dict) -> str:
    lines = ["| model | " + " | ".join(FAILURE_KINDS) + " |", "|---" * (len(FAILURE_KINDS) + 1) + "|"]
    models = {"base": result["base"], **{f"seed {seed}": final for seed, final in result["seeds"].items()}}
    for name, final in models.items():
        lines.append(f"| {name} | " + " | ".join(str(final["failure_kinds"][kind]) for kind in FAILURE_KINDS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    study = parse_settings(StudySettings, argv, prog="grpo-math study", description=__doc__)
    if study.compare:
        studies = {Path(folder).name: json.loads((Path(folder) / "study.json").read_text()) for folder in study.compare}
        print(results_table(studies))
        return 0
    if study.quick:
        study = replace(study, **QUICK)
    study_dir = run_study(study)
    print(f"study: {study_dir} (study.json, results.md, curves.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
