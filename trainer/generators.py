"""The trainer's side of the wire: the one small interface through which the training loop, the
evaluation and the demo talk to a generator, and the client for this project's server.

``Generator`` is what they need: generate groups, push an adapter (getting back the version to
sample it with), the active version, and health with the server's limits. Two clients implement
it: ``GrpoMathServer`` for ``grpo-math serve`` (adapters pushed as bytes over HTTP; requests built
from and replies validated with ``shared.protocol``, so both ends share one definition) and
``VllmServer`` for vLLM's own OpenAI server (adapters through a folder it can read).
``ServerPool`` puts several servers of one kind behind the same interface.
"""

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx

from shared.protocol import (
    MAX_N,
    MAX_PROMPTS,
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    CompletionGroup,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    SampledCompletion,
    ServerLimits,
)

logger = logging.getLogger(__name__)


class GeneratorError(RuntimeError):
    """The generator answered with an error (``status``), or could not be reached (``status`` None);
    the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryingHttp:
    """The HTTP side both clients share: httpx with the bearer key and, for HTTPS, the CA bundle
    that signed the server's certificate; transport errors (refused, reset, timed out) and 5xx
    answers are retried with exponential backoff (1, 2, 4 … 30 s, each retry logged) for up to
    ``retry_seconds``, then raised; a 4xx is raised at once (the request itself is wrong)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        ca_bundle: str | None = None,
        timeout: float = 1800.0,
        retry_seconds: float = 300.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.retry_seconds = retry_seconds
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, verify=ca_bundle or True)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, retry: bool = True, **arguments) -> httpx.Response:
        started, delay, attempt = time.monotonic(), 1.0, 0
        while True:
            attempt += 1
            try:
                response = self.http.request(method, path, **arguments)
                status, problem = response.status_code, f"{response.status_code}: {response.text[:2000]}"
            except httpx.TransportError as error:
                response, status, problem = None, None, f"{type(error).__name__}: {error}"
            if response is not None and status < 400:
                return response
            if status is not None and status < 500:
                raise GeneratorError(f"{method} {self.base_url}{path} → {problem}", status=status)
            waited = time.monotonic() - started
            if not retry or waited + delay > self.retry_seconds:
                raise GeneratorError(
                    f"{method} {self.base_url}{path}: {problem}"
                    + (f" (gave up after {attempt} attempts over {waited:.0f} s)" if retry else ""),
                    status=status,
                )
            logger.warning(
                "%s %s%s failed (%s); retry %d in %.0f s", method, self.base_url, path, problem[:200], attempt, delay
            )
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


class Generator(Protocol):
    def health(self) -> HealthResponse:
        """The served model, the active adapter version and the server's limits."""

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        """One group of ``request.n`` completions per prompt, tagged with the adapter version that made them."""

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        """Load an adapter; the reply's ``version`` is the one to ask for when sampling with it."""

    def active_version(self) -> int | None:
        """The version ``"latest"`` requests use (None: the base model)."""

    def close(self) -> None: ...


def wait_until_healthy(generator: Generator, timeout: float) -> HealthResponse:
    """Wait for a starting generator; after ``timeout`` seconds raise ``GeneratorError`` saying why."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return generator.health()
        except GeneratorError as error:
            if time.monotonic() >= deadline:
                raise GeneratorError(f"not reachable or not ready: {error}") from None
            time.sleep(1.0)


class GrpoMathServer:
    """``Generator`` for ``grpo-math serve``: JSON requests, adapters pushed as PEFT bytes."""

    def __init__(self, base_url: str, **http) -> None:
        self.http = RetryingHttp(base_url, **http)
        self.base_url = base_url

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, retry: bool = True, **arguments) -> bytes:
        return self.http.request(method, path, retry=retry, **arguments).content

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate_json(self._request("GET", "/health", retry=False))

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        body = request.model_dump_json()
        reply = self._request("POST", "/v1/generate", content=body, headers={"content-type": "application/json"})
        return GenerateResponse.model_validate_json(reply)

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        data, files = upload.to_multipart()
        return AdapterLoadResponse.model_validate_json(self._request("POST", "/v1/adapters", data=data, files=files))

    def active_version(self) -> int | None:
        return AdapterListResponse.model_validate_json(self._request("GET", "/v1/adapters")).active_version


class VllmServer:
    """``Generator`` for vLLM's own OpenAI server (``vllm serve`` or ``trl vllm-serve``), started
    with ``--enable-lora --max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

    - sampling: ``/tokenize`` applies the server's chat template, then ``/v1/completions`` with the
      prompt's token ids, ``n``, ``return_token_ids`` and the chosen tokens' logprobs. The logprobs
      are the sampled distribution's (after temperature) only if the server runs with
      ``--logprobs-mode processed_logprobs``, as ``trl vllm-serve`` does.
    - adapters: each version is written in PEFT format to ``adapter_dir`` (a folder the server can
      read: the same machine or a shared disk), appearing by atomic rename, and loaded with
      ``/v1/load_lora_adapter`` under a new name per version (``grpo-math-v<k>``; a reused name
      would serve stale prefix-cache entries); sampling selects it by name, and versions beyond
      the newest ``adapter_keep`` are unloaded and deleted. TRL's ``AsyncGRPOTrainer`` syncs LoRA
      the same way (``trl/experimental/async_grpo``).
    - versions: kept here, by the same rule as ``grpo-math serve`` (``next`` = one above every
      version this client has loaded on the server, found from its names at start); the reply's
      ``model`` names the adapter that sampled, and is checked against the one asked for.
    """

    NAME_PREFIX = "grpo-math-v"

    def __init__(self, base_url: str, adapter_dir: str, adapter_keep: int = 3, **http) -> None:
        self.base_url = base_url
        self.http = RetryingHttp(base_url, **http)
        self.adapter_dir = Path(adapter_dir)
        self.adapter_keep = adapter_keep
        self.loaded: dict[int, bool] = {}  # version -> activated
        self.active: int | None = None
        self.highest = 0
        self._base_model: str | None = None

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, retry: bool = True, **arguments) -> httpx.Response:
        return self.http.request(method, path, retry=retry, **arguments)

    def _models(self) -> list[dict]:
        return self._request("GET", "/v1/models").json()["data"]

    def health(self) -> HealthResponse:
        self._request("GET", "/health", retry=False)
        models = self._models()
        base = next(model for model in models if model.get("parent") is None)
        self._base_model = base["id"]
        names = [model["id"] for model in models if model["id"].startswith(self.NAME_PREFIX)]
        self.highest = max([self.highest, *(int(name.removeprefix(self.NAME_PREFIX)) for name in names)])
        max_model_len = base.get("max_model_len") or 4096
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
            status="ok", model=self._base_model, adapter_version=self.active, adapter_mode="lora", limits=limits
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

    def _name(self, version: int | None) -> str:
        if version is None:
            if self._base_model is None:
                self.health()
            return self._base_model
        return f"{self.NAME_PREFIX}{version}"

    def _prompt_token_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            body = {"prompt": prompt}
        else:
            body = {"messages": [message.model_dump() for message in prompt], "add_generation_prompt": True}
        return self._request("POST", "/tokenize", json={"model": self._name(None), **body}).json()["tokens"]

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        version = self.active if request.adapter_version == "latest" else request.adapter_version
        if version is not None and version not in self.loaded:
            raise GeneratorError(f"adapter version {version} is not loaded; loaded: {sorted(self.loaded)}")
        prompt_ids = [self._prompt_token_ids(prompt) for prompt in request.prompts]
        body = {
            "model": self._name(version),
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
        started = time.perf_counter()
        if self._base_model is None:
            self.health()  # learns the versions already on the server
        version = self.highest + 1 if upload.version == "next" else upload.version
        if version <= self.highest:
            raise GeneratorError(f"version {version} is not greater than {self.highest}, the highest loaded")
        folder = self.adapter_dir / self._name(version)
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        upload.write_to(staging).rename(folder)  # the server never sees a half-written adapter
        self._request(
            "POST", "/v1/load_lora_adapter", json={"lora_name": self._name(version), "lora_path": str(folder)}
        )
        self.loaded[version] = upload.activate
        self.highest = version
        if upload.activate:
            self.active = version
        for retired in self._retired():
            self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": self._name(retired)})
            shutil.rmtree(self.adapter_dir / self._name(retired), ignore_errors=True)
            del self.loaded[retired]
        load_ms = (time.perf_counter() - started) * 1000
        return AdapterLoadResponse(version=version, active_version=self.active, load_ms=load_ms)

    def _retired(self) -> list[int]:
        """The rule of ``grpo-math serve``: keep the active version and the newest ``adapter_keep``
        activated and evaluation-only versions each."""
        keep = {self.active}
        for activated in (True, False):
            keep.update(sorted(v for v, a in self.loaded.items() if a == activated)[-self.adapter_keep :])
        return [version for version in self.loaded if version not in keep]

    def active_version(self) -> int | None:
        return self.active


class ServerPool:
    """``Generator`` over several servers of one kind: each request's prompts are split into
    contiguous runs of whole groups, one run per server, sampled at once; every adapter reaches
    every server, under the same version, before ``push_adapter`` returns (so before any of them
    samples with it)."""

    def __init__(self, members: list[Generator]) -> None:
        self.members = members
        self.threads = ThreadPoolExecutor(max_workers=len(members))

    def close(self) -> None:
        self.threads.shutdown()
        for member in self.members:
            member.close()

    def health(self) -> HealthResponse:
        healths = list(self.threads.map(lambda member: member.health(), self.members))
        limits = {name: min(getattr(health.limits, name) for health in healths) for name in ServerLimits.model_fields}
        limits["max_prompts"] = sum(health.limits.max_prompts for health in healths)  # split across members
        versions = {health.adapter_version for health in healths}
        return HealthResponse(
            status="ok",
            model=healths[0].model,
            adapter_version=versions.pop() if len(versions) == 1 else None,
            adapter_mode="merge" if any(health.adapter_mode == "merge" for health in healths) else "lora",
            limits=ServerLimits(**limits),
        )

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        count, members = len(request.prompts), len(self.members)
        bounds = [count * index // members for index in range(members + 1)]  # even contiguous runs
        parts = [
            (member, request.model_copy(update={"prompts": request.prompts[start:end]}))
            for member, start, end in zip(self.members, bounds, bounds[1:])
            if end > start
        ]
        replies = list(self.threads.map(lambda part: part[0].generate(part[1]), parts))
        versions = {reply.adapter_version for reply in replies}
        if len(versions) != 1:
            raise GeneratorError(f"the servers sampled with different adapter versions: {sorted(map(str, versions))}")
        return GenerateResponse(adapter_version=versions.pop(), groups=[g for reply in replies for g in reply.groups])

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        """Push to every member; where "next" gave them different versions (another client pushed
        to one of them), push again under the highest, so all agree."""
        started = time.perf_counter()
        replies = list(self.threads.map(lambda member: member.push_adapter(upload), self.members))
        version = max(reply.version for reply in replies)
        behind = [member for member, reply in zip(self.members, replies) if reply.version != version]
        again = upload.model_copy(update={"version": version})
        list(self.threads.map(lambda member: member.push_adapter(again), behind))
        return AdapterLoadResponse(
            version=version,
            active_version=version if upload.activate else replies[0].active_version,
            load_ms=(time.perf_counter() - started) * 1000,
        )

    def active_version(self) -> int | None:
        versions = set(self.threads.map(lambda member: member.active_version(), self.members))
        return versions.pop() if len(versions) == 1 else None


def connect_generator(
    kind: str, urls: tuple[str, ...], vllm_adapter_dir: str | None = None, vllm_adapter_keep: int = 3, **http
) -> Generator:
    """The generator the settings name: one server, or a pool of several. ``http``: the api_key,
    ca_bundle and retry_seconds of ``RetryingHttp``; ``vllm_adapter_keep``: the versions a vLLM
    server keeps loaded (the trainer's --max-staleness + 2 when that is more)."""
    if kind == "vllm":
        members = [
            VllmServer(url, adapter_dir=vllm_adapter_dir, adapter_keep=vllm_adapter_keep, **http) for url in urls
        ]
    else:
        members = [GrpoMathServer(url, **http) for url in urls]
    return members[0] if len(members) == 1 else ServerPool(members)
