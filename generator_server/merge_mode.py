"""Merge mode (``--adapter-mode merge``): no LoRA in the engine; the version asked for is merged into
the pristine served weights (``merge.py``) and reloaded in place, so sampling runs at the base
model's speed.

One version at a time. A reload waits until the requests sampling on the current weights have
finished (sampling and reloading are two kinds at the ``BatchGate``); requests arriving meanwhile
wait, then sample on the new weights. The active version, the base model and evaluation-only
adapters are served by switching the merged weights; a version replaced by a newer active one is
no longer served (404).
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from vllm.v1.engine.async_llm import AsyncLLM

from generator_server.adapters import UnknownAdapterVersion
from generator_server.gate import BatchGate
from generator_server.merge import MergeWorkerExtension, PristineWeights, merged_weights, write_weights
from generator_server.settings import ServerSettings
from shared.protocol import AdapterUpload
from shared.versions import AdapterLoads, kept_versions

logger = logging.getLogger(__name__)

SAMPLE, RELOAD = "sample on the merged weights", "reload the merged weights"  # the gate's two kinds


class VersionsKeptSwitching(RuntimeError):
    """The merged weights kept switching between versions while a request waited; retry it."""


class MergeMode:
    name = "merge"

    def __init__(
        self, settings: ServerSettings, engine: AsyncLLM, adapter_root: Path, weights_path: str, loads: AdapterLoads
    ) -> None:
        self.settings, self.engine, self.adapter_root = settings, engine, adapter_root
        self.loads = loads  # the engine's: the highest version spent tells a replaced version from an unknown one
        self.pristine = PristineWeights(weights_path)
        self.sources: dict[int, AdapterUpload] = {}  # the active and the evaluation-only adapters
        self.active_version: int | None = None
        self.merged_version: int | None = None  # the version whose weights the engine holds
        self.merged_modules: set[str] = set()  # the modules the merged adapter changed
        self.gate = BatchGate()
        self._lock = asyncio.Lock()

    @staticmethod
    def engine_args(settings: ServerSettings) -> dict:
        """No LoRA at all; merged weights are reloaded through the worker extension."""
        return dict(enable_lora=False, worker_extension_cls=f"{MergeWorkerExtension.__module__}.MergeWorkerExtension")

    def loaded_versions(self) -> list[int]:
        return sorted(self.sources)

    async def load(self, upload: AdapterUpload, version: int) -> None:
        """Hold the adapter; it is merged when it becomes active or a request asks for it."""
        self.sources[version] = upload

    async def activate(self, version: int) -> None:
        await self._switch(version, activate=True)

    async def discard(self, version: int) -> None:
        """Forget ``version``; where its weights are merged, the next request switches them back."""
        del self.sources[version]

    async def retire(self) -> None:
        keep = kept_versions(
            {v: source.activate for v, source in self.sources.items()},
            self.active_version,
            activated_keep=1,  # one version at a time: the active one
            evaluation_keep=self.settings.adapter_keep,
        )
        for retired in [v for v in self.sources if v not in keep]:
            del self.sources[retired]

    async def sample(
        self, requested, run: Callable[[None], Awaitable[list]], alone: bool = False
    ) -> tuple[int | None, list]:
        """``run(None)`` on the merged weights of the requested version. The version is resolved once
        admitted (a reload is another kind at the gate, so the weights cannot change until this
        request has finished); where another version is merged (an evaluation switched to its
        adapter, or to the base model), the request switches the weights back first. ``alone`` is
        not needed here: the engine runs without vLLM's LoRA layers, whose batching it is for."""
        for _ in range(4):
            async with self.gate.admit(SAMPLE):
                version = self._target(requested)
                if version == self.merged_version:
                    return version, await run(None)
            await self._switch(version)
        raise VersionsKeptSwitching("the merged weights kept switching between versions; retry the request")

    def _target(self, requested) -> int | None:
        if requested == "latest":
            return self.active_version
        if requested is None or requested in self.sources:
            return requested
        if isinstance(requested, int) and requested <= self.loads.highest:
            raise UnknownAdapterVersion(
                f"merge mode serves one version at a time: version {requested} was replaced by version "
                f"{self.active_version} and is no longer served"
            )
        raise UnknownAdapterVersion(f"adapter version {requested} is not loaded; loaded: {self.loaded_versions()}")

    async def _switch(self, version: int | None, activate: bool = False) -> None:
        """Merge ``version`` (None: the base model) into the pristine weights and reload them in
        place once the requests sampling on the current weights have finished; with ``activate``,
        requests arriving meanwhile see it as ``"latest"``."""
        async with self._lock:
            if version == self.merged_version:
                self.active_version = version if activate else self.active_version
                return
            source = None if version is None else self.sources[version]
            tensors, changed = merged_weights(
                self.pristine,
                None if source is None else source.adapter_model,
                {} if source is None else json.loads(source.adapter_config),
                self.merged_modules,
                self.engine.model_config.dtype,
            )
            path = write_weights(tensors, self.adapter_root / "merged.safetensors")
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
