"""Draw the performance page's two bar charts from the page's own tables, so that a figure lives in
one place (docs/performance.md) and the picture cannot drift from it.

    .venv/bin/python scripts/performance_charts.py   # writes docs/step_split.png, docs/openmp_spin.png

- ``docs/step_split.png``: where a 256-token step's seconds go, the recipe against grpo-math in
  merge mode: the row of the step-time table marked by ``STEP_ROW`` (the settings the project
  ships), each phase a bar at the middle of its measured range, the range written on it.
- ``docs/openmp_spin.png``: the OpenMP table, two servers on the same 2 cores, seconds a round
  with both at once beside one server alone, per libgomp setting, on a log scale.

A chart made by a script, like docs/architecture.png, changes with a commit like the text it shows.
"""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "performance.md"
STEP_ROW = "the same, and OpenMP threads spinning 3,000 turns"  # the step-time table's shipped settings
OPENMP_HEADER = "| libgomp setting (both servers) |"
RANGE = r"(\d+(?:\.\d+)?)(?:–(\d+(?:\.\d+)?))?"  # "4.7–5.3" or "0.2": a measured range or one figure


def measured_range(text: str, phase: str) -> tuple[float, float]:
    """The first "<phase> A–B s" (or "<phase> A s") in ``text``, as (min, max).

    >>> measured_range("generation 33–38 s, update 41–42 s", "update")
    (41.0, 42.0)
    >>> measured_range("push 0.2 s", "push")
    (0.2, 0.2)
    """
    match = re.search(rf"{phase}\s*{RANGE} s", text)
    if match is None:
        raise ValueError(f"{PAGE.name}: no '{phase} <seconds> s' in {text!r}")
    low = float(match.group(1))
    return low, float(match.group(2) or low)


def table_cells(line: str) -> list[str]:
    """The cells of one markdown table row.

    >>> table_cells("| a | b **c** |")
    ['a', 'b c']
    """
    return [cell.strip().replace("**", "") for cell in line.strip().strip("|").split("|")]


def step_split(page: str) -> dict[str, dict[str, tuple[float, float]]]:
    """side → phase → (min, max) seconds, from the step-time table's ``STEP_ROW``."""
    row = next((line for line in page.splitlines() if line.startswith(f"| {STEP_ROW}")), None)
    if row is None:
        raise ValueError(f"{PAGE.name}: no step-time row starting {STEP_ROW!r}")
    _, recipe, ours, *_ = table_cells(row)
    return {
        "the recipe (TRL GRPOTrainer)": {phase: measured_range(recipe, phase) for phase in ("generation", "update")},
        "grpo-math, merge mode": {phase: measured_range(ours, phase) for phase in ("sampling", "update", "push")},
    }


def openmp_rows(page: str) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    """(setting, one server alone (min, max), both at once (min, max)) per row of the OpenMP table."""
    lines = page.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(OPENMP_HEADER)), None)
    if start is None:
        raise ValueError(f"{PAGE.name}: no table headed {OPENMP_HEADER!r}")
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip().startswith("|"):
            break
        setting, alone, both = table_cells(line)
        rows.append((setting.replace("`", ""), measured_range(alone + " s", ""), measured_range(both + " s", "")))
    return rows


def middle_and_spread(low: float, high: float) -> tuple[float, list[float]]:
    middle = (low + high) / 2
    return middle, [middle - low, high - middle]


def draw_step_split(split: dict[str, dict[str, tuple[float, float]]], output: Path) -> None:
    """Each side's phases stacked, a bar at the middle of each measured range, the range written on it."""
    colours = {"generation": "#c96b5b", "sampling": "#c96b5b", "update": "#5b86c9", "push": "#6bab5b"}
    figure, axis = plt.subplots(figsize=(8, 2.8))
    for row, phases in enumerate(split.values()):
        left, narrow = 0.0, []
        for phase, (low, high) in phases.items():
            middle, _ = middle_and_spread(low, high)
            axis.barh(row, middle, left=left, color=colours[phase], edgecolor="white")
            label = f"{phase} {low:g}–{high:g} s" if high > low else f"{phase} {low:g} s"
            if middle > 20:  # wide enough to hold its label
                axis.text(left + middle / 2, row, label, ha="center", va="center", fontsize=8)
            else:
                narrow.append(label)
            left += middle
        if narrow:  # the labels of the narrow bars, in order, right of the row
            axis.text(left + 1, row, " · ".join(narrow), va="center", fontsize=8)
    axis.set_yticks(range(len(split)), list(split))
    axis.set_xlabel("seconds a step (each bar: the middle of its measured range)")
    axis.set_title("A GRPO step at 256 tokens, 2 questions × 8 completions (docs/performance.md)", fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


def draw_openmp(rows, output: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 3.4))
    width = 0.4
    for offset, column, label, colour in ((-width / 2, 1, "one server alone", "#9bb7d9"),
                                          (width / 2, 2, "both servers at once", "#c96b5b")):  # fmt: skip
        middles, spreads = zip(*(middle_and_spread(*row[column]) for row in rows), strict=True)
        positions = [index + offset for index in range(len(rows))]
        axis.bar(positions, middles, width, yerr=list(zip(*spreads, strict=True)), label=label, color=colour,
                 capsize=3)  # fmt: skip
    axis.set_yscale("log")
    labels = [row[0].replace("GOMP_SPINCOUNT=", "spin count ").replace(" (", "\n(") for row in rows]
    axis.set_xticks(range(len(rows)), labels, fontsize=7.5, rotation=20)
    axis.set_ylabel("seconds (log scale)")
    axis.set_title("Two servers on the same 2 cores: a request alone, a round with both at once", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main() -> None:
    page = PAGE.read_text()
    draw_step_split(step_split(page), DOCS / "step_split.png")
    draw_openmp(openmp_rows(page), DOCS / "openmp_spin.png")


if __name__ == "__main__":
    main()
