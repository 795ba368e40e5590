"""``grpo-math report RUN_DIR``: the run's curves from ``metrics.jsonl``, as PNGs in ``RUN_DIR/report``.

- ``rewards.png``: total reward and each reward function's mean by step (raw, and smoothed)
- ``format.png``: the sampled completions' strict-format rate and strict accuracy by step
- ``length.png``: completion length (mean, max) and the truncated fraction
- ``timing.png``: seconds per step, by phase
- ``eval.png``: the periodic evaluation's metrics, where the run has them
- ``overview.png``: rewards, strict-format rate and strict accuracy side by side

    grpo-math report runs/NAME
"""

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from shared.settings import Check, check_fields, parse_settings, require, setting  # noqa: E402
from trainer import metrics as names  # noqa: E402

TIME_KEYS = tuple(names.time_key(phase) for phase in names.PHASES)
SAMPLED_RATES = (names.FORMAT_EXACT_RATE, names.STRICT_ACCURACY)


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
    return [row[names.STEP] for row in present], [row[key] for row in present]


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
            label=key.removeprefix("rewards/").removesuffix("/mean").removeprefix("eval/"),
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
        raise ValueError(f"{run_dir / 'metrics.jsonl'} has no rows")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    eval_keys = tuple(sorted({key for row in rows for key in row if key.startswith(names.eval_key(""))}))
    reward_keys = (names.REWARD, *dict.fromkeys(key for row in rows for key in row if names.is_reward_mean(key)))
    figures = {
        "rewards.png": [(reward_keys, "reward by step (thick: mean of the last 5)", True)],
        "format.png": [(SAMPLED_RATES, "sampled completions: strict format, right answer", True)],
        "length.png": [
            ((names.COMPLETION_LENGTH_MEAN, names.COMPLETION_LENGTH_MAX), "completion tokens", False),
            ((names.TRUNCATED_FRACTION,), "truncated fraction", False),
        ],
        "timing.png": [(TIME_KEYS + (names.STEP_SECONDS,), "seconds per step", False)],
        "overview.png": [
            (reward_keys, "reward by step (thick: mean of the last 5)", True),
            (SAMPLED_RATES, "sampled completions: strict format, right answer", True),
        ],
    }
    if eval_keys:
        figures["eval.png"] = [(eval_keys, "periodic evaluation (greedy, test split)", False)]
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
    try:
        paths = render(settings.run_dir)
    except ValueError as error:
        raise SystemExit(f"grpo-math report: error: {error}") from None
    for path in paths:
        print(path)
    return 0
