"""The ``async`` scenario of ``grpo-math bench``: asynchronous GRPO (``--max-staleness S``) against
the synchronous loop (S = 0), on this project's server (merge mode) and trainer.

- throughput: completions trained per minute with S = 1 and S = 2 ÷ S = 0, the same settings, runs
  in turns; with the server and the trainer sharing every core, and with the server on the first
  core and the trainer on the others (``taskset``), to show what sharing costs;
- learning: the reward and the strict-format rate by step for S = 0 and S = 1, over seeds,
  overlaid in one plot (they should agree within the seed-to-seed spread).
"""

import os
import statistics

from benchmarks.measure import SHARED_SERVER, Figure, Interleaved, ratio_figure
from benchmarks.training import train_metrics
from grpo_math import recipe
from trainer import metrics as names


def trained_run(context, url: str, staleness: int, steps: int, seed: int, cores: list[int] | None) -> list[dict]:
    """``grpo-math train --max-staleness S`` with the CPU recipe for ``steps`` steps; its metrics rows."""
    settings = recipe.grpo_settings(
        url,
        context.output_dir,  # replaced by a temporary run folder
        max_steps=steps,
        max_staleness=staleness,
        seed=seed,
        max_completion_length=context.async_length,
        init_adapter=context.sft_adapter(),
    )
    return train_metrics(context, settings, "async.log", cores) or []


def mean_of(rows: list[dict], key: str) -> float | None:
    """The mean of ``key`` over the rows that have it (None if none has: a run whose every group
    had equal rewards trained on no sequence, so it measured no gap).

    >>> mean_of([{"gap": 0.1}, {"gap": 0.3}, {}], "gap"), mean_of([{}], "gap")
    (0.2, None)
    """
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.mean(values) if values else None


def rounded(values: list[float]) -> list[float]:
    return [round(value, 3) for value in values]


def completions_per_minute(rows: list[dict], group: int) -> float:
    measured = rows[1:]  # after the untimed first step
    return 60 * len(measured) * group / sum(row[names.STEP_SECONDS] for row in measured)


def async_training(context) -> list[Figure]:
    cores = sorted(os.sched_getaffinity(0))
    figures, raw = [], {"throughput": {}, "curves": {}}
    group = 2 * 8  # prompts × completions per step, the trainer's defaults
    placements = {"shared": (None, None)}
    if len(cores) >= 2 and not context.quick:
        placements["split"] = (str(cores[0]), cores[1:])
    for placement, (server_cores, trainer_cores) in placements.items():
        if server_cores:  # the lasting servers step aside: they would take the cores this placement splits
            context.end_scenario(keep_lasting=False)
        url = context.server(*SHARED_SERVER, *(["--cpu-threads", server_cores] if server_cores else [])).url
        rates = Interleaved().run(
            {
                f"S={s}": (
                    lambda s=s, cores=trainer_cores, url=url: completions_per_minute(
                        trained_run(context, url, s, 1 + context.measured_steps, 0, cores), group
                    )
                )
                for s in context.async_staleness
            },
            context.repetitions,
        )
        context.end_scenario()  # a split placement's server goes; the shared one stays
        raw["throughput"][placement] = rates
        note = (
            "server and trainer on every core"
            if placement == "shared"
            else f"server on core {server_cores}, trainer on {trainer_cores}"
        )
        for s in context.async_staleness[1:]:
            figures.append(
                ratio_figure(
                    f"async {placement}: completions trained/min, S={s} ÷ S=0",
                    rates[f"S={s}"],
                    rates["S=0"],
                    ">= 1.6",
                    note=f"{note}; the goal is a GPU box's",
                )
            )
        if placement == "split":
            figures.append(
                ratio_figure(
                    "sync: split cores ÷ shared cores (completions/min, S=0)",
                    rates["S=0"],
                    raw["throughput"]["shared"]["S=0"],
                    None,
                )
            )

    url = context.server(*SHARED_SERVER).url
    for seed in context.async_seeds:
        for s in (0, 1):
            rows = trained_run(context, url, s, context.async_curve_steps, seed, None)
            raw["curves"][f"S={s} seed={seed}"] = [
                {
                    key: row.get(key)
                    for key in (
                        names.STEP,
                        names.REWARD,
                        names.FORMAT_EXACT_RATE,
                        names.STALENESS,
                        names.SAMPLER_GAP,
                        names.IMPORTANCE_DROPPED_FRACTION,
                        names.STEP_SECONDS,
                    )
                }
                for row in rows
            ]
    context.raw["async"] = raw
    curves_chart(context, raw["curves"])
    for key, what in (
        (names.SAMPLER_GAP, "sampler–trainer gap (mean |Δ logprob|)"),
        (names.IMPORTANCE_DROPPED_FRACTION, "sequences the importance cap drops"),
    ):
        by_seed = {
            s: [mean_of(raw["curves"][f"S={s} seed={seed}"], key) for seed in context.async_seeds] for s in (0, 1)
        }
        if None in by_seed[0] + by_seed[1]:
            continue  # some run trained on no sequence (short --quick runs): nothing to compare
        figures.append(
            ratio_figure(
                f"async: {what}, S=1 ÷ S=0, by seed",
                [value + 1e-3 for value in by_seed[1]],
                [value + 1e-3 for value in by_seed[0]],
                None,
                note=f"means per seed: S=0 {rounded(by_seed[0])}, S=1 {rounded(by_seed[1])} (+1e-3 in the ratio)",
            )
        )
    last = max(1, context.async_curve_steps // 3)
    finals = {
        s: [
            statistics.mean(row[names.REWARD] for row in raw["curves"][f"S={s} seed={seed}"][-last:])
            for seed in context.async_seeds
        ]
        for s in (0, 1)
    }
    note = f"mean reward of the last {last} steps per seed: S=0 {rounded(finals[0])}, S=1 {rounded(finals[1])}"
    figures.append(
        ratio_figure(
            "async: final reward S=1 ÷ S=0, by seed",
            [v + 10 for v in finals[1]],
            [v + 10 for v in finals[0]],
            None,
            note=note + " (ratios of reward + 10, to stay positive)",
        )
    )
    return figures


def curves_chart(context, curves: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, rows in curves.items():
        colour = "#4878a8" if name.startswith("S=0") else "#c04040"
        for axis, key in zip(axes, (names.REWARD, names.FORMAT_EXACT_RATE)):
            axis.plot([r[names.STEP] for r in rows], [r[key] for r in rows], color=colour, alpha=0.7, label=name)
    for axis, title in zip(axes, ("reward by step", "strict-format rate by step")):
        axis.set_title(f"{title} (blue S=0, red S=1)")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(context.output_dir / "async.png", dpi=100)
    plt.close(figure)
