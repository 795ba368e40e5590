"""One way to read settings, for every command: flags, ``--config FILE`` (YAML or JSON) with flags
overriding it, a run's ``settings.json`` reproducing the run, and errors that name the flag."""

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from generator_server.settings import ServerSettings
from grpo_math.demo import DemoSettings
from shared.protocol import HealthResponse, ServerLimits
from shared.settings import SettingsError, flag_of, parse_settings
from trainer.evaluate import EvalSettings
from trainer.report import ReportSettings
from trainer.settings import TrainSettings, check_against_server
from trainer.sft import SFTSettings

COMMANDS = {
    "serve": ServerSettings,
    "train": TrainSettings,
    "sft": SFTSettings,
    "eval": EvalSettings,
    "demo": DemoSettings,
    "report": ReportSettings,
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_lists_every_flag_with_its_default(command):
    result = subprocess.run([sys.executable, "-m", "grpo_math", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # argparse wraps long lines
    assert "--config FILE" in help_text
    for field in dataclasses.fields(COMMANDS[command]):
        if field.metadata.get("positional"):
            assert field.name in help_text
            continue
        assert flag_of(field.name) in help_text, field.name
    assert help_text.count("(default:") >= sum(
        not f.metadata.get("positional") for f in dataclasses.fields(COMMANDS[command])
    )


def test_a_yaml_config_is_read_and_flags_override_it(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "learning_rate: 2e-4\nmax-steps: 7\nlora_target_modules: [q_proj, k_proj, v_proj]\nresume: false\n"
    )
    settings = parse_settings(TrainSettings, ["--config", str(config), "--max-steps", "3"], prog="t")
    assert settings.learning_rate == 2e-4  # YAML reads 2e-4 as text; it is parsed like the flag
    assert settings.max_steps == 3  # the flag wins
    assert settings.lora_target_modules == ("q_proj", "k_proj", "v_proj")


def test_a_runs_settings_json_reproduces_the_run(tmp_path):
    original = TrainSettings(
        max_steps=4, learning_rate=3e-4, reward_weights=(1.0, 0.5, 2.0, 1.0), output_dir="runs/x", seed=7
    )
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(dataclasses.asdict(original)))  # what grpo-math train writes
    assert parse_settings(TrainSettings, ["--config", str(path)], prog="t") == original


@pytest.mark.parametrize(
    "config, message",
    [
        ("learning_rate: 0\n", "--learning-rate must be > 0"),
        ("no_such_setting: 1\n", "--no-such-setting is not a setting of this command"),
        ("resume: maybe\n", "--resume must be true or false"),
        ("- a list\n", "must hold a mapping"),
        ("max_steps: many\n", "argument --max-steps: invalid int value: 'many'"),
    ],
)
def test_bad_config_values_name_the_setting(tmp_path, capsys, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(TrainSettings, ["--config", str(path)], prog="grpo-math train")
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_settings_built_in_code_are_checked_like_flags():
    with pytest.raises(SettingsError, match="--max-num-generations must be between 1 and 64"):
        ServerSettings(max_num_generations=0)
    with pytest.raises(SettingsError, match="--cpu-threads 'two': give 'all' or core numbers like 0-3 or 0,2"):
        ServerSettings(cpu_threads="two")
    with pytest.raises(SettingsError, match=r"--cpu-threads 1-0: names no core \(a range runs low-high\)"):
        ServerSettings(cpu_threads="1-0")
    with pytest.raises(SettingsError, match="--cpu-threads 0-4096: this process may use only cores"):
        ServerSettings(cpu_threads="0-4096")
    with pytest.raises(SettingsError, match="--num-generations k > 1 needs --temperature > 0"):
        EvalSettings(base=True, num_generations=4)
    with pytest.raises(SettingsError, match="--base or --adapter DIR"):
        EvalSettings()
    with pytest.raises(SettingsError, match="--grpo-steps must be at least 1"):
        DemoSettings(grpo_steps=0)


def test_the_trainer_checks_its_settings_against_the_servers_limits():
    limits = ServerLimits(
        max_prompts=4,
        max_n=8,
        max_tokens=256,
        max_model_len=1024,
        max_lora_rank=16,
        max_adapter_bytes=2**20,
        adapter_keep=3,
    )
    health = HealthResponse(status="ok", model="m", adapter_version=None, adapter_mode="lora", limits=limits)
    check_against_server(TrainSettings(max_completion_length=256), health)  # within every limit
    for overrides, message in (
        ({"num_generations": 16}, "--num-generations 16 is more than the server allows (8, its --max-num-generations)"),
        ({"prompts_per_step": 5}, "--prompts-per-step 5 is more than the server allows (4, its --max-prompts)"),
        (
            {"max_completion_length": 1024},
            "--max-completion-length 1024 is more than the server allows (256, its --max-completion-length)",
        ),
        ({"lora_r": 32}, "--lora-r 32 is more than the server allows (16, its --max-lora-rank)"),
        ({"max_staleness": 2}, "--max-staleness 2 needs the server to keep 4 adapter versions loaded"),
    ):
        with pytest.raises(SettingsError, match=re.escape(message)):
            check_against_server(TrainSettings(**{"max_completion_length": 256, **overrides}), health)
    merge = health.model_copy(update={"adapter_mode": "merge"})  # one version at a time: stale requests get the newest
    check_against_server(TrainSettings(max_completion_length=256, max_staleness=2), merge)


def test_the_api_key_comes_from_a_file_or_the_environment_never_a_flag(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("GRPO_MATH_API_KEY", "from-env")
    assert TrainSettings(api_key_file=str(key_file)).api_key() == "from-file"
    assert TrainSettings().api_key() == ServerSettings().api_key() == "from-env"
    assert not any(field.name == "api_key" for cls in COMMANDS.values() for field in dataclasses.fields(cls))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return names | strings  # a module named in a string is imported by name


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("shared", ("trainer", "generator_server", "grpo_math", "benchmarks")),
        ("trainer", ("generator_server", "grpo_math", "benchmarks")),
        ("generator_server", ("trainer", "grpo_math", "benchmarks")),
    ],
)
def test_the_rooms_import_only_downwards(package, forbidden):
    root = Path(__file__).parent.parent / package
    for path in root.rglob("*.py"):
        for name in imported_modules(path):
            assert not any(name == room or name.startswith(room + ".") for room in forbidden), (path.name, name)


@pytest.mark.parametrize("native_bf16, expected", [(True, "bfloat16"), (False, "float32")])
def test_both_services_compute_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native_bf16, expected):
    """Without AVX512-BF16 a bf16 matmul runs many times slower than a float32 one (both in PyTorch,
    the trainer, and in vLLM, the server), so on such a CPU the server's ``--dtype auto`` and the
    trainer's compute dtype are float32; with it, bf16. The two always agree, so the sampler
    serves what the trainer computes; on a GPU ``--dtype auto`` stays the model's own."""
    import torch

    from trainer.policy import compute_dtype_for

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    assert ServerSettings().resolved(on_cpu=True).dtype == expected
    assert compute_dtype_for(torch.device("cpu")) == getattr(torch, expected)
    assert ServerSettings(dtype="float32").resolved(on_cpu=True).dtype == "float32"  # a given dtype is kept
    assert ServerSettings().resolved(on_cpu=False).dtype == "auto"
