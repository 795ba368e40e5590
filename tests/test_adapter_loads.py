"""The adapter-load sequence (``shared.versions.AdapterLoads``), once, and its holders: numbering,
a number spent by a refused push but not by a failed load, the previous version active after a
refusal, the keep-window. The client for vLLM's own server runs it against an in-memory vLLM
(its HTTP answered by ``httpx.MockTransport``); the server's own engine runs it in
``tests/test_generator_server.py`` and ``tests/test_merge_mode.py`` (``check_the_probe``)."""

import asyncio
import json

import httpx
import pytest
import torch
from safetensors.torch import save

from shared.probe import AdapterNotApplied
from shared.protocol import AdapterUpload
from shared.versions import AdapterLoads, VersionConflict
from trainer.generators import GeneratorError
from trainer.generators.vllm_server import VllmServer


def upload(b_value: float, activate: bool = True, version="next") -> AdapterUpload:
    tensors = {"base_model.model.q_proj.lora_A.weight": torch.ones(2, 3),
               "base_model.model.q_proj.lora_B.weight": torch.full((3, 2), b_value)}  # fmt: skip
    return AdapterUpload(version=version, activate=activate, adapter_config="{}", adapter_model=save(tensors))


class Holder:
    def __init__(self, fail_load: bool = False, not_applied: bool = False) -> None:
        self.calls, self.fail_load, self.not_applied = [], fail_load, not_applied

    async def load(self, upload, version):
        self.calls.append(("load", version))
        if self.fail_load:
            raise ValueError("refused by the holder's checks")

    async def prove_applied(self, upload, version):
        self.calls.append(("prove", version))
        if self.not_applied:
            raise AdapterNotApplied(f"adapter version {version} is not applied")

    async def activate(self, version):
        self.calls.append(("activate", version))

    async def discard(self, version):
        self.calls.append(("discard", version))

    async def retire(self):
        self.calls.append(("retire",))


def test_a_refused_push_spends_its_number_and_a_failed_load_does_not():
    loads = AdapterLoads(highest=2)
    with pytest.raises(ValueError):
        asyncio.run(loads.push(upload(1.0), Holder(fail_load=True)))
    assert loads.highest == 2  # nothing loaded: the number is not spent
    refusing = Holder(not_applied=True)
    with pytest.raises(AdapterNotApplied):
        asyncio.run(loads.push(upload(1.0), refusing))
    assert refusing.calls == [("load", 3), ("prove", 3), ("discard", 3)] and loads.highest == 3
    evaluation = Holder()
    assert asyncio.run(loads.push(upload(1.0, activate=False), evaluation)) == 4
    assert evaluation.calls == [("load", 4), ("retire",)]  # only loaded: nothing to prove, nothing activated
    with pytest.raises(VersionConflict):
        asyncio.run(loads.push(upload(1.0, version=4), Holder()))


class InMemoryVllm:
    """vLLM's OpenAI server with runtime LoRA loading, as the client uses it: a base model, LoRAs
    loaded by name (one left from an earlier run), a probe whose logprobs an adapter changes unless
    its name is in ``invisible`` (loaded, yet serving the base model's)."""

    def __init__(self) -> None:
        self.loras = {"grpo-math-v2": "left from an earlier run"}
        self.invisible: set[str] = set()
        self.requests = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        if request.url.path == "/v1/models":
            models = [{"id": "base", "parent": None, "max_model_len": 2048}]
            return httpx.Response(200, json={"data": models + [{"id": name, "parent": "base"} for name in self.loras]})
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": [5, 6, 7, 8]})
        if request.url.path == "/v1/load_lora_adapter":
            self.loras[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="ok")
        if request.url.path == "/v1/unload_lora_adapter":
            del self.loras[body["lora_name"]]
            return httpx.Response(200, text="ok")
        if request.url.path == "/v1/completions":  # the probe: prompt_logprobs of the fixed text
            applied = body["model"] != "base" and body["model"] not in self.invisible
            logprob = -0.5 if applied else -1.0
            steps = [None] + [{str(token): {"logprob": logprob}} for token in body["prompt"][1:]]
            return httpx.Response(200, json={"model": body["model"], "choices": [{"prompt_logprobs": steps}]})
        return httpx.Response(404)


def test_the_vllm_client_pushes_by_the_sequence_numbering_above_the_server_and_keeping_a_window(tmp_path):
    vllm = InMemoryVllm()
    client = VllmServer("http://vllm", str(tmp_path), adapter_keep=2)
    client.http.http = httpx.Client(base_url="http://vllm", transport=httpx.MockTransport(vllm.handle))

    assert client.push_adapter(upload(1.0)).version == 3  # above grpo-math-v2, already on the server
    assert client.active_version() == 3 and "grpo-math-v3" in vllm.loras

    vllm.invisible.add("grpo-math-v4")  # loaded, yet it serves the base model
    with pytest.raises(GeneratorError) as refused:
        client.push_adapter(upload(1.0))
    assert refused.value.status == 422 and client.active_version() == 3  # the previous version serves on
    assert "grpo-math-v4" not in vllm.loras  # unloaded by the sequence's discard

    assert client.push_adapter(upload(1.0)).version == 5  # the refused push spent 4
    assert client.push_adapter(upload(1.0)).version == 6
    assert sorted(name for name in vllm.loras if name != "grpo-math-v2") == ["grpo-math-v5", "grpo-math-v6"]
    with pytest.raises(GeneratorError) as conflict:
        client.push_adapter(upload(1.0, version=6))
    assert conflict.value.status == 409
