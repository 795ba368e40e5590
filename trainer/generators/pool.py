"""``ServerPool``: several servers of one kind behind the ``Generator`` interface."""

import time
from concurrent.futures import ThreadPoolExecutor

from shared.protocol import (
    AdapterLoadResponse,
    AdapterUpload,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ServerLimits,
)
from trainer.generators.http import GeneratorError
from trainer.generators.interface import Generator


class ServerPool:
    """Each request's prompts are split into contiguous runs of whole groups, one run per server,
    sampled at once; every adapter reaches every server, under the same version, before
    ``push_adapter`` returns (so before any of them samples with it)."""

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
