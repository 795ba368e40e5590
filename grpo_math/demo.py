"""``grpo-math demo`` (what ``make demo`` runs): the whole system on a CPU, with the embedded model.

1. starts ``grpo-math serve`` in the background on a free port and waits until it is healthy
2. format warm-up: ``grpo-math sft`` (the embedded model writes none of the tags on its own)
3. GRPO: ``grpo-math train --init-adapter`` with the recipe's four rewards, about 10 minutes
4. evaluates base / warm-up / GRPO on the same GSM8K test questions (``grpo-math eval --compare``)
5. stops the server, renders the curves (``grpo-math report``) and says where everything is

The CPU settings differ from the recipe's GPU defaults, chosen by measurement on 2 cores (see
the README); every such override is in the three ``*_settings`` functions below.

    grpo-math demo                       # runs/demo-<time>/
    grpo-math demo --grpo-steps 4        # shorter
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from grpo_math.local_server import LocalServer
from shared.settings import at_least, check_fields, parse_settings, positive, setting


@dataclass(frozen=True)
class DemoSettings:
    output_dir: str | None = setting(None, "run folder; none = runs/demo-<time>")
    sft_steps: int = setting(40, "format warm-up steps", check=at_least(1))
    grpo_steps: int = setting(16, "GRPO steps", check=at_least(1))
    learning_rate: float = setting(3e-4, "GRPO learning rate, constant", check=positive())
    max_completion_length: int = setting(256, "completion tokens", check=at_least(1))
    eval_limit: int = setting(32, "GSM8K test questions in the final comparison", check=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self)


# ---- the demo's CPU overrides of the recipe's defaults, all of them -------------------------------
# Measured on 2 cores (README): the warm-up at lr 1e-3, batch 4 teaches the format in 40 steps; GRPO
# at the recipe's lr 5e-6 moves nothing visible in 16 steps, 3e-4 held constant does; 256
# completion tokens keep a step near 30 s; no checkpoints inside so short a run. Each settings
# object is built just before its command runs: its checks look for the folders the one before made.


def warmup_settings(demo: DemoSettings, run_dir: Path):
    from trainer.sft import SFTSettings

    return SFTSettings(output_dir=str(run_dir / "warmup"), max_steps=demo.sft_steps, batch_size=4, learning_rate=1e-3)


def grpo_settings(demo: DemoSettings, run_dir: Path, server_url: str):
    from trainer.settings import TrainSettings

    return TrainSettings(
        server_url=(server_url,),
        init_adapter=str(run_dir / "warmup"),
        output_dir=str(run_dir / "grpo"),
        max_steps=demo.grpo_steps,
        learning_rate=demo.learning_rate,
        lr_scheduler_type="constant",
        max_completion_length=demo.max_completion_length,
        save_every=0,
    )


def eval_settings(demo: DemoSettings, run_dir: Path, server_url: str):
    from trainer.evaluate import EvalSettings

    return EvalSettings(
        server_url=server_url,
        compare=True,
        adapter=(str(run_dir / "warmup"), str(run_dir / "grpo" / "final")),
        limit=demo.eval_limit,
        max_tokens=demo.max_completion_length,
        output_dir=str(run_dir / "eval"),
    )


# ---- the demo ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    demo = parse_settings(DemoSettings, argv, prog="grpo-math demo", description=__doc__)
    from trainer import report
    from trainer.evaluate import run_eval
    from trainer.sft import run_sft
    from trainer.train import train

    run_dir = Path(demo.output_dir or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    server = LocalServer([], run_dir / "server.log")
    print(f"[1/5] starting the generator server on {server.url} (log: {server.log_path})", flush=True)
    with server:
        print(f"[2/5] format warm-up: {demo.sft_steps} supervised steps", flush=True)
        run_sft(warmup_settings(demo, run_dir))
        print(f"[3/5] GRPO: {demo.grpo_steps} steps", flush=True)
        train(grpo_settings(demo, run_dir, server.url))
        print(f"[4/5] base / warm-up / GRPO on the first {demo.eval_limit} GSM8K test questions (greedy)", flush=True)
        run_eval(eval_settings(demo, run_dir, server.url))
    print("[5/5] report", flush=True)
    figures = report.render(run_dir / "grpo")
    print(
        f"\nrun:       {run_dir / 'grpo'} (metrics.jsonl, settings.json)\n"
        f"adapters:  {run_dir / 'warmup'} (format warm-up), {run_dir / 'grpo' / 'final'} (after GRPO)\n"
        f"curves:    {run_dir / 'grpo' / 'report' / 'overview.png'} (and {len(figures) - 1} more)\n"
        f"eval:      {run_dir / 'eval'} (summary.json, completions.jsonl, accuracy.png)\n"
        f"dashboard: .venv/bin/trackio show --project grpo-math"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
