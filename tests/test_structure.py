"""The shape of the code, checked: one name per concept on every command, the version rules and the
trainer's push written once, short functions, and a training entrypoint that reads in one sitting."""

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from grpo_math.cli import COMMANDS, settings_type
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
    "--dataset": "the questions: a bundled or generated dataset, or what datasets.load_dataset loads",
    "--split": "a dataset's split, the one evaluated",
    "--dataset-train-split": "the split a run trains on",
    "--dataset-test-split": "the split a run's periodic evaluation uses",
    "--system-prompt": "the system message before each plain-text prompt",
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
    "--num-iterations": "updates per sampled batch (μ)",
    "--mask-truncated-completions": "truncated completions out of the loss",
    "--vllm-importance-sampling-correction": "weighting by π_trainer/π_sampler",
    "--vllm-importance-sampling-clip-max": "the importance weights' cap",
    "--reward-funcs": "the reward functions, by import path (TRL's reward_funcs)",
    "--reward-weights": "one weight per reward function",
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
    "--arms": "which arms of the beyond-SFT experiment run",
    "--ood-datasets": "datasets out of the training distribution an experiment evaluates on",
    "--sft-save-every": "steps between kept SFT adapters",
    "--sft-eval-every": "steps between evaluated SFT adapters",
    "--sft-short-steps": "the short SFT warm-up one arm starts GRPO from",
    "--train-config": "more grpo-math train settings for every GRPO arm, as a file",
    "--validation-limit": "how many validation questions (after the evaluation questions)",
    "--pass-k": "completions sampled per question for pass@k and the entropy",
    "--pass-k-questions": "how many questions are sampled for pass@k",
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


def command_flags(command: str) -> set[str]:
    parser = argparse.ArgumentParser()
    add_flags(parser, settings_type(command))
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


# A measured figure: a number with a unit of measurement (%, ×, tok/s, a size in bytes) or a range
# of decimals; "backoff 1, 2, 4 … 30 s" or "Qwen2.5-3B" are settings and names, not measurements
MEASURED_FIGURE = re.compile(r"\d[\d.,]*\s*(?:%|×|tok/s|[GM]i?B\b)|(?<![\w.])\d+\.\d+\s*[-–]\s*\d+\.\d+")


@pytest.mark.parametrize("command", SETTINGS_COMMANDS)
def test_help_texts_say_what_and_why_and_leave_measured_figures_to_the_docs(command):
    """A figure in a help text goes stale with the next measurement; the docs pages carry the dated
    figures, and the help may point to them."""
    measured = [
        f"--{field.name}: {match.group(0)}"
        for field in dataclasses.fields(settings_type(command))
        for match in [MEASURED_FIGURE.search(field.metadata.get("help", ""))]
        if match
    ]
    assert not measured


def test_the_flag_reference_is_the_one_the_settings_make_and_every_flag_is_in_help():
    """``docs/flags.md`` is regenerated from the settings dataclasses, and each flag and default in it
    is one ``grpo-math COMMAND --help`` shows."""
    from grpo_math.flag_reference import markdown

    assert (ROOT / "docs" / "flags.md").read_text() == markdown(), "run: python -m grpo_math.flag_reference"
    for command in SETTINGS_COMMANDS:
        parser = argparse.ArgumentParser()
        add_flags(parser, settings_type(command))
        shown = "".join(parser.format_help().split())  # argparse wraps lines, at hyphens too
        for field in dataclasses.fields(settings_type(command)):
            if not field.metadata.get("positional"):
                assert "--" + field.name.replace("_", "-") in shown, (command, field.name)
                assert "".join(f"(default: {field.default})".split()) in shown, (command, field.name)


def test_the_performance_charts_draw_from_the_page_tables(tmp_path):
    """scripts/performance_charts.py reads its figures from docs/performance.md: a table reworded
    there without the script fails here, not as a stale picture. Its doctests run here too."""
    import doctest
    import importlib.util

    spec = importlib.util.spec_from_file_location("performance_charts", ROOT / "scripts" / "performance_charts.py")
    charts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(charts)
    assert doctest.testmod(charts).failed == 0
    page = charts.PAGE.read_text()
    split = charts.step_split(page)
    assert [list(phases) for phases in split.values()] == [["generation", "update"], ["sampling", "update", "push"]]
    rows = charts.openmp_rows(page)
    assert len(rows) == 7 and all(low <= high for _, *ranges in rows for low, high in ranges)
    charts.draw_step_split(split, tmp_path / "step_split.png")
    charts.draw_openmp(rows, tmp_path / "openmp_spin.png")
    assert (tmp_path / "step_split.png").stat().st_size > 0 and (tmp_path / "openmp_spin.png").stat().st_size > 0


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


def test_both_holders_of_adapters_run_the_one_load_sequence():
    """The server's engine and the trainer's client for vLLM's own server hold the adapters the same
    way: each is an ``AdapterHolder`` whose steps ``AdapterLoads.push`` runs (the outcomes:
    ``tests/test_adapter_loads.py`` for the client, the server tests' ``check_the_probe`` for both)."""
    import inspect

    from generator_server.engine import GeneratorEngine
    from shared.versions import AdapterHolder, AdapterLoads
    from trainer.generators.vllm_server import VllmServer

    steps = [name for name, member in vars(AdapterHolder).items() if inspect.iscoroutinefunction(member)]
    assert steps == ["load", "prove_applied", "activate", "discard", "retire"]
    for holder in (GeneratorEngine, VllmServer):
        assert all(inspect.iscoroutinefunction(getattr(holder, step)) for step in steps), holder
    assert inspect.signature(AdapterLoads.push).parameters["holder"].annotation is AdapterHolder


def test_the_trainer_pushes_its_adapter_in_one_place():
    pushes = [
        name
        for name, text in source_files("trainer").items()
        if ".push_adapter(" in text and not name.startswith("trainer/generators/")
    ]
    assert pushes == ["trainer/adapter_sync.py", "trainer/evaluate.py"]  # evaluate pushes evaluation-only versions


@pytest.mark.parametrize("compose, service, config", [
    ("compose.yaml", "trainer", "train-gpu.yaml"), ("compose.cpu.yaml", "trainer-cpu", "train-cpu.yaml")
])  # fmt: skip
def test_compose_trains_with_the_recipe_config_files(compose, service, config):
    """compose passes each pair's recipe to its trainer as a config file; train-gpu.yaml is the
    trainer's defaults spelled out, train-cpu.yaml the CPU recipe of grpo_math/recipe.py."""
    import yaml

    from grpo_math import recipe
    from shared.settings import parse_settings
    from trainer.settings import TrainSettings

    command = yaml.safe_load((ROOT / compose).read_text())["services"][service]["command"]
    assert command[1] == f"--config=/configs/${{TRAIN_CONFIG:-{config}}}"
    values = yaml.safe_load((ROOT / "configs" / config).read_text())
    settings = parse_settings(TrainSettings, ["--config", str(ROOT / "configs" / config)], prog="train")
    if config == "train-gpu.yaml":
        assert settings == TrainSettings()
    else:
        expected = recipe.grpo_settings("http://127.0.0.1:8000", ROOT)
        assert all(getattr(settings, name) == getattr(expected, name) for name in values)
        assert {"learning_rate", "lr_scheduler_type", "max_completion_length", "save_every"} <= set(values)
