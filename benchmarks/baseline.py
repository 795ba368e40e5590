"""The bench's regression guard: a run's figures against committed baselines.

A baseline file (``benchmarks/baselines/cpu.json``) holds, per figure, the median, min and max
of the runs it was made from, the machine they ran on and a tolerance. A guarded figure fails
when it moved past its baseline's spread, widened by the tolerance, on the worse side (below for
``>=`` goals, above for ``<=``); a move to the better side is reported, as is every figure without
a goal, every unguarded figure and every figure the baseline lacks. prime-rl's benchmark
regression test (committed baselines, a tolerance per figure) is the model.

A figure is guarded where it has a goal and its runs stayed within ±20 % of their median
(``SPREAD_LIMIT``): then a figure halved or doubled lands outside the accepted range, whereas a
figure whose own runs spread 2-7x could not tell a regression from noise. An unguarded figure
needs more repetitions (or a larger size) per run before it can guard anything.

    grpo-math bench --all --quick --baseline benchmarks/baselines/cpu.json
    grpo-math bench --all --quick --write-baseline benchmarks/baselines/cpu.json  # from this run
    python -m benchmarks.baseline runs/bench-a/bench.json runs/bench-b/bench.json \
        --output benchmarks/baselines/cpu.json                                    # from several runs
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TOLERANCE = 0.25  # relative, beyond the baseline's own min–max
SPREAD_LIMIT = 0.20  # a figure whose runs spread further from their median than this guards nothing


def guarded(median: float, low: float, high: float, goal: str | None) -> bool:
    """Whether a figure with this spread can catch a regression: it has a goal, and its min and max
    are within ``SPREAD_LIMIT`` of its median.

    >>> guarded(1.0, 0.9, 1.15, ">= 0.5"), guarded(1.84, 0.37, 2.78, ">= 0.95"), guarded(1.0, 0.9, 1.1, None)
    (True, False, False)
    """
    return bool(goal) and median > 0 and low >= median * (1 - SPREAD_LIMIT) and high <= median * (1 + SPREAD_LIMIT)


def key(figure: dict) -> str:
    return f"{figure['scenario']}: {figure['name']}"


@dataclass(frozen=True)
class Verdict:
    key: str
    value: float
    low: float | None  # the accepted range (None: no baseline for this figure)
    high: float | None
    status: str  # "ok", "REGRESSED", "better", "moved", "unguarded", "new"

    def line(self) -> str:
        accepted = "" if self.low is None else f"  accepted {self.low:.3f}–{self.high:.3f}"
        return f"{self.status:<9} {self.key[:80]:<80} {self.value:9.3f}{accepted}"


def baseline_from(reports: list[dict], tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """A baseline from one or more bench reports of the same scenarios: per figure the median of
    the runs' values, and the min and max over every run's own min and max.

    >>> run = lambda value, low, high: {"machine": {"cores": 2}, "figures": [
    ...     {"scenario": "s", "name": "x", "value": value, "min": low, "max": high, "goal": ">= 1"}]}
    >>> baseline_from([run(2.0, 1.8, 2.1), run(2.4, 2.2, 2.6), run(2.2, 2.0, 2.3)])["figures"]["s: x"]
    {'median': 2.2, 'min': 1.8, 'max': 2.6, 'goal': '>= 1', 'tolerance': 0.25, 'runs': 3, 'guarded': True}
    """
    figures: dict[str, dict] = {}
    for report in reports:
        for figure in report["figures"]:
            if figure.get("repetitions") == 0:
                continue  # a peer that could not run: nothing measured
            entry = figures.setdefault(key(figure), {"values": [], "min": figure["min"], "max": figure["max"]})
            entry["values"].append(figure["value"])
            entry["min"], entry["max"] = min(entry["min"], figure["min"]), max(entry["max"], figure["max"])
            entry["goal"] = figure.get("goal")
    baseline = {"machine": reports[0]["machine"], "figures": {}}
    for name, entry in figures.items():
        median = sorted(entry["values"])[len(entry["values"]) // 2]
        baseline["figures"][name] = {
            "median": median,
            "min": entry["min"],
            "max": entry["max"],
            "goal": entry["goal"],
            "tolerance": tolerance,
            "runs": len(entry["values"]),
            "guarded": guarded(median, entry["min"], entry["max"], entry["goal"]),
        }
    return baseline


def compare(report: dict, baseline: dict) -> list[Verdict]:
    """One verdict per figure of ``report``.

    >>> entry = lambda low, high, goal, guarded=True: {"min": low, "max": high, "goal": goal, "tolerance": 0.25,
    ...                                                "guarded": guarded}
    >>> baseline = {"figures": {"s: up": entry(2.0, 2.4, ">= 1"), "s: down": entry(0.1, 0.12, "<= 1"),
    ...                         "s: noisy": entry(0.1, 0.7, ">= 1", guarded=False)}}
    >>> report = {"figures": [{"scenario": "s", "name": "up", "value": 1.4},
    ...                       {"scenario": "s", "name": "down", "value": 0.14},
    ...                       {"scenario": "s", "name": "noisy", "value": 0.01},
    ...                       {"scenario": "s", "name": "other", "value": 5.0}]}
    >>> [(verdict.key, verdict.status) for verdict in compare(report, baseline)]
    [('s: up', 'REGRESSED'), ('s: down', 'ok'), ('s: noisy', 'unguarded'), ('s: other', 'new')]
    """
    verdicts = []
    for figure in report["figures"]:
        name, value = key(figure), figure["value"]
        expected = baseline["figures"].get(name)
        if expected is None or figure.get("repetitions") == 0:
            verdicts.append(Verdict(name, value, None, None, "new"))
            continue
        low = expected["min"] * (1 - expected["tolerance"])
        high = expected["max"] * (1 + expected["tolerance"])
        goal = expected.get("goal") or ""
        if low <= value <= high:
            status = "ok"
        elif not expected.get("guarded", True):
            status = "unguarded"  # outside, but its own runs spread too far to call it a regression
        elif goal.startswith(">="):
            status = "REGRESSED" if value < low else "better"
        elif goal.startswith("<="):
            status = "REGRESSED" if value > high else "better"
        else:
            status = "moved"  # no goal: which side is worse is not defined; reported
        verdicts.append(Verdict(name, value, low, high, status))
    return verdicts


def check_against(report: dict, baseline_path: Path) -> bool:
    """Print the verdicts; False where a figure regressed."""
    baseline = json.loads(baseline_path.read_text())
    here, there = report["machine"], baseline["machine"]
    if any(here.get(part) != there.get(part) for part in ("cpu", "cores", "gpu")):
        print(
            f"note: the baseline comes from another machine ({there.get('cpu')}, {there.get('cores')} cores, "
            f"GPU {there.get('gpu')}); ratios travel better than seconds, but read the verdicts with that in mind"
        )
    verdicts = compare(report, baseline)
    print(f"\nagainst {baseline_path}:")
    for verdict in verdicts:
        print(verdict.line())
    return not any(verdict.status == "REGRESSED" for verdict in verdicts)


def write_baseline(reports: list[dict], path: Path, tolerance: float = DEFAULT_TOLERANCE) -> None:
    """``baseline_from(reports)`` written to ``path`` (its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline_from(reports, tolerance), indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline", description="A baseline file from bench reports (bench.json)."
    )
    parser.add_argument("reports", nargs="+", type=Path, help="bench.json files of runs of the same scenarios")
    parser.add_argument("--output", type=Path, required=True, help="the baseline file to write")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="relative, beyond the spread")
    arguments = parser.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in arguments.reports]
    write_baseline(reports, arguments.output, arguments.tolerance)
    print(f"{arguments.output}: {len(reports)} runs")


if __name__ == "__main__":
    main()
