"""The pipeline the demo, the study, the benchmarks and the tests run: a generator server, then
SFT (the format warm-up) → GRPO → evaluation, each phase in a folder of its own under one run
folder (``sft/``, ``grpo/``, ``eval/``), with the CPU recipe (``grpo_math/recipe.py``) unless told
otherwise. Every phase's settings are built just before it runs, because their checks look for
the folders the phase before made (``--init-adapter``, ``--adapter``).

A phase that fails raises (``PipelineError`` naming the phase, with the cause attached), so a
caller running several pipelines (the study's seeds) can record the failure and go on.
"""

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from grpo_math import recipe
from grpo_math.local_server import LocalServer
from shared.protocol import AdapterUpload


class PipelineError(RuntimeError):
    """A phase failed; the message names it and the cause is attached."""


@dataclasses.dataclass(frozen=True)
class Phases:
    """What one pipeline run does; ``None`` skips a phase. Each dict holds overrides of the CPU
    recipe for that phase's settings (``SFTSettings``, ``TrainSettings``, ``EvalSettings``)."""

    sft: dict | None = dataclasses.field(default_factory=dict)
    grpo: dict | None = dataclasses.field(default_factory=dict)
    evaluation: dict | None = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def generator_server(folder: Path, flags: tuple[str, ...] = ()) -> Iterator[LocalServer]:
    """``grpo-math serve`` on a free port for the duration, its log in ``folder/server.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    with LocalServer(list(flags), folder / "server.log") as server:
        yield server


def run_pipeline(run_dir: Path, server_url: str, phases: Phases, progress=print, resume: bool = False) -> Path:
    """SFT → GRPO → evaluation against the server at ``server_url``; returns ``run_dir``. GRPO
    starts from the SFT adapter when there is one; the evaluation measures the GRPO adapter (and,
    with ``compare``, the SFT adapter and the base model beside it). With ``resume``, a phase
    whose output is complete is skipped and an interrupted GRPO phase continues from its newest
    checkpoint, so a long measurement continues where it stopped."""
    from trainer.checkpoints import list_checkpoints
    from trainer.evaluate import run_eval
    from trainer.sft import run_sft
    from trainer.train import train

    run_dir.mkdir(parents=True, exist_ok=True)
    sft_dir, grpo_dir = run_dir / "sft", run_dir / "grpo"
    if phases.sft is not None and not (resume and AdapterUpload.is_adapter_folder(sft_dir)):
        progress(f"SFT (format warm-up): {phases.sft.get('max_steps', recipe.SFT_STEPS)} steps")
        run_phase("sft", lambda: run_sft(recipe.sft_settings(sft_dir, **phases.sft)))
    if phases.grpo is not None and not (resume and AdapterUpload.is_adapter_folder(grpo_dir / "final")):
        start = {"init_adapter": str(sft_dir)} if phases.sft is not None else {}
        settings = {**start, **phases.grpo, "resume": resume and bool(list_checkpoints(grpo_dir))}
        progress(f"GRPO: {settings.get('max_steps', 'the default number of')} steps")
        run_phase("grpo", lambda: train(recipe.grpo_settings(server_url, grpo_dir, **settings)))
    if phases.evaluation is not None:
        adapters = [str(folder) for folder in (sft_dir, grpo_dir / "final") if folder.is_dir()]
        if not phases.evaluation.get("compare"):
            adapters = adapters[-1:]  # the last adapter the pipeline made
        settings = {"adapter": tuple(adapters), **phases.evaluation}
        output_dir = Path(settings.pop("output_dir", run_dir / "eval"))
        if not (resume and (output_dir / "summary.json").is_file()):
            names = ("base",) * bool(settings.get("compare") or settings.get("base")) + settings["adapter"]
            progress(f"evaluation: {', '.join(names)}")
            run_phase("evaluation", lambda: run_eval(recipe.eval_settings(server_url, output_dir, **settings)))
    return run_dir


def run_phase(name: str, phase) -> None:
    try:
        phase()
    except Exception as error:
        raise PipelineError(f"the {name} phase failed: {type(error).__name__}: {error}") from error
