"""``grpo-math demo`` (what ``make demo`` runs): the whole system on a CPU, with the embedded model,
on the generated task it can partly solve (``arithmetic:1``: "What is 37 - 17?"), so the fraction
of right answers visibly moves.

1. starts ``grpo-math serve`` in the background on a free port and waits until it is healthy
2. SFT, a short format warm-up (``grpo-math sft``): the embedded model writes none of the tags on
   its own
3. GRPO (``grpo-math train --init-adapter``) with the recipe's four rewards
4. evaluates the base model, the SFT adapter and the GRPO adapter on the same held-out questions
   (``grpo-math eval --compare``)
5. stops the server, renders the curves (``grpo-math report``), and says how the sampled answers'
   right-answer fraction moved and where everything is

The settings are the CPU recipe's (``grpo_math/recipe.py``); the pipeline is ``grpo_math/pipeline.py``.

    grpo-math demo                       # runs/demo-<time>/
    grpo-math demo --grpo-steps 10       # shorter
    grpo-math demo --dataset gsm8k --sft-steps 40 --learning-rate 3e-4 --prompts-per-step 2 --grpo-steps 16
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from grpo_math import recipe
from grpo_math.pipeline import Phases, PipelineError, generator_server, run_pipeline
from grpo_math.study_report import sampled_accuracy
from shared.datasets import WORKED_SOLUTIONS_HELP
from shared.settings import at_least, check_fields, parse_settings, positive, setting


@dataclass(frozen=True)
class DemoSettings:
    output_dir: str | None = setting(None, "run folder; none = runs/demo-<time>")
    dataset: str = setting(recipe.EASY_DATASET, WORKED_SOLUTIONS_HELP)
    sft_steps: int = setting(recipe.EASY_SFT_STEPS, "SFT (format warm-up) steps", check=at_least(1))
    grpo_steps: int = setting(40, "GRPO steps", check=at_least(1))
    prompts_per_step: int = setting(recipe.EASY_PROMPTS_PER_STEP, "questions per GRPO step", check=at_least(1))
    learning_rate: float = setting(recipe.EASY_GRPO_LEARNING_RATE, "GRPO learning rate, constant", check=positive())
    max_completion_length: int = setting(recipe.MAX_COMPLETION_LENGTH, "most tokens per completion", check=at_least(1))
    eval_limit: int = setting(100, "held-out questions in the final comparison", check=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self)


def phases(demo: DemoSettings) -> Phases:
    return Phases(
        sft=dict(max_steps=demo.sft_steps, dataset=demo.dataset),
        grpo=dict(
            max_steps=demo.grpo_steps,
            prompts_per_step=demo.prompts_per_step,
            learning_rate=demo.learning_rate,
            max_completion_length=demo.max_completion_length,
            dataset=demo.dataset,
        ),
        evaluation=dict(
            compare=True,
            eval_limit=demo.eval_limit,
            max_completion_length=demo.max_completion_length,
            dataset=demo.dataset,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    demo = parse_settings(DemoSettings, argv, prog="grpo-math demo", description=__doc__)
    from trainer import report

    run_dir = Path(demo.output_dir or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    steps = iter(f"[{number}/5]" for number in range(2, 5))
    print(f"[1/5] starting the generator server (log: {run_dir / 'server.log'})", flush=True)
    try:
        with generator_server(run_dir) as server:
            run_pipeline(run_dir, server.url, phases(demo), progress=lambda text: print(next(steps), text, flush=True))
    except PipelineError as error:
        raise SystemExit(f"grpo-math demo: error: {error} (server log: {run_dir / 'server.log'})") from None
    print("[5/5] report", flush=True)
    figures = report.render(run_dir / "grpo")
    sampled = sampled_accuracy(run_dir / "grpo" / "metrics.jsonl")
    print(
        f"\nright answers among the sampled completions: {100 * sampled['first']:.0f} % over the first "
        f"{sampled['window']} GRPO steps → {100 * sampled['last']:.0f} % over the last {sampled['window']}\n"
        f"run:       {run_dir / 'grpo'} (metrics.jsonl, settings.json)\n"
        f"adapters:  {run_dir / 'sft'} (SFT, the format warm-up), {run_dir / 'grpo' / 'final'} (after GRPO)\n"
        f"curves:    {run_dir / 'grpo' / 'report' / 'overview.png'} (and {len(figures) - 1} more)\n"
        f"eval:      {run_dir / 'eval'} (summary.json, completions.jsonl, accuracy.png)\n"
        f"dashboard: .venv/bin/trackio show --project grpo-math"
    )
    return 0
