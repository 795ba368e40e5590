"""``grpo-math bench``: throughput and memory against the peers, every figure a ratio of two
things measured side by side in this run (interleaved repetitions; median, min and max).

Scenarios (``--scenario NAME ...`` or ``--all``; ``--quick`` sizes them for CI):

  server-overhead   /v1/generate tok/s ÷ vLLM's offline LLM.generate (goal ≥ 0.95)
  step-time         GRPO step time of each peer ÷ ours, with the sample/score/train/push split,
                    at each --max-completion-length (goals: recipe ≥ 3, ≥ 5 from 256 tokens, ≥ 10 from
                    1024; TRL colocate ≥ 2, TRL async ≥ 1.5)
  adapter-sync      bytes pushed per step ÷ a full-weight sync (≤ 1/100); push + load ÷ step (≤ 2 %)
  trainer-memory    peak memory of the 4-bit LoRA trainer ÷ a bf16 base (≤ 0.45)
  update            the update on one server-sampled batch: dequantised once, then also the LM head
                    in bf16, then also its gradient in its forward, then also each group's prompt run
                    once, ÷ the update before them (≤ 0.6); each one's sampler–trainer gap; model
                    FLOP/s ÷ this machine's matmul FLOP/s
  decode-roofline   single-sequence decode tok/s ÷ the memory-bandwidth bound (≥ 0.5)
  scaling           tok/s as n and the prompts per request grow
  lora-overhead     tok/s through an adapter ÷ the base model, lora vs merge mode (merge ≥ 0.95)
  pool              two servers behind one trainer ÷ one server, sampling tok/s
  async             completions trained per minute with --max-staleness 1 and 2 ÷ 0 (goal ≥ 1.6 on a
                    GPU box), cores shared and split; reward and format curves of S=0 and S=1 by seed
  time-to-accuracy  held-out accuracy per step and per training minute of each peer from one SFT
                    adapter per seed, on the same questions: ours − recipe at the last step (goal
                    ≥ −3 points) and the recipe's training time to SFT + 10 points ÷ ours (goal ≥ 5);
                    hours, so not in --all, and resumable with the same --output-dir
                    (benchmarks/time_to_accuracy.py)

Writes ``bench.json`` ({"machine", "figures", "raw"}), one PNG per scenario and prints a table.
Runs from a checkout (the peers' runners and a test helper live beside it). The same command runs
on a GPU (Qwen2.5-3B-Instruct there, by --model auto).

    grpo-math bench --all --quick
    grpo-math bench --all --quick --baseline benchmarks/baselines/cpu.json   # the regression guard
    grpo-math bench --scenario step-time --max-completion-length 256 --measured-steps 3 --repetitions 2
    grpo-math bench --scenario step-time --peers recipe merge --max-completion-length 256 1024 \
        --start-from warm-up base --measured-steps 1 --repetitions 1      # the recipe's own 1024 tokens
"""

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from benchmarks import asynchronous, serving, time_to_accuracy, training
from benchmarks.baseline import check_against, write_baseline
from benchmarks.measure import LASTING_SERVERS, Figure, machine
from grpo_math.local_server import LocalServer, start_side_by_side
from shared.datasets import require_dataset
from shared.settings import Check, at_least, check_fields, parse_settings, require, setting

SCENARIOS = {
    "server-overhead": serving.server_overhead,
    "step-time": training.step_time,
    "adapter-sync": training.adapter_sync,
    "trainer-memory": training.trainer_memory,
    "update": training.update,
    "decode-roofline": serving.decode_roofline,
    "scaling": serving.scaling,
    "lora-overhead": serving.lora_overhead,
    "pool": serving.pool,
    "async": asynchronous.async_training,
    "time-to-accuracy": time_to_accuracy.time_to_accuracy,
}
BY_NAME_ONLY = ("time-to-accuracy",)  # hours long: never in --all
Scenario = Literal[
    "server-overhead",
    "step-time",
    "adapter-sync",
    "trainer-memory",
    "update",
    "decode-roofline",
    "scaling",
    "lora-overhead",
    "pool",
    "async",
    "time-to-accuracy",
]
Peer = Literal[
    "recipe",
    "trl-colocate",
    "trl-async",
    "lora",
    "merge",
    "merge-fp32-head",
    "merge-whole-sequences",
    "merge-no-importance-correction",
]


@dataclass(frozen=True)
class BenchSettings:
    all: bool = setting(False, "run every scenario but time-to-accuracy")
    scenario: tuple[Scenario, ...] = setting((), "scenarios to run (see above)")
    quick: bool = setting(False, "CI sizes: short completions, one repetition, one measured step")
    output_dir: str | None = setting(None, "none = runs/bench-<time>")
    max_completion_length: tuple[int, ...] = setting(
        (256, 1024),
        "step-time: most tokens per completion, one run each; time-to-accuracy: the first",
        check=Check(lambda v: min(v) >= 1, "must be positive"),
    )
    measured_steps: int = setting(
        3, "step-time: measured steps per run, after one untimed first step", check=at_least(1)
    )
    repetitions: int = setting(3, "interleaved repetitions of every measurement", check=at_least(1))
    peers: tuple[Peer, ...] = setting(
        ("recipe", "trl-colocate", "trl-async", "lora", "merge"),
        "step-time and time-to-accuracy: who runs (the merge-* peers: ours with one departure from the recipe "
        "turned off; time-to-accuracy always runs merge and not trl-async)",
    )
    init_adapter: str | None = setting(
        None,
        "step-time: the adapter every peer starts from; none = a 20-step SFT adapter made here (none in --quick)",
    )
    start_from: tuple[Literal["warm-up", "base"], ...] = setting(
        ("warm-up",),
        "step-time: the policy every peer starts from: warm-up (--init-adapter's adapter) and/or base "
        "(the bare base model with a fresh LoRA, whose answers run to the length limit)",
    )
    timeout: float = setting(7200.0, "seconds one peer run may take", check=at_least(1))
    seeds: tuple[int, ...] = setting(
        (1, 2, 3), "time-to-accuracy: one SFT adapter per seed, every peer trained from it"
    )
    max_steps: int = setting(40, "time-to-accuracy: GRPO steps of every peer", check=at_least(1))
    eval_every: int = setting(
        10, "time-to-accuracy: steps between held-out evaluations (step 0: the SFT adapter)", check=at_least(1)
    )
    eval_limit: int = setting(200, "time-to-accuracy: the first N test questions, every evaluation", check=at_least(1))
    dataset: str = setting("arithmetic:1", "time-to-accuracy: the task (see grpo-math train --help)")
    baseline: str | None = setting(
        None, "a baseline file (benchmarks/baselines/cpu.json): exit 1 where a figure regressed past it"
    )
    write_baseline: str | None = setting(None, "write this run's figures as a baseline file")

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.all or bool(self.scenario), "scenario", "or --all: nothing to run")
        require_dataset("dataset", self.dataset)
        require(self.max_steps % self.eval_every == 0, "eval_every", "must divide --max-steps")


@dataclass
class Context:
    """What a scenario reads (sizes, repetitions) and fills (raw data, charts, a shared cache)."""

    settings: BenchSettings
    output_dir: Path
    raw: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    servers: dict[tuple[str, ...], LocalServer] = field(default_factory=dict)  # flags → a running server
    servers_started: int = 0  # numbers the servers' logs (a stopped server's flags may start again)

    def server(self, *flags: str) -> LocalServer:
        """A healthy ``grpo-math serve FLAGS``, started on first use. The default merge-mode server
        (``SHARED_SERVER``) and the lora-mode one (``LORA_SERVER``, used by two scenarios) stay up
        until the bench ends, the others until their scenario ends: a server start costs tens of
        seconds on 2 cores, and nine scenarios each started their own."""
        return self.servers_side_by_side(flags)[0]

    def servers_side_by_side(self, *flag_sets: tuple[str, ...]) -> list[LocalServer]:
        """The servers of ``flag_sets``, those not yet running started side by side; each start's
        seconds go in ``servers.txt`` and the report's raw data."""
        starting = {}
        for flags in dict.fromkeys(flag_sets):
            if flags not in self.servers:
                self.servers_started += 1
                starting[flags] = LocalServer(list(flags), self.output_dir / f"server-{self.servers_started}.log")
        if starting:
            started = time.perf_counter()
            start_side_by_side(list(starting.values()))
            seconds = time.perf_counter() - started
            for flags, server in starting.items():
                self.servers[flags] = server
                self.raw.setdefault("server_start_seconds", []).append(
                    {"log": server.log_path.name, "flags": " ".join(flags), "seconds": round(seconds, 1)}
                )
                with open(self.output_dir / "servers.txt", "a") as listing:
                    listing.write(f"{server.log_path.name}: {' '.join(flags)} (healthy after {seconds:.1f} s)\n")
        return [self.servers[flags] for flags in flag_sets]

    def end_scenario(self, keep_lasting: bool = True) -> None:
        """Stop the scenario's servers (every server with ``keep_lasting=False``)."""
        for flags in [flags for flags in self.servers if flags not in LASTING_SERVERS or not keep_lasting]:
            self.servers.pop(flags).stop()

    @property
    def quick(self) -> bool:
        return self.settings.quick

    @property
    def repetitions(self) -> int:
        return 1 if self.quick else self.settings.repetitions

    @property
    def measured_steps(self) -> int:
        return 1 if self.quick else self.settings.measured_steps

    @property
    def max_completion_lengths(self) -> tuple[int, ...]:
        return (32,) if self.quick else self.settings.max_completion_length

    @property
    def peers(self) -> tuple[str, ...]:
        return self.settings.peers

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    @property
    def sizes(self) -> dict:
        if self.quick:
            return dict(
                prompts=2,
                n=4,
                max_tokens=16,
                decode_tokens=16,
                scaling_n=(1, 4),
                scaling_prompts=(1, 2),
                memory_sequences=4,
                update_sequences=4,
                update_completion_tokens=64,
            )
        return dict(
            prompts=2,
            n=8,
            max_tokens=256,
            decode_tokens=256,
            scaling_n=(1, 2, 4, 8, 16),
            scaling_prompts=(1, 2, 4, 8),
            memory_sequences=16,
            update_sequences=16,
            update_completion_tokens=256,
        )

    @property
    def async_length(self) -> int:
        return 32 if self.quick else 256

    @property
    def async_staleness(self) -> tuple[int, ...]:
        """The --max-staleness values of the throughput runs (the first is the baseline)."""
        return (0, 1) if self.quick else (0, 1, 2)

    @property
    def async_seeds(self) -> tuple[int, ...]:
        return (1,) if self.quick else (1, 2, 3)

    @property
    def async_curve_steps(self) -> int:
        return 3 if self.quick else 12

    def sft_adapter(self) -> str | None:
        """The adapter the step-time and async peers start from: a short SFT run of the CPU recipe,
        made once per bench run (none in --quick)."""
        if self.settings.init_adapter is not None or self.quick:
            return self.settings.init_adapter
        if "sft" not in self.cache:
            from grpo_math.pipeline import Phases, run_pipeline

            phases = Phases(sft=dict(max_steps=20, report_to="none"), grpo=None, evaluation=None)
            run_pipeline(self.output_dir, server_url="", phases=phases)  # SFT alone needs no server
            self.cache["sft"] = str(self.output_dir / "sft")
        return self.cache["sft"]

    # ---- charts ------------------------------------------------------------------------------

    def _figure(self, width: float = 7.0):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt, *plt.subplots(figsize=(width, 4.2))

    def bar_chart(self, name: str, series: dict[str, list[float]], unit: str) -> None:
        plt, figure, axis = self._figure()
        labels = list(series)
        medians = [sorted(v)[len(v) // 2] for v in series.values()]
        errors = [
            [m - min(v) for m, v in zip(medians, series.values())],
            [max(v) - m for m, v in zip(medians, series.values())],
        ]
        axis.bar(labels, medians, yerr=errors, capsize=4, color="#4878a8")
        axis.set_ylabel(unit)
        axis.set_title(f"{name} (median, min–max of {len(next(iter(series.values())))})")
        figure.tight_layout()
        figure.savefig(self.output_dir / f"{name}.png", dpi=100)
        plt.close(figure)

    def line_chart(self, name: str, series: dict[str, list[float]], unit: str) -> None:
        plt, figure, axis = self._figure(9.0)
        axis.plot(list(series), [sorted(v)[len(v) // 2] for v in series.values()], marker="o")
        axis.set_ylabel(unit)
        axis.tick_params(axis="x", labelrotation=30)
        axis.set_title(f"{name} (median)")
        figure.tight_layout()
        figure.savefig(self.output_dir / f"{name}.png", dpi=100)
        plt.close(figure)

    def step_chart(self, by_length: dict[str, dict[str, list[dict]]]) -> None:
        """Stacked median seconds per phase, one bar per peer and length."""
        plt, figure, axis = self._figure(9.0)
        phases, colours = ("sample", "score", "train", "push"), ("#4878a8", "#e0a040", "#60a060", "#c04040")
        position = 0
        ticks = []
        for length, runs in by_length.items():
            for peer, results in runs.items():
                results = [r for r in results if "error" not in r]
                if not results:
                    continue
                bottom = 0.0
                for phase, colour in zip(phases, colours):
                    values = [v for r in results for v in r["split"].get(phase, [])]
                    height = sorted(values)[len(values) // 2] if values else 0.0
                    axis.bar(position, height, bottom=bottom, color=colour, label=phase if position == 0 else None)
                    bottom += height
                ticks.append((position, f"{peer}\n{length}"))
                position += 1
        axis.set_xticks([p for p, _ in ticks], [label for _, label in ticks], fontsize=8)
        axis.set_ylabel("seconds per step (median)")
        axis.set_title("GRPO step time by phase")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(self.output_dir / "step_time.png", dpi=100)
        plt.close(figure)


def run_bench(settings: BenchSettings) -> Path:
    output_dir = Path(settings.output_dir or f"runs/bench-{datetime.now():%Y%m%d-%H%M%S}")
    output_dir.mkdir(parents=True, exist_ok=True)
    context = Context(settings, output_dir)
    names = [name for name in SCENARIOS if name not in BY_NAME_ONLY] if settings.all else list(settings.scenario)
    figures: list[tuple[str, Figure]] = []
    durations = {}
    progress = tqdm(names, desc="bench", unit="scenario")
    try:
        for name in progress:
            progress.set_description(f"bench: {name}")
            started = time.perf_counter()
            figures += [(name, figure) for figure in SCENARIOS[name](context)]
            context.end_scenario()
            durations[name] = time.perf_counter() - started
    finally:
        context.end_scenario(keep_lasting=False)
    report = {
        "machine": machine(),
        "settings": {**settings.__dict__, "scenarios": names},
        "figures": [{"scenario": name, **figure.as_dict()} for name, figure in figures],
        "raw": {**context.raw, "scenario_seconds": durations},
    }
    (output_dir / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table([figure for _, figure in figures])
    print(
        f"\nseconds: {sum(durations.values()):.0f} in all; " + ", ".join(f"{n} {s:.0f}" for n, s in durations.items())
    )
    print(f"\n{output_dir}: bench.json and {', '.join(sorted(p.name for p in output_dir.glob('*.png')))}")
    if settings.write_baseline:
        write_baseline([report], Path(settings.write_baseline))
    return output_dir


def print_table(figures: list[Figure]) -> None:
    print(f"\n{'figure':<72} {'value':>9} {'min':>8} {'max':>8} {'n':>3}  goal      met")
    for figure in figures:
        met = {True: "yes", False: "NO", None: ""}[figure.meets_goal()] if not math.isnan(figure.value) else "—"
        print(
            f"{figure.name[:72]:<72} {figure.value:9.3f} {figure.min:8.3f} {figure.max:8.3f} {figure.repetitions:>3}  "
            f"{figure.goal or '':<9} {met}"
        )
        if figure.note:
            print(f"    {figure.note[:160]}")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(BenchSettings, argv, prog="grpo-math bench", description=__doc__)
    output_dir = run_bench(settings)
    if settings.baseline:
        report = json.loads((output_dir / "bench.json").read_text())
        return 0 if check_against(report, Path(settings.baseline)) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
