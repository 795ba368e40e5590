"""Lora mode (``--adapter-mode lora``): every pushed version is a vLLM LoRA, several served at once.

Each version is written to a private folder and added under a **new** name and int id: vLLM keeps
serving a cached id's old weights, and a reused name serves stale prefix-cache entries. Requests
for different versions (the base model counts as one) never share a batch (``BatchGate``). The
versions the keep-window of ``shared.versions`` names stay loaded; older ones are removed from
the engine once no request uses them.
"""

import itertools
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from vllm.lora.request import LoRARequest
from vllm.v1.engine.async_llm import AsyncLLM

from generator_server.adapters import AdapterRejected, UnknownAdapterVersion
from generator_server.gate import BatchGate
from generator_server.settings import ServerSettings
from shared.protocol import AdapterUpload
from shared.versions import kept_versions


@dataclass
class LoadedAdapter:
    version: int
    lora_request: LoRARequest
    folder: Path
    activated: bool  # pushed to become the active version (training), not only loaded (evaluation)
    in_flight: int = 0  # requests sampling with it now
    pending: bool = False  # loaded to become active, not yet proven applied: outside the keep-window


class LoraMode:
    name = "lora"

    def __init__(self, settings: ServerSettings, engine: AsyncLLM, adapter_root: Path) -> None:
        self.settings, self.engine, self.adapter_root = settings, engine, adapter_root
        self.adapters: dict[int, LoadedAdapter] = {}
        self.active_version: int | None = None
        self.gate = BatchGate()
        # Never reused (a cached id keeps its old weights), and above 1..max_loras, the ids vLLM's
        # own warm-up gives its dummy LoRAs.
        self._lora_ids = itertools.count(settings.max_loras + 1)

    @staticmethod
    def engine_args(settings: ServerSettings) -> dict:
        return dict(
            enable_lora=True,
            max_lora_rank=settings.max_lora_rank,
            max_loras=settings.max_loras,
            max_cpu_loras=settings.adapter_keep + 1,
        )

    def loaded_versions(self) -> list[int]:
        return sorted(self.adapters)

    async def load(self, upload: AdapterUpload, version: int) -> None:
        lora_id = next(self._lora_ids)
        folder = upload.write_to(self.adapter_root / f"v{version}-id{lora_id}")
        lora_request = LoRARequest(lora_name=folder.name, lora_int_id=lora_id, lora_path=str(folder))
        try:
            added = await self.engine.add_lora(lora_request)
        except Exception as error:  # vLLM's own checks; the previous version stays active
            shutil.rmtree(folder, ignore_errors=True)
            raise AdapterRejected(f"vLLM could not load the adapter: {error}") from error
        if not added:  # e.g. the id was already taken: vLLM would serve whatever holds it
            shutil.rmtree(folder, ignore_errors=True)
            raise AdapterRejected(f"vLLM did not load the adapter as LoRA id {lora_id} (add_lora returned False)")
        self.adapters[version] = LoadedAdapter(
            version, lora_request, folder, activated=upload.activate, pending=upload.activate
        )

    async def activate(self, version: int) -> None:
        self.adapters[version].pending = False
        self.active_version = version

    async def discard(self, version: int) -> None:
        adapter = self.adapters.pop(version)
        await self.engine.remove_lora(adapter.lora_request.lora_int_id)
        shutil.rmtree(adapter.folder, ignore_errors=True)

    async def sample(
        self, requested, run: Callable[[LoRARequest | None], Awaitable[list]], alone: bool = False
    ) -> tuple[int | None, list]:
        """``run(lora_request)`` through the requested version's LoRA (``"latest"``: the active one;
        ``None``: the base model); requests of other versions wait at the gate, and every other
        request when ``alone`` (a kind of its own at the gate)."""
        version = self.active_version if requested == "latest" else requested
        if version is not None and version not in self.adapters:
            raise UnknownAdapterVersion(f"adapter version {version} is not loaded; loaded: {self.loaded_versions()}")
        adapter = None if version is None else self.adapters[version]
        if adapter is not None:
            adapter.in_flight += 1  # no await since resolving: pruning cannot slip in between
        try:
            async with self.gate.admit(object() if alone else version):
                return version, await run(None if adapter is None else adapter.lora_request)
        finally:
            if adapter is not None:
                adapter.in_flight -= 1
                await self.retire()

    async def retire(self) -> None:
        """Everything outside the keep-window that no request is using."""
        keep = kept_versions(
            {version: adapter.activated for version, adapter in self.adapters.items() if not adapter.pending},
            self.active_version,
            activated_keep=self.settings.adapter_keep,
            evaluation_keep=self.settings.adapter_keep,
        )
        retired = [a for v, a in self.adapters.items() if v not in keep and a.in_flight == 0 and not a.pending]
        for adapter in retired:
            del self.adapters[adapter.version]
        for adapter in retired:
            await self.engine.remove_lora(adapter.lora_request.lora_int_id)
            shutil.rmtree(adapter.folder, ignore_errors=True)
