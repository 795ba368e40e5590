"""``grpo-math study``: does GRPO teach the embedded model the maths, or only the format? Measured
over seeds, on the same test questions, with 95 % intervals.

1. starts ``grpo-math serve`` (merge mode on CPU) and evaluates the base model greedily on the first
   ``--eval-limit`` test questions with ``--base-max-completion-length`` (its answers are not cut off);
2. for each seed, the pipeline of ``grpo_math/pipeline.py``: SFT (the format warm-up, that seed),
   GRPO with the recipe's four rewards, evaluating the adapter greedily on the same questions every
   ``--eval-every`` steps (``eval/*`` rows in the run's metrics.jsonl), and a final evaluation that
   keeps every completion;
3. writes ``study.json`` (the settings, the base model's and each seed's final metrics with Wilson
   intervals, the failure kinds of every final answer), ``curves.png`` (each reward and the test
   accuracies by step, one line per seed, overlaid) and ``results.md`` (the table the docs quote).

A seed whose evaluation finished is kept when the study runs again with the same ``--output-dir``
(so an interrupted study continues with the seeds it lacks); a seed that fails is reported as
failed and the study goes on with the next.

One study is one setting. To find what moves the answer-correctness reward, change one flag per
study (``--num-generations 16``, ``--max-completion-length 512``, ``--learning-rate``,
``--lr-scheduler-type``, ``--temperature``, ``--sft-steps``) and put the studies side by side
with ``--compare``.

The goal: strict accuracy after GRPO above the base model's lenient accuracy (the last number of
its answer, whatever the format), its interval clear of the base's, on every seed.

    grpo-math study                                   # runs/study-<time>/
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

from grpo_math import recipe
from grpo_math.pipeline import Phases, PipelineError, generator_server, run_pipeline
from shared.settings import at_least, check_fields, parse_settings, positive, require, setting, write_config

QUICK = dict(
    seeds=(1,),
    eval_limit=8,
    base_max_completion_length=64,
    sft_steps=4,
    grpo_steps=3,
    eval_every=2,
    max_completion_length=64,
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
    dataset: str = setting("gsm8k", "questions and worked solutions: gsm8k, gsm8k-hub or a JSONL file")
    seeds: tuple[int, ...] = setting((1, 2, 3), "one SFT + GRPO run per seed")
    eval_limit: int = setting(200, "the first N test questions, for every evaluation", check=at_least(1))
    base_max_completion_length: int = setting(
        1024, "most tokens per completion in the base model's evaluation", check=at_least(1)
    )
    sft_steps: int = setting(recipe.SFT_STEPS, "SFT (format warm-up) steps", check=at_least(1))
    grpo_steps: int = setting(150, "GRPO steps per seed", check=at_least(1))
    eval_every: int = setting(25, "evaluate the adapter every N GRPO steps", check=at_least(1))
    num_generations: int = setting(8, "completions per question (G)", check=at_least(2))
    max_completion_length: int = setting(
        recipe.MAX_COMPLETION_LENGTH, "most tokens per completion, GRPO and its evaluations", check=at_least(1)
    )
    learning_rate: float = setting(recipe.GRPO_LEARNING_RATE, "GRPO learning rate", check=positive())
    lr_scheduler_type: Literal["linear", "constant"] = setting(
        recipe.GRPO_LR_SCHEDULER_TYPE, "GRPO learning-rate schedule"
    )
    temperature: float = setting(1.0, "GRPO sampling temperature", check=positive())
    max_staleness: int = setting(0, "GRPO --max-staleness (0 = synchronous)", check=at_least(0))
    quick: bool = setting(False, f"a few steps on one seed and 8 questions: {QUICK}")
    compare: tuple[str, ...] = setting((), "only put these finished study folders side by side in one table")

    def __post_init__(self) -> None:
        check_fields(self)
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must differ from one another")
        for folder in self.compare:
            require((Path(folder) / "study.json").is_file(), "compare", f"{folder}: no study.json (not a study)")


def seed_phases(study: StudySettings, seed: int) -> Phases:
    """The pipeline of one seed: SFT, GRPO with periodic evaluation, the final evaluation."""
    return Phases(
        sft=dict(max_steps=study.sft_steps, seed=seed, report_to="none", dataset=study.dataset),
        grpo=dict(
            seed=seed,
            dataset=study.dataset,
            max_steps=study.grpo_steps,
            num_generations=study.num_generations,
            max_completion_length=study.max_completion_length,
            temperature=study.temperature,
            learning_rate=study.learning_rate,
            lr_scheduler_type=study.lr_scheduler_type,
            max_staleness=study.max_staleness,
            eval_every=study.eval_every,
            eval_limit=study.eval_limit,
            save_every=25,
            report_to="none",
        ),
        evaluation=dict(
            eval_limit=study.eval_limit, max_completion_length=study.max_completion_length, dataset=study.dataset
        ),
    )


def base_phases(study: StudySettings, study_dir: Path) -> Phases:
    """The base model alone, at its own (longer) completion length, into ``study_dir/base``."""
    evaluation = dict(
        output_dir=str(study_dir / "base"),
        base=True,
        adapter=(),
        eval_limit=study.eval_limit,
        max_completion_length=study.base_max_completion_length,
        dataset=study.dataset,
    )
    return Phases(sft=None, grpo=None, evaluation=evaluation)


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

    from trainer import metrics as names
    from trainer.report import REWARD_KEYS, smooth

    eval_keys = tuple(names.eval_key(name) for name in ACCURACIES)
    figure, axes = plt.subplots(2, 4, figsize=(18, 8))
    panels = list(axes.flat)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, seed in zip(colours, seeds):
        rows = read_rows(study_dir / f"seed-{seed}" / "grpo" / "metrics.jsonl")
        trained = [row for row in rows if names.REWARD in row]
        for axis, key in zip(panels, REWARD_KEYS):
            steps = [row[names.STEP] for row in trained]
            axis.plot(steps, smooth([row[key] for row in trained], window=10), color=colour, label=f"seed {seed}")
            axis.set_title(f"{key} (mean of 10 steps)", fontsize=9)
        evaluated = [row for row in rows if eval_keys[0] in row]
        for axis, key in zip(panels[len(REWARD_KEYS) :], eval_keys):
            axis.plot([row[names.STEP] for row in evaluated], [row[key] for row in evaluated], "o-", color=colour)
            axis.set_title(f"{key}, greedy on the test questions", fontsize=9)
    panels[len(REWARD_KEYS)].axhline(
        base["lenient_accuracy"]["value"], color="black", linestyle="--", label="base, lenient (goal)"
    )
    panels[len(REWARD_KEYS)].legend(fontsize=8)
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
            f"| {name} | {changed_text} | base ({study['settings']['base_max_completion_length']} tokens) | "
            + " | ".join(percent(base[metric]) for metric in ACCURACIES)
            + " | |"
        )
        for seed, final in study["seeds"].items():
            lines.append(
                f"| {name} | {changed_text} | seed {seed} after GRPO | "
                + " | ".join(percent(final[metric]) for metric in ACCURACIES)
                + f" | {'met' if goal_met(final, base) else 'missed'} |"
            )
        for seed, reason in study.get("failed", {}).items():
            lines.append(f"| {name} | {changed_text} | seed {seed} | failed: {reason[:80]} | | | missed |")
    return "\n".join(lines) + "\n"


# ---- the study ----------------------------------------------------------------------------------


def finished(eval_dir: Path) -> bool:
    return (eval_dir / "summary.json").is_file()


def run_study(study: StudySettings) -> Path:
    study_dir = Path(study.output_dir or Path("runs") / f"study-{datetime.now():%Y%m%d-%H%M%S}")
    write_config(study, study_dir / "settings.json")
    failed: dict[str, str] = {}
    with generator_server(study_dir) as server:
        print(f"study {study_dir}: server {server.url} (log {server.log_path})", flush=True)
        if not finished(study_dir / "base"):
            run_pipeline(study_dir, server.url, base_phases(study, study_dir))
        for seed in study.seeds:
            seed_dir = study_dir / f"seed-{seed}"
            if finished(seed_dir / "eval"):
                print(f"seed {seed}: finished before, kept", flush=True)
                continue
            print(f"seed {seed}: SFT ({study.sft_steps} steps), GRPO ({study.grpo_steps} steps)", flush=True)
            try:
                run_pipeline(seed_dir, server.url, seed_phases(study, seed))
            except PipelineError as error:
                failed[str(seed)] = str(error)
                print(f"seed {seed} failed, going on with the next: {error}", flush=True)
    print(write_report(study_dir, study, failed))
    return study_dir


def write_report(study_dir: Path, study: StudySettings, failed: dict[str, str]) -> str:
    """study.json, curves.png and results.md from the study's folders; returns the table.
    ``failed``: seed → why it failed, for seeds that have no final evaluation."""
    base = final_metrics(study_dir / "base")
    done = [seed for seed in study.seeds if finished(study_dir / f"seed-{seed}" / "eval")]
    seeds = {str(seed): final_metrics(study_dir / f"seed-{seed}" / "eval") for seed in done}
    result = {"settings": asdict(study), "base": base, "seeds": seeds, "failed": failed}
    (study_dir / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    curves_chart(study_dir, tuple(done), base)
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
