"""The client for vLLM's own OpenAI server (``vllm serve`` or ``trl vllm-serve``), started with
``--enable-lora --max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

- sampling: ``/tokenize`` applies the server's chat template, then ``/v1/completions`` with the
  prompt's token ids, ``n``, ``return_token_ids`` and the chosen tokens' logprobs. The logprobs
  are the sampled distribution's (after temperature) only if the server runs with
  ``--logprobs-mode processed_logprobs``, as ``trl vllm-serve`` does.
- adapters: each version is written in PEFT format to ``adapter_dir`` (a folder the server can
  read: the same machine or a shared disk), appearing by atomic rename, and loaded with
  ``/v1/load_lora_adapter`` under a new name per version (``grpo-math-v<k>``; a reused name
  would serve stale prefix-cache entries); sampling selects it by name, and versions outside the
  keep-window are unloaded and deleted. TRL's ``AsyncGRPOTrainer`` syncs LoRA the same way
  (``trl/experimental/async_grpo``).
- proof: a version pushed to become active is first scored on ``shared.probe``'s fixed text
  (``prompt_logprobs``) against the base model; equal logprobs for an adapter with non-zero B
  unload it and refuse the push (the previous version stays active). vLLM's LoRA logits path
  fails on a ``prompt_logprobs`` request batched with others (vLLM issues 16668, 29955), so this
  client sends no other request while it probes; other clients of the same server must not
  sample while a trainer pushes.
- versions: vLLM numbers nothing, so this client pushes by ``shared.versions.AdapterLoads``' sequence
  itself (the server's own), holding the adapters on vLLM's behalf, starting above the highest
  ``grpo-math-v<k>`` the server already has; the reply's ``model`` names the adapter that sampled,
  and is checked against the one asked for.
"""

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import httpx

from shared.probe import PROBE_TEXT, AdapterNotApplied, changes_the_model, check_applied
from shared.protocol import (
    MAX_N,
    MAX_PROMPTS,
    AdapterLoadResponse,
    AdapterUpload,
    CompletionGroup,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    SampledCompletion,
    ServerLimits,
)
from shared.versions import DEFAULT_ADAPTER_KEEP, AdapterLoads, VersionConflict, kept_versions
from trainer.generators.http import GeneratorError, RetryingHttp

NAME_PREFIX = "grpo-math-v"


def adapter_name(version: int) -> str:
    return f"{NAME_PREFIX}{version}"


class VllmServer:
    """``Generator`` for vLLM's own OpenAI server."""

    def __init__(self, base_url: str, adapter_dir: str, adapter_keep: int = DEFAULT_ADAPTER_KEEP, **http) -> None:
        self.base_url = base_url
        self.http = RetryingHttp(base_url, **http)
        self.adapter_dir = Path(adapter_dir)
        self.adapter_keep = adapter_keep
        self.loaded: dict[int, bool] = {}  # version -> pushed to become active
        self.active: int | None = None
        self.adapter_loads = AdapterLoads()  # its highest version learnt from the server on first use
        self.base_model: str | None = None
        self.probe_token_ids: list[int] | None = None  # PROBE_TEXT tokenized by the server, once
        self.base_probe: list[float] | None = None  # the base model's probe logprobs, once
        self.completions_lock = threading.Lock()  # a probe never shares vLLM's batch with this client's sampling

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, retry: bool = True, **arguments) -> httpx.Response:
        return self.http.request(method, path, retry=retry, **arguments)

    def _models(self) -> tuple[str, int, int]:
        """(the base model's name, its max_model_len, the highest ``grpo-math-v<k>`` loaded or 0)."""
        models = self._request("GET", "/v1/models").json()["data"]
        base = next(model for model in models if model.get("parent") is None)
        versions = [int(m["id"].removeprefix(NAME_PREFIX)) for m in models if m["id"].startswith(NAME_PREFIX)]
        return base["id"], base.get("max_model_len") or 4096, max(versions, default=0)

    def _learn_server(self) -> None:
        """The base model's name and the versions already on the server, once, before the first
        request that needs them."""
        if self.base_model is None:
            self.base_model, _, self.adapter_loads.highest = self._models()

    def health(self) -> HealthResponse:
        self._request("GET", "/health", retry=False)
        base_model, max_model_len, _ = self._models()
        limits = ServerLimits(
            max_prompts=MAX_PROMPTS,
            max_n=MAX_N,
            max_tokens=max_model_len - 1,
            max_model_len=max_model_len,
            max_lora_rank=self._max_lora_rank(),
            max_adapter_bytes=2**40,
            adapter_keep=self.adapter_keep,
        )
        return HealthResponse(
            status="ok", model=base_model, adapter_version=self.active, adapter_mode="lora", limits=limits
        )

    def _max_lora_rank(self) -> int:
        """From ``/server_info`` where the server has it (dev mode, as ``trl vllm-serve`` runs), else
        vLLM's default ``--max-lora-rank``."""
        try:
            info = self.http.http.get("/server_info", params={"config_format": "json"})
            if info.status_code == 200:
                lora_config = json.loads(info.json()["vllm_config"]).get("lora_config") or {}
                return int(lora_config.get("max_lora_rank", 16))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        return 16

    def _model_name(self, version: int | None) -> str:
        self._learn_server()
        return self.base_model if version is None else adapter_name(version)

    def _prompt_token_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            body = {"prompt": prompt}
        else:
            body = {"messages": [message.model_dump() for message in prompt], "add_generation_prompt": True}
        return self._request("POST", "/tokenize", json={"model": self._model_name(None), **body}).json()["tokens"]

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        version = self.active if request.adapter_version == "latest" else request.adapter_version
        if version is not None and version not in self.loaded:
            raise GeneratorError(f"adapter version {version} is not loaded; loaded: {sorted(self.loaded)}")
        prompt_ids = [self._prompt_token_ids(prompt) for prompt in request.prompts]
        body = {
            "model": self._model_name(version),
            "prompt": prompt_ids,
            "n": request.n,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "logprobs": 0,  # the chosen token's logprob
            "return_token_ids": True,
            "skip_special_tokens": True,
            **({} if request.seed is None else {"seed": request.seed}),
        }
        with self.completions_lock:
            reply = self._request("POST", "/v1/completions", json=body).json()
        if reply["model"] != body["model"]:
            raise GeneratorError(f"asked vLLM for {body['model']}, it answered with {reply['model']}")
        groups = [CompletionGroup(prompt_token_ids=ids, completions=[]) for ids in prompt_ids]
        for choice in sorted(reply["choices"], key=lambda choice: choice["index"]):  # prompt-major: i·n + j
            groups[choice["index"] // request.n].completions.append(
                SampledCompletion(
                    text=choice["text"],
                    token_ids=choice["token_ids"],
                    logprobs=choice["logprobs"]["token_logprobs"],
                    finish_reason="length" if choice["finish_reason"] == "length" else "stop",
                )
            )
        return GenerateResponse(adapter_version=version, groups=groups)

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        """A push, by the sequence of ``shared.versions.AdapterLoads``, this client the holder (its
        steps are blocking HTTP requests, run in order by the sequence)."""
        started = time.perf_counter()
        self._learn_server()
        try:
            version = asyncio.run(self.adapter_loads.push(upload, self))
        except VersionConflict as error:
            raise GeneratorError(str(error), 409) from None
        except AdapterNotApplied as error:
            raise GeneratorError(str(error), 422) from None
        load_ms = (time.perf_counter() - started) * 1000
        return AdapterLoadResponse(version=version, active_version=self.active, load_ms=load_ms)

    # ---- the holder of ``AdapterLoads``' steps, on vLLM's behalf

    async def load(self, upload: AdapterUpload, version: int) -> None:
        folder = self.adapter_dir / adapter_name(version)
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        upload.write_to(staging).rename(folder)  # the server never sees a half-written adapter
        self._request(
            "POST", "/v1/load_lora_adapter", json={"lora_name": adapter_name(version), "lora_path": str(folder)}
        )
        self.loaded[version] = upload.activate

    async def prove_applied(self, upload: AdapterUpload, version: int) -> None:
        if changes_the_model(upload.adapter_model):
            self.base_probe = self.base_probe or self._probe(None)
            check_applied(version, self.base_probe, self._probe(version), self.base_url)

    async def activate(self, version: int) -> None:
        self.active = version

    async def discard(self, version: int) -> None:
        self._unload(version)
        del self.loaded[version]

    async def retire(self) -> None:
        keep = kept_versions(self.loaded, self.active, self.adapter_keep, self.adapter_keep)
        for retired in [v for v in self.loaded if v not in keep]:
            self._unload(retired)
            del self.loaded[retired]

    def _unload(self, version: int) -> None:
        self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": adapter_name(version)})
        shutil.rmtree(self.adapter_dir / adapter_name(version), ignore_errors=True)

    def _probe(self, version: int | None) -> list[float]:
        """The logprob of each token of ``PROBE_TEXT`` after its prefix, served by ``version``
        (None: the base model)."""
        self.probe_token_ids = token_ids = self.probe_token_ids or self._prompt_token_ids(PROBE_TEXT)
        body = {"model": self._model_name(version), "prompt": token_ids, "max_tokens": 1, "prompt_logprobs": 0}
        with self.completions_lock:
            steps = self._request("POST", "/v1/completions", json=body).json()["choices"][0]["prompt_logprobs"]
        # None for the first token, then {token id: {"logprob": ...}} per position
        return [step[str(token_id)]["logprob"] for step, token_id in zip(steps[1:], token_ids[1:])]

    def active_version(self) -> int | None:
        return self.active
