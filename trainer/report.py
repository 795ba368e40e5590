"""``grpo-math report RUN_DIR``: the run's curves from ``metrics.jsonl``, as PNGs in ``RUN_DIR/report``.

- ``rewards.png``: total reward and each reward function's mean by step (raw, and smoothed)
- ``format.png``: strict-format rate by step
- ``length.png``: completion length (mean, max) and the truncated fraction
- ``timing.png``: seconds per step, by phase
- ``eval.png``: the periodic evaluation's metrics, where the run has them
- ``overview.png``: rewards and strict-format rate side by side (the README's figure)

    grpo-math report runs/NAME
"""

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from shared.settings import Check, check_fields, parse_settings, require, setting  # noqa: E402

REWARD_KEYS = (
    "reward",
    "rewards/match_format_exactly",
    "rewards/match_format_approximately",
    "rewards/check_answer_correctness",
    "rewards/check_numbers_extraction",
)
TIME_KEYS = ("time/sample_s", "time/score_s", "time/train_s", "time/optimizer_s", "time/push_s")


def smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing mean over up to ``window`` values.

    >>> smooth([1.0, 2.0, 3.0, 4.0], window=2)
    [1.0, 1.5, 2.5, 3.5]
    """
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    present = [row for row in rows if key in row]
    return [row["step"] for row in present], [row[key] for row in present]


def plot_lines(axis, rows: list[dict], keys: tuple[str, ...], title: str, smoothed: bool = False) -> None:
    for key in keys:
        steps, values = series(rows, key)
        if not steps:
            continue
        (line,) = axis.plot(
            steps,
            values,
            marker="o",
            markersize=3,
            alpha=0.45 if smoothed else 1.0,
            label=key.removeprefix("rewards/").removeprefix("eval/"),
        )
        if smoothed:
            axis.plot(steps, smooth(values), color=line.get_color(), linewidth=2)
    axis.set_title(title)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def render(run_dir: Path) -> list[Path]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"grpo-math report: error: {run_dir / 'metrics.jsonl'} has no rows")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    eval_keys = tuple(sorted({key for row in rows for key in row if key.startswith("eval/")}))
    figures = {
        "rewards.png": [(REWARD_KEYS, "reward by step (thick: mean of the last 5)", True)],
        "format.png": [(("format_exact_rate",), "strict-format rate", True)],
        "length.png": [
            (("completion_length_mean", "completion_length_max"), "completion tokens", False),
            (("truncated_fraction",), "truncated fraction", False),
        ],
        "timing.png": [(TIME_KEYS + ("time/step_s",), "seconds per step", False)],
        "overview.png": [
            (REWARD_KEYS, "reward by step (thick: mean of the last 5)", True),
            (("format_exact_rate",), "strict-format rate", True),
        ],
    }
    if eval_keys:
        figures["eval.png"] = [(eval_keys, "evaluation on GSM8K test", False)]
    written = []
    for name, panels in figures.items():
        figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
        for axis, (keys, title, smoothed) in zip(axes[0], panels):
            plot_lines(axis, rows, keys, title, smoothed)
        figure.suptitle(run_dir.name, fontsize=9)
        figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        written.append(out / name)
    return written


@dataclass(frozen=True)
class ReportSettings:
    run_dir: Path = setting(
        None,
        "a run folder holding metrics.jsonl",
        positional=True,
        check=Check(lambda path: (path / "metrics.jsonl").is_file(), "holds no metrics.jsonl"),
    )

    def __post_init__(self) -> None:
        require(self.run_dir is not None, "run_dir", "is required: the run folder to render")
        check_fields(self)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(ReportSettings, argv, prog="grpo-math report", description=__doc__)
    for path in render(settings.run_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
