"""``grpo-math study``: does GRPO teach the embedded model the maths, or only the format? Measured
over seeds, on the same held-out questions, with 95 % intervals.

1. starts ``grpo-math serve`` (merge mode on CPU) and evaluates the base model greedily on the first
   ``--eval-limit`` test questions of ``--dataset`` with ``--base-max-completion-length`` (its
   answers are not cut off);
2. for each seed, the pipeline of ``grpo_math/pipeline.py``: SFT (the format warm-up, that seed),
   GRPO with the recipe's four rewards, evaluating the adapter greedily on the same questions every
   ``--eval-every`` steps (``eval/*`` rows in the run's metrics.jsonl), then a final evaluation of
   the SFT adapter and the GRPO adapter that keeps every completion;
   with ``--control``, the control that isolates GRPO from "more training": SFT for
   ``--sft-steps`` + ``--grpo-steps`` steps and no GRPO, evaluated the same way;
   with ``--transfer-dataset``, the SFT and GRPO adapters also on that dataset's test questions
   (did GRPO on one task damage another?);
3. writes ``study.json`` (the settings, every model's final metrics with Wilson intervals, the
   failure kind of every final answer, the sampled completions' strict accuracy over the first and
   the last 10 steps), ``curves.png`` (each reward, the sampled strict accuracy and the test
   accuracies by step, one line per seed) and ``results.md`` (the tables the docs quote).

A study continues where it stopped when it runs again with the same ``--output-dir``: finished
phases are kept, an interrupted GRPO run continues from its newest checkpoint. A seed that fails
is reported as failed and the study goes on with the next. One study is one setting: change one
flag per study and put the studies side by side with ``--compare``. ``grpo_math/study_report.py``
states each goal.

    grpo-math study                                   # GSM8K, runs/study-<time>/
    grpo-math study --dataset arithmetic:3 --control --transfer-dataset gsm8k --output-dir runs/study-a3
    grpo-math study --compare runs/study-a runs/study-g16   # one table of finished studies
    grpo-math study --quick                           # a few steps, one seed, 8 questions (the slow test)
"""

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from grpo_math import recipe
from grpo_math.pipeline import Phases, PipelineError, generator_server, run_pipeline
from grpo_math.study_report import (
    curves_chart,
    final_metrics,
    kinds_table,
    learning_table,
    results_table,
    sampled_accuracy,
)
from shared.datasets import WORKED_SOLUTIONS_HELP, require_dataset
from shared.settings import at_least, check_fields, parse_settings, positive, require, setting, write_config

QUICK = dict(
    seeds=(1,),
    eval_limit=8,
    base_max_completion_length=64,
    sft_steps=4,
    grpo_steps=3,
    eval_every=2,
    max_completion_length=64,
)


@dataclass(frozen=True)
class StudySettings:
    output_dir: str | None = setting(None, "study folder; none = runs/study-<time>")
    dataset: str = setting("gsm8k", WORKED_SOLUTIONS_HELP)
    seeds: tuple[int, ...] = setting((1, 2, 3), "one SFT + GRPO run per seed")
    eval_limit: int = setting(200, "the first N test questions, for every evaluation", check=at_least(1))
    base_max_completion_length: int = setting(
        1024, "most tokens per completion in the base model's evaluation", check=at_least(1)
    )
    sft_steps: int = setting(recipe.SFT_STEPS, "SFT (format warm-up) steps", check=at_least(1))
    grpo_steps: int = setting(150, "GRPO steps per seed", check=at_least(1))
    eval_every: int = setting(25, "evaluate the adapter every N GRPO steps", check=at_least(1))
    prompts_per_step: int = setting(2, "questions per GRPO step", check=at_least(1))
    num_generations: int = setting(8, "completions per question (G)", check=at_least(2))
    max_completion_length: int = setting(
        recipe.MAX_COMPLETION_LENGTH, "most tokens per completion, GRPO and its evaluations", check=at_least(1)
    )
    learning_rate: float = setting(recipe.GRPO_LEARNING_RATE, "GRPO learning rate", check=positive())
    lr_scheduler_type: Literal["linear", "constant"] = setting(
        recipe.GRPO_LR_SCHEDULER_TYPE, "GRPO learning-rate schedule"
    )
    temperature: float = setting(1.0, "GRPO sampling temperature", check=positive())
    max_staleness: int = setting(0, "GRPO --max-staleness (0 = synchronous)", check=at_least(0))
    control: bool = setting(False, "also SFT for --sft-steps + --grpo-steps steps without GRPO, evaluated alike")
    transfer_dataset: str | None = setting(
        None, "also evaluate the SFT and GRPO adapters on this dataset's test questions (e.g. gsm8k)"
    )
    quick: bool = setting(False, f"a few steps on one seed and 8 questions: {QUICK}")
    compare: tuple[str, ...] = setting((), "only put these finished study folders side by side in one table")

    def __post_init__(self) -> None:
        check_fields(self)
        require(len(set(self.seeds)) == len(self.seeds), "seeds", "must differ from one another")
        for name in ("dataset", "transfer_dataset"):
            require_dataset(name, getattr(self, name))
        for folder in self.compare:
            require((Path(folder) / "study.json").is_file(), "compare", f"{folder}: no study.json (not a study)")


# ---- the phases of one study --------------------------------------------------------------------


def evaluation(study: StudySettings, **overrides) -> dict:
    """Greedy, on the first --eval-limit test questions of --dataset."""
    return (
        dict(eval_limit=study.eval_limit, max_completion_length=study.max_completion_length, dataset=study.dataset)
        | overrides
    )


def seed_phases(study: StudySettings, seed: int, seed_dir: Path) -> Phases:
    """One seed: SFT, GRPO with periodic evaluation, the final evaluation of both adapters."""
    return Phases(
        sft=dict(max_steps=study.sft_steps, seed=seed, report_to="none", dataset=study.dataset),
        grpo=dict(
            seed=seed,
            dataset=study.dataset,
            max_steps=study.grpo_steps,
            prompts_per_step=study.prompts_per_step,
            num_generations=study.num_generations,
            max_completion_length=study.max_completion_length,
            temperature=study.temperature,
            learning_rate=study.learning_rate,
            lr_scheduler_type=study.lr_scheduler_type,
            max_staleness=study.max_staleness,
            eval_every=study.eval_every,
            eval_limit=study.eval_limit,
            save_every=10,
            report_to="none",
        ),
        evaluation=evaluation(study, adapter=(str(seed_dir / "sft"), str(seed_dir / "grpo" / "final"))),
    )


def control_phases(study: StudySettings, seed: int) -> Phases:
    """The same SFT for as many more steps as GRPO took, and no GRPO, evaluated the same way."""
    steps = study.sft_steps + study.grpo_steps
    return Phases(
        sft=dict(max_steps=steps, seed=seed, report_to="none", dataset=study.dataset),
        grpo=None,
        evaluation=evaluation(study),
    )


def transfer_phases(study: StudySettings, seed_dir: Path) -> Phases:
    """The seed's SFT and GRPO adapters on another dataset's test questions."""
    adapters = (str(seed_dir / "sft"), str(seed_dir / "grpo" / "final"))
    return Phases(
        sft=None,
        grpo=None,
        evaluation=evaluation(
            study, dataset=study.transfer_dataset, adapter=adapters, output_dir=str(seed_dir / "transfer")
        ),
    )


def base_phases(study: StudySettings, study_dir: Path) -> Phases:
    """The base model alone, at its own (longer) completion length, into ``study_dir/base``."""
    return Phases(
        sft=None,
        grpo=None,
        evaluation=evaluation(
            study,
            output_dir=str(study_dir / "base"),
            base=True,
            adapter=(),
            max_completion_length=study.base_max_completion_length,
        ),
    )


# ---- the study ----------------------------------------------------------------------------------


def finished(eval_dir: Path) -> bool:
    return (eval_dir / "summary.json").is_file()


def run_study(study: StudySettings) -> Path:
    study_dir = Path(study.output_dir or Path("runs") / f"study-{datetime.now():%Y%m%d-%H%M%S}")
    write_config(study, study_dir / "settings.json")
    failed: dict[str, str] = {}
    with generator_server(study_dir) as server:
        print(f"study {study_dir}: server {server.url} (log {server.log_path})", flush=True)
        run_pipeline(study_dir, server.url, base_phases(study, study_dir), resume=True)
        for seed in study.seeds:
            seed_dir = study_dir / f"seed-{seed}"
            print(f"seed {seed}: SFT ({study.sft_steps} steps), GRPO ({study.grpo_steps} steps)", flush=True)
            try:
                run_pipeline(seed_dir, server.url, seed_phases(study, seed, seed_dir), resume=True)
                if study.control:
                    run_pipeline(seed_dir / "control", server.url, control_phases(study, seed), resume=True)
                if study.transfer_dataset is not None:
                    run_pipeline(seed_dir, server.url, transfer_phases(study, seed_dir), resume=True)
            except PipelineError as error:
                failed[str(seed)] = str(error)
                print(f"seed {seed} failed, going on with the next: {error}", flush=True)
    print(write_report(study_dir, study, failed))
    return study_dir


def write_report(study_dir: Path, study: StudySettings, failed: dict[str, str]) -> str:
    """study.json, curves.png and results.md from the study's folders; returns the tables.
    ``failed``: seed → why it failed, for seeds that have no final evaluation."""
    seed_dirs = {str(seed): study_dir / f"seed-{seed}" for seed in study.seeds}
    done = {seed: folder for seed, folder in seed_dirs.items() if finished(folder / "eval")}
    adapters = {seed: (str(folder / "sft"), str(folder / "grpo" / "final")) for seed, folder in done.items()}
    result = {
        "settings": asdict(study),
        "base": final_metrics(study_dir / "base"),
        "seeds": {seed: final_metrics(folder / "eval", adapters[seed][1]) for seed, folder in done.items()},
        "sft": {seed: final_metrics(folder / "eval", adapters[seed][0]) for seed, folder in done.items()},
        "sampled_strict_accuracy": {
            seed: sampled_accuracy(folder / "grpo" / "metrics.jsonl") for seed, folder in done.items()
        },
        "control": {
            seed: final_metrics(folder / "control" / "eval")
            for seed, folder in done.items()
            if finished(folder / "control" / "eval")
        },
        "transfer": {
            seed: {
                "sft": final_metrics(folder / "transfer", adapters[seed][0]),
                "grpo": final_metrics(folder / "transfer", adapters[seed][1]),
            }
            for seed, folder in done.items()
            if finished(folder / "transfer")
        },
        "failed": failed,
    }
    (study_dir / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    references = {
        seed: {
            "SFT": result["sft"][seed],
            **({"control": result["control"][seed]} if seed in result["control"] else {}),
        }
        for seed in done
    }
    curves_chart(study_dir, tuple(int(seed) for seed in done), result["base"], references)
    tables = results_table({study_dir.name: result}) + "\n" + learning_table(result)
    (study_dir / "results.md").write_text(tables + "\nFailure kinds of the final answers:\n\n" + kinds_table(result))
    return tables


def main(argv: list[str] | None = None) -> int:
    study = parse_settings(StudySettings, argv, prog="grpo-math study", description=__doc__)
    if study.compare:
        studies = {Path(folder).name: json.loads((Path(folder) / "study.json").read_text()) for folder in study.compare}
        print(results_table(studies))
        return 0
    if study.quick:
        study = replace(study, **QUICK)
    study_dir = run_study(study)
    print(f"study: {study_dir} (study.json, results.md, curves.png)")
    return 0
