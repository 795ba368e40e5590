"""The shape of the code, checked: one name per concept on every command, the version rules and the
trainer's push written once, short functions, and a training entrypoint that reads in one sitting."""

import argparse
import ast
import importlib
from pathlib import Path

import pytest

from grpo_math.cli import COMMANDS
from shared.settings import add_flags

ROOT = Path(__file__).parent.parent
PACKAGES = ("trainer", "generator_server", "shared", "grpo_math")

# Every flag of every command, and the one concept it stands for. TRL's names where TRL has the
# concept; ``n`` and ``max_tokens`` exist only on the wire (shared/protocol.py). A new flag needs a
# line here; a concept that gets a second flag fails the test.
FLAGS = {
    # what runs, where
    "--model": "the model: a hub id or folder; auto picks by device",
    "--init-adapter": "the PEFT adapter a run starts from",
    "--output-dir": "the folder a command writes to",
    "--dataset": "the questions: gsm8k, gsm8k-hub or a JSONL file",
    "--split": "a dataset's split",
    "--seed": "the random seed",
    "--report-to": "where metrics go besides metrics.jsonl",
    # the generator and the wire
    "--server-url": "the generator server(s) to use",
    "--generator": "which kind of server: grpo-math or vllm",
    "--vllm-adapter-dir": "where adapters are written for vLLM's own server",
    "--api-key-file": "the file holding the API key",
    "--ca-bundle": "the CA certificates of an HTTPS server",
    "--server-retry-seconds": "how long requests to an unreachable server are retried",
    "--server-timeout": "how long to wait for a starting server",
    # sampling
    "--num-generations": "completions per question (G; the wire's n)",
    "--max-completion-length": "most tokens per completion (the wire's max_tokens)",
    "--base-max-completion-length": "most tokens per completion of the base model's evaluation",
    "--temperature": "the sampling temperature",
    "--top-p": "nucleus sampling",
    # optimisation
    "--max-steps": "optimizer steps of a run",
    "--sft-steps": "optimizer steps of the SFT phase (the format warm-up)",
    "--grpo-steps": "optimizer steps of the GRPO phase",
    "--prompts-per-step": "questions per GRPO step",
    "--per-device-train-batch-size": "examples per SFT step",
    "--micro-batch-size": "sequences per forward and backward",
    "--max-length": "tokens per SFT example",
    "--learning-rate": "the learning rate",
    "--lr-scheduler-type": "the learning-rate schedule",
    "--warmup-steps": "the learning rate's linear warm-up",
    "--weight-decay": "AdamW's weight decay",
    "--max-grad-norm": "the gradient-norm clip",
    "--loss-type": "the loss aggregation",
    "--beta": "the KL coefficient",
    "--epsilon": "the clip range",
    "--epsilon-high": "the upper clip range",
    "--scale-rewards": "whether advantages are divided by the group's std",
    "--vllm-importance-sampling-correction": "weighting by π_trainer/π_sampler",
    "--vllm-importance-sampling-clip-max": "the importance weights' cap",
    "--reward-weights": "the four rewards' weights",
    "--max-staleness": "how many steps ahead batches may be sampled",
    "--max-bad-steps": "skipped steps in a row before a run stops",
    "--max-sampler-gap": "the sampler–trainer gap above which the adapter is pushed again, then the run stops",
    "--load-in-4bit": "the nf4 base",
    "--lora-r": "the LoRA rank",
    "--lora-alpha": "the LoRA alpha",
    "--lora-dropout": "the LoRA dropout",
    "--lora-target-modules": "the modules that get LoRA",
    "--gradient-checkpointing": "activation checkpointing",
    "--dequantize-once": "the nf4 base dequantised once per update",
    "--lm-head-dtype": "the dtype of the LM head's product when scoring",
    "--shared-prompt-forward": "a group's prompt through the policy once",
    "--save-every": "steps between checkpoints",
    "--keep-checkpoints": "checkpoints kept",
    "--resume": "continue from the newest checkpoint",
    # evaluation
    "--eval-every": "steps between periodic evaluations",
    "--eval-limit": "how many evaluation questions (the first N)",
    "--shuffle": "take the evaluation questions in a seeded random order",
    "--base": "evaluate the base model",
    "--adapter": "adapter folders to evaluate",
    "--adapter-version": "adapter versions a server has loaded (the server's number)",
    "--compare": "put several results side by side",
    "--seeds": "one run per seed",
    "--control": "also run the SFT-only control of a study",
    "--transfer-dataset": "another dataset a study's adapters are evaluated on",
    "--difficulties": "the generated task's difficulties to measure",
    "--quick": "the CI size",
    # the server
    "--host": "the address to bind",
    "--port": "the port to bind",
    "--dtype": "the served dtype",
    "--max-model-len": "prompt + completion tokens per sequence",
    "--max-lora-rank": "the largest LoRA rank served",
    "--max-loras": "adapters in one batch",
    "--adapter-keep": "adapter versions a server keeps loaded",
    "--max-adapter-bytes": "the largest adapter accepted",
    "--max-prompts": "prompts per request, at most",
    "--max-num-generations": "completions per prompt, at most (the limit on the wire's n)",
    "--enforce-eager": "no CUDA graphs",
    "--kv-cache-bytes": "the KV cache on CPU",
    "--gpu-memory-utilization": "vLLM's share of GPU memory",
    "--adapter-mode": "lora or merge",
    "--quantization": "which weights the server serves",
    "--cpu-threads": "the cores vLLM binds to",
    "--insecure-no-api-key": "serve off loopback without a key",
    "--ssl-certfile": "the HTTPS certificate",
    "--ssl-keyfile": "the HTTPS key",
    "--max-request-bytes": "the largest request body",
    "--log-level": "the log level",
    # benchmarks
    "--all": "every benchmark scenario",
    "--scenario": "benchmark scenarios to run",
    "--measured-steps": "measured steps per benchmark run, after an untimed first one",
    "--repetitions": "interleaved repetitions of a measurement",
    "--peers": "who a benchmark compares",
    "--timeout": "seconds one benchmark run may take",
    "--start-from": "the policy the step-time peers start from",
    "--baseline": "committed benchmark figures a run is checked against",
    "--write-baseline": "where a run's figures are written as a baseline",
}
# Spellings that meant one of the concepts above before it had one name; none may come back.
RETIRED = {
    "--max-tokens",
    "--max-n",
    "--limit",
    "--questions",
    "--data",
    "--sample",
    "--samples",
    "--base-max-tokens",
    "--lengths",
    "--steps",
    "--batch-size",
}


def settings_type_of(command: str) -> type | None:
    """The settings dataclass behind a ``grpo-math`` command (None for the two helpers without one)."""
    module_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    types = [
        value
        for name, value in vars(module).items()
        if name.endswith("Settings") and isinstance(value, type) and value.__module__ == module.__name__
    ]
    if module_name == "generator_server.__main__":
        from generator_server.settings import ServerSettings

        types = [ServerSettings]
    if module_name == "trainer.train":
        from trainer.settings import TrainSettings

        types = [TrainSettings]
    return types[0] if types else None


def command_flags(command: str) -> set[str]:
    parser = argparse.ArgumentParser()
    add_flags(parser, settings_type_of(command))
    return {option for option in parser._option_string_actions if option.startswith("--")} - {"--help"}


SETTINGS_COMMANDS = [command for command in COMMANDS if command not in ("embedded-model", "nf4-copy")]


@pytest.mark.parametrize("command", SETTINGS_COMMANDS)
def test_every_flag_of_every_command_has_one_concept_and_no_retired_spelling(command):
    flags = {flag.removeprefix("--no-") if flag.startswith("--no-") else flag for flag in command_flags(command)}
    flags = {flag if flag.startswith("--") else "--" + flag for flag in flags}
    assert flags <= set(FLAGS), sorted(flags - set(FLAGS))
    assert not flags & RETIRED


def test_no_two_flags_share_a_concept_and_every_flag_is_used():
    concepts = list(FLAGS.values())
    assert len(concepts) == len(set(concepts))
    used = {flag for command in SETTINGS_COMMANDS for flag in command_flags(command)}
    used = {"--" + flag.removeprefix("--no-") if flag.startswith("--no-") else flag for flag in used}
    assert set(FLAGS) <= used, sorted(set(FLAGS) - used)


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(ROOT)}:{name} ({length} lines)"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, length in functions(path)
        if length > 80
    ]
    assert not long


def test_the_training_entrypoint_reads_in_one_sitting():
    assert len((ROOT / "trainer" / "train.py").read_text().splitlines()) < 300


def source_files(*packages: str) -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text()
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def test_each_version_rule_has_one_definition():
    sources = source_files(*PACKAGES)
    next_rule = [name for name, text in sources.items() if "highest + 1" in text or "highest_version + 1" in text]
    assert next_rule == ["shared/versions.py"]
    keep_window = [
        name for name, text in sources.items() if "def kept_versions" in text or "[-self.settings.adapter_keep" in text
    ]
    assert keep_window == ["shared/versions.py"]
    staleness_window = [name for name, text in sources.items() if "max_staleness + 2" in text]
    assert staleness_window == ["shared/versions.py"]  # adapter_keep_for


def test_the_trainer_pushes_its_adapter_in_one_place():
    pushes = [
        name
        for name, text in source_files("trainer").items()
        if ".push_adapter(" in text and not name.startswith("trainer/generators/")
    ]
    assert pushes == ["trainer/adapter_sync.py", "trainer/evaluate.py"]  # evaluate pushes evaluation-only versions


def test_the_compose_cpu_trainer_runs_the_cpu_recipe():
    import yaml

    from grpo_math import recipe

    command = yaml.safe_load((ROOT / "compose.cpu.yaml").read_text())["services"]["trainer-cpu"]["command"]
    flags = dict(argument.split("=", 1) for argument in command if argument.startswith("--"))
    assert float(flags["--learning-rate"]) == recipe.GRPO_LEARNING_RATE
    assert flags["--lr-scheduler-type"] == recipe.GRPO_LR_SCHEDULER_TYPE
    assert flags["--max-completion-length"] == f"${{MAX_COMPLETION_LENGTH:-{recipe.MAX_COMPLETION_LENGTH}}}"
