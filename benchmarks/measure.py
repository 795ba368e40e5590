"""What every scenario of ``grpo-math bench`` measures with: figures that are ratios of two things
measured side by side in one run, interleaved repetitions, the machine's description, timing of
sampling requests, and child processes' peak memory.

>>> figure = ratio_figure("x", [2.0, 4.0, 3.0], [1.0, 1.0, 1.0], goal=">= 2", unit="×")
>>> figure.value, figure.median, figure.min, figure.max, figure.repetitions
(3.0, 3.0, 2.0, 4.0, 3)
"""

import importlib.metadata
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from shared.models import cpu_model_name
from shared.protocol import GenerateRequest
from trainer.generators import Generator

# The servers the scenarios sample from (``grpo-math serve`` flags; ``Context.server`` starts them)
SHARED_SERVER = ("--max-model-len", "2048", "--adapter-mode", "merge")  # up for the whole bench
LORA_SERVER = ("--max-model-len", "2048", "--adapter-mode", "lora")
LASTING_SERVERS = (SHARED_SERVER, LORA_SERVER)  # up from first use to the bench's end


@dataclass(frozen=True)
class Figure:
    name: str
    value: float  # the median of the paired ratios
    goal: str | None  # e.g. ">= 0.95"; None: reported, no goal
    unit: str
    median: float
    min: float
    max: float
    repetitions: int
    note: str = ""  # what limits it, what was changed for a peer, or why it is missing

    def meets_goal(self) -> bool | None:
        if self.goal is None:
            return None
        operator, _, bound = self.goal.partition(" ")
        return self.value >= float(bound) if operator == ">=" else self.value <= float(bound)

    def as_dict(self) -> dict:
        return {**asdict(self), "meets_goal": self.meets_goal()}


def ratio_figure(
    name: str, numerators: list[float], denominators: list[float], goal: str | None, unit: str = "×", note: str = ""
) -> Figure:
    """The ratio of paired measurements (repetition i of both, measured next to each other)."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    median = statistics.median(ratios)
    return Figure(name, median, goal, unit, median, min(ratios), max(ratios), len(ratios), note)


def value_figure(name: str, values: list[float], unit: str, goal: str | None = None, note: str = "") -> Figure:
    median = statistics.median(values)
    return Figure(name, median, goal, unit, median, min(values), max(values), len(values), note)


@dataclass
class Interleaved:
    """Measurements of several configurations, taken in turns: rep 1 of A, B, C, then rep 2 in
    the order B, C, A, ..., so slow drifts of a shared machine fall on all of them alike."""

    measurements: dict[str, list[float]] = field(default_factory=dict)

    def run(self, configurations: dict, repetitions: int, progress=None) -> dict[str, list[float]]:
        names = list(configurations)
        for repetition in range(repetitions):
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                self.measurements.setdefault(name, []).append(configurations[name]())
                if progress is not None:
                    progress.update(1)
        return self.measurements


def machine() -> dict:
    """The machine and the versions behind the figures."""
    packages = {}
    for name in ("torch", "vllm", "transformers", "trl", "peft", "bitsandbytes"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu_model_name(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "packages": packages,
    }


def sampling_rate(generator: Generator, request: GenerateRequest) -> float:
    """Completion tokens per second of one request."""
    started = time.perf_counter()
    reply = generator.generate(request)
    seconds = time.perf_counter() - started
    return sum(len(c.token_ids) for group in reply.groups for c in group.completions) / seconds
