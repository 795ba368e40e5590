"""``grpo-math demo`` (what ``make demo`` runs): the whole system on a CPU, with the embedded model.

1. starts ``grpo-math serve`` in the background on a free port and waits until it is healthy
2. format warm-up: ``grpo-math sft`` (the embedded model writes none of the tags on its own)
3. GRPO: ``grpo-math train --init-adapter`` with the recipe's four rewards, about 10 minutes
4. evaluates base / warm-up / GRPO on the same GSM8K test questions (``grpo-math eval --compare``)
5. stops the server, renders the curves (``grpo-math report``) and says where everything is

The CPU settings differ from the recipe's GPU defaults, chosen by measurement on 2 cores (see
the README): a higher learning rate, held constant, and shorter completions, so that the reward
visibly rises within the demo's few steps.

    grpo-math demo                       # runs/demo-<time>/
    grpo-math demo --grpo-steps 4        # shorter
"""

import argparse
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from trainer import evaluate, report, sft, train
from trainer.client import GeneratorClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo-math demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}", help="run folder (default: runs/demo-<time>)")
    parser.add_argument("--sft-steps", type=int, default=40, help="format warm-up steps (default: %(default)s)")
    parser.add_argument("--grpo-steps", type=int, default=16, help="GRPO steps (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="GRPO learning rate, constant (default: %(default)s)")
    parser.add_argument("--max-completion-length", type=int, default=256, help="completion tokens (default: %(default)s)")
    parser.add_argument("--eval-limit", type=int, default=32, help="GSM8K test questions in the final comparison (default: %(default)s)")
    args = parser.parse_args(argv)

    run_dir: Path = args.output_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_log = open(run_dir / "server.log", "w")
    print(f"[1/5] starting the generator server on 127.0.0.1:{port} (log: {run_dir / 'server.log'})", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", "--port", str(port)],
                              stdout=server_log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}"
        GeneratorClient(url).wait_until_healthy(timeout=600)
        print(f"[2/5] format warm-up: {args.sft_steps} supervised steps", flush=True)
        sft.main(["--output-dir", str(run_dir / "warmup"), "--max-steps", str(args.sft_steps), "--batch-size", "4",
                  "--learning-rate", "1e-3"])
        print(f"[3/5] GRPO: {args.grpo_steps} steps", flush=True)
        train.main(["--server-url", url, "--init-adapter", str(run_dir / "warmup"), "--output-dir", str(run_dir / "grpo"),
                    "--max-steps", str(args.grpo_steps), "--learning-rate", str(args.learning_rate),
                    "--lr-scheduler-type", "constant", "--max-completion-length", str(args.max_completion_length),
                    "--save-every", "0"])
        print(f"[4/5] base / warm-up / GRPO on the first {args.eval_limit} GSM8K test questions (greedy)", flush=True)
        evaluate.main(["--server-url", url, "--compare", "--adapter", str(run_dir / "warmup"), str(run_dir / "grpo" / "final"),
                       "--limit", str(args.eval_limit),
                       "--max-tokens", str(args.max_completion_length), "--output-dir", str(run_dir / "eval")])
    finally:
        server.terminate()
        server.wait(timeout=60)
    print("[5/5] report", flush=True)
    figures = report.render(run_dir / "grpo")
    print(f"\nrun:       {run_dir / 'grpo'} (metrics.jsonl, settings.json)\n"
          f"adapters:  {run_dir / 'warmup'} (format warm-up), {run_dir / 'grpo' / 'final'} (after GRPO)\n"
          f"curves:    {run_dir / 'grpo' / 'report' / 'overview.png'} (and {len(figures) - 1} more)\n"
          f"eval:      {run_dir / 'eval'} (summary.json, completions.jsonl, accuracy.png)\n"
          f"dashboard: .venv/bin/trackio show --project grpo-math")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
