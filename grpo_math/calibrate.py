"""``grpo-math calibrate``: which difficulty of the generated task (``--dataset arithmetic:D``) suits
the model. For each difficulty D, on the first ``--eval-limit`` held-out questions, greedily:

- the base model's lenient accuracy (the last number of its answer), with
  ``--base-max-completion-length`` tokens, so its answers are not cut off;
- the SFT adapter's (the format warm-up on that difficulty's train split) strict accuracy.

GRPO needs groups that hold both right and wrong answers, so the difficulty to train on is one
whose SFT adapter solves roughly 10–40 % of the questions. Writes ``calibration.json`` and
``calibration.md``; a run again with the same ``--output-dir`` keeps what finished.

    grpo-math calibrate --output-dir runs/calibrate
"""

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from grpo_math import recipe
from grpo_math.pipeline import Phases, generator_server, run_pipeline
from grpo_math.study_report import final_metrics
from shared.arithmetic import DIFFICULTIES, PREFIX
from shared.settings import Check, at_least, check_fields, parse_settings, setting, write_config
from trainer.evaluation import percent


@dataclass(frozen=True)
class CalibrateSettings:
    output_dir: str | None = setting(None, "folder; none = runs/calibrate-<time>")
    difficulties: tuple[int, ...] = setting(
        DIFFICULTIES,
        "the difficulties D of arithmetic:D to measure",
        check=Check(lambda v: set(v) <= set(DIFFICULTIES), f"must be among {DIFFICULTIES}"),
    )
    eval_limit: int = setting(100, "the first N held-out questions", check=at_least(1))
    base_max_completion_length: int = setting(1024, "most tokens per completion of the base model", check=at_least(1))
    sft_steps: int = setting(recipe.SFT_STEPS, "SFT (format warm-up) steps on each difficulty", check=at_least(1))
    max_completion_length: int = setting(
        recipe.MAX_COMPLETION_LENGTH, "most tokens per completion of the SFT adapter", check=at_least(1)
    )
    seed: int = setting(1, "SFT's example order and LoRA init")

    def __post_init__(self) -> None:
        check_fields(self)


def phases(calibration: CalibrateSettings, difficulty_dir: Path, dataset: str) -> tuple[Phases, Phases]:
    """(the base model's evaluation, SFT and its adapter's evaluation) of one difficulty."""
    base = Phases(
        sft=None,
        grpo=None,
        evaluation=dict(
            dataset=dataset,
            base=True,
            adapter=(),
            eval_limit=calibration.eval_limit,
            max_completion_length=calibration.base_max_completion_length,
            output_dir=str(difficulty_dir / "base"),
        ),
    )
    sft = Phases(
        sft=dict(max_steps=calibration.sft_steps, seed=calibration.seed, report_to="none", dataset=dataset),
        grpo=None,
        evaluation=dict(
            dataset=dataset,
            eval_limit=calibration.eval_limit,
            max_completion_length=calibration.max_completion_length,
        ),
    )
    return base, sft


def calibration_table(results: dict[str, dict]) -> str:
    lines = [
        "| dataset | base, lenient accuracy | base, truncated | SFT, strict accuracy | SFT, strict format |",
        "|---|---|---|---|---|",
    ]
    for dataset, result in results.items():
        base, sft = result["base"], result["sft"]
        truncated = f"{100 * base['truncation_rate']['value']:.0f} %"
        lines.append(
            f"| {dataset} | {percent(base['lenient_accuracy'], ' %')} | {truncated} | "
            f"{percent(sft['strict_accuracy'], ' %')} | {percent(sft['strict_format_rate'], ' %')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    calibration = parse_settings(CalibrateSettings, argv, prog="grpo-math calibrate", description=__doc__)
    folder = Path(calibration.output_dir or Path("runs") / f"calibrate-{datetime.now():%Y%m%d-%H%M%S}")
    write_config(calibration, folder / "settings.json")
    results = {}
    with generator_server(folder) as server:
        for difficulty in calibration.difficulties:
            dataset, difficulty_dir = f"{PREFIX}{difficulty}", folder / f"arithmetic-{difficulty}"
            for part in phases(calibration, difficulty_dir, dataset):
                run_pipeline(difficulty_dir, server.url, part, resume=True)
            results[dataset] = {
                "base": final_metrics(difficulty_dir / "base"),
                "sft": final_metrics(difficulty_dir / "eval"),
            }
    (folder / "calibration.json").write_text(
        json.dumps({"settings": asdict(calibration), "results": results}, indent=2) + "\n"
    )
    table = calibration_table(results)
    (folder / "calibration.md").write_text(table)
    print(table + f"\n{folder}: calibration.json, calibration.md")
    return 0
