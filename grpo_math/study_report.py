"""What ``grpo-math study`` reports: the failure kind of every final answer, each model's final
metrics with 95 % intervals, whether each goal was met, the tables of ``results.md`` and the curves
of ``curves.png``.

Two goals, one per question a study asks:

- *does GRPO beat the base model?* (GSM8K): strict accuracy after GRPO above the base model's
  lenient accuracy, the intervals apart (``goal_met``);
- *does GRPO teach correctness?* (a task in the model's reach, ``learning_verdicts``): the sampled
  completions' strict accuracy higher over the last 10 steps than the first 10; held-out strict
  accuracy after GRPO at least 10 points above the SFT adapter's, the intervals apart; beside it
  the control (SFT for as many more steps as GRPO took) and, on another dataset, GRPO no worse
  than SFT (its interval reaches SFT's value).
"""

import json
from collections import Counter
from pathlib import Path

from trainer.evaluation import percent

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


def failure_kinds(completions_path: Path, model: str) -> dict[str, int]:
    rows = [json.loads(line) for line in completions_path.read_text().splitlines()]
    counts = Counter(failure_kind(row) for row in rows if row["model"] == model)
    return {kind: counts.get(kind, 0) for kind in FAILURE_KINDS}


def final_metrics(eval_dir: Path, model: str | None = None) -> dict:
    """The rates (value, ci95) of one model of an evaluation folder (its only one by default), and
    its failure kinds."""
    models = json.loads((eval_dir / "summary.json").read_text())["models"]
    model = model if model is not None else next(iter(models))
    summary = models[model]
    return {
        **{name: summary[name] for name in ACCURACIES},
        "truncation_rate": summary["truncation_rate"],
        "completion_length_mean": summary["completion_length_mean"],
        "failure_kinds": failure_kinds(eval_dir / "completions.jsonl", model),
    }


def goal_met(seed_final: dict, base: dict) -> bool:
    """Strict accuracy after GRPO above the base's lenient accuracy, the intervals apart.

    >>> goal_met({"strict_accuracy": {"ci95": [0.2, 0.3]}}, {"lenient_accuracy": {"ci95": [0.1, 0.19]}})
    True
    """
    return seed_final["strict_accuracy"]["ci95"][0] > base["lenient_accuracy"]["ci95"][1]


def read_rows(metrics_path: Path) -> list[dict]:
    return [json.loads(line) for line in metrics_path.read_text().splitlines()]


def curves_chart(study_dir: Path, seeds: tuple[int, ...], base: dict, references: dict | None = None) -> Path:
    """Each reward and the sampled completions' strict accuracy (smoothed over 10 steps), and the
    test accuracies by step; one line per seed. ``references``: per seed, the final metrics of the
    models GRPO is judged against (``{"SFT": ..., "control": ...}``), drawn as levels on the test
    panels; rates are drawn from 0 to 1, so that a dip of a point reads as one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer import metrics as names
    from trainer.report import smooth

    eval_keys = tuple(names.eval_key(name) for name in ACCURACIES)
    first_rows = read_rows(study_dir / f"seed-{seeds[0]}" / "grpo" / "metrics.jsonl")
    reward_keys = (names.REWARD, *dict.fromkeys(key for row in first_rows for key in row if names.is_reward_mean(key)))
    sampled_keys = (*reward_keys, names.STRICT_ACCURACY)
    figure, axes = plt.subplots(3, 3, figsize=(15, 11))
    panels = list(axes.flat)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, seed in zip(colours, seeds):
        rows = read_rows(study_dir / f"seed-{seed}" / "grpo" / "metrics.jsonl")
        trained = [row for row in rows if names.REWARD in row]
        for axis, key in zip(panels, sampled_keys):
            present = [row for row in trained if key in row]
            values = smooth([row[key] for row in present], window=10)
            axis.plot([row[names.STEP] for row in present], values, color=colour, label=f"seed {seed}")
            axis.set_title(f"{key} (mean of 10 steps)", fontsize=9)
        evaluated = [row for row in rows if eval_keys[0] in row]
        levels = (references or {}).get(str(seed), {})
        for axis, key, metric in zip(panels[len(sampled_keys) :], eval_keys, ACCURACIES):
            axis.plot([row[names.STEP] for row in evaluated], [row[key] for row in evaluated], "o-", color=colour)
            for (label, final), style in zip(levels.items(), ("--", ":")):
                axis.axhline(final[metric]["value"], color=colour, linestyle=style, linewidth=1,
                             label=f"{label}, seed {seed}")  # fmt: skip
            axis.set_title(f"{key}, greedy on the test questions", fontsize=9)
            axis.set_ylim(0, 1)
    panels[len(sampled_keys)].axhline(
        base["lenient_accuracy"]["value"], color="black", linestyle="--", label="base, lenient"
    )
    panels[len(sampled_keys)].legend(fontsize=7)
    panels[0].legend(fontsize=8)
    panels[sampled_keys.index(names.STRICT_ACCURACY)].set_ylim(0, 1)
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
            + " | ".join(percent(base[metric], " %") for metric in ACCURACIES)
            + " | |"
        )
        for seed, final in study["seeds"].items():
            lines.append(
                f"| {name} | {changed_text} | seed {seed} after GRPO | "
                + " | ".join(percent(final[metric], " %") for metric in ACCURACIES)
                + f" | {'met' if goal_met(final, base) else 'missed'} |"
            )
        for seed, reason in study.get("failed", {}).items():
            lines.append(f"| {name} | {changed_text} | seed {seed} | failed: {reason[:80]} | | | missed |")
    return "\n".join(lines) + "\n"


def kinds_table(result: dict) -> str:
    lines = ["| model | " + " | ".join(FAILURE_KINDS) + " |", "|---" * (len(FAILURE_KINDS) + 1) + "|"]
    models = {"base": result["base"], **{f"seed {seed}": final for seed, final in result["seeds"].items()}}
    for name, final in models.items():
        lines.append(f"| {name} | " + " | ".join(str(final["failure_kinds"][kind]) for kind in FAILURE_KINDS) + " |")
    return "\n".join(lines) + "\n"


def sampled_accuracy(metrics_path: Path, window: int = 10) -> dict:
    """The sampled completions' strict accuracy over the first and the last ``window`` GRPO steps
    (a third of the run each when it is shorter than 3 windows).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "metrics.jsonl"
    ...     _ = path.write_text("".join(json.dumps({"step": s, "strict_accuracy": s / 30}) + "\\n" for s in range(30)))
    ...     rise = sampled_accuracy(path)
    >>> round(rise["first"], 3), round(rise["last"], 3), rise["window"]
    (0.15, 0.817, 10)
    """
    values = [row["strict_accuracy"] for row in read_rows(metrics_path) if "strict_accuracy" in row]
    window = min(window, max(1, len(values) // 3))
    return {"first": sum(values[:window]) / window, "last": sum(values[-window:]) / window, "window": window}


def learning_verdicts(result: dict, margin: float = 0.10) -> dict[str, dict[str, bool | None]]:
    """Per seed, the goals of a study that asks whether GRPO teaches correctness (None where the
    study did not measure it).

    >>> final = lambda value, low, high: {"strict_accuracy": {"value": value, "ci95": [low, high]}}
    >>> result = {"seeds": {"1": final(0.5, 0.44, 0.56)}, "sft": {"1": final(0.3, 0.25, 0.35)},
    ...           "sampled_strict_accuracy": {"1": {"first": 0.2, "last": 0.4}}}
    >>> [met for met in learning_verdicts(result)["1"].values()]  # rose, +10 points, control, elsewhere
    [True, True, None, None]
    """
    verdicts = {}
    for seed, grpo in result["seeds"].items():
        grpo_accuracy = grpo["strict_accuracy"]
        sft = result.get("sft", {}).get(seed, {}).get("strict_accuracy")
        control = result.get("control", {}).get(seed, {}).get("strict_accuracy")
        transfer = result.get("transfer", {}).get(seed)
        sampled = result.get("sampled_strict_accuracy", {}).get(seed)
        verdicts[seed] = {
            "sampled accuracy rose": None if sampled is None else sampled["last"] > sampled["first"],
            "GRPO ≥ SFT + 10 points, apart": None
            if sft is None
            else grpo_accuracy["value"] >= sft["value"] + margin and grpo_accuracy["ci95"][0] > sft["ci95"][1],
            "GRPO above the control": None if control is None else grpo_accuracy["ci95"][0] > control["ci95"][1],
            "no worse than SFT elsewhere": None
            if transfer is None
            else transfer["grpo"]["strict_accuracy"]["ci95"][1] >= transfer["sft"]["strict_accuracy"]["value"],
        }
    return verdicts


def learning_table(result: dict) -> str:
    """Markdown: per seed, held-out strict accuracy of SFT, GRPO and the control, the sampled
    accuracy's first and last steps, the other dataset's accuracies, and each goal."""
    lines = [
        "| seed | SFT | GRPO | control (SFT only) | sampled, first → last steps | elsewhere: SFT → GRPO | goals |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = learning_verdicts(result)
    for seed, grpo in result["seeds"].items():
        sft, control = result.get("sft", {}).get(seed), result.get("control", {}).get(seed)
        transfer, sampled = result.get("transfer", {}).get(seed), result.get("sampled_strict_accuracy", {}).get(seed)
        cells = [
            percent(sft["strict_accuracy"], " %") if sft else "—",
            percent(grpo["strict_accuracy"], " %"),
            percent(control["strict_accuracy"], " %") if control else "—",
            f"{100 * sampled['first']:.1f} % → {100 * sampled['last']:.1f} %" if sampled else "—",
            f"{percent(transfer['sft']['strict_accuracy'], ' %')} → "
            f"{percent(transfer['grpo']['strict_accuracy'], ' %')}"
            if transfer
            else "—",
            "; ".join(
                f"{goal}: {'met' if met else 'missed'}" for goal, met in verdicts[seed].items() if met is not None
            ),
        ]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
