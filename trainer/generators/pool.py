"""``ServerPool``: several servers of one kind behind the ``Generator`` interface, surviving the
loss of some of them.

Each request's prompts are split into contiguous runs of whole groups, one run per server,
sampled at once; every adapter reaches every server, under the same version, before
``push_adapter`` returns (so before any of them samples with it).

A server whose request still fails once its client's retries are spent (unreachable, or 5xx, for
``--server-retry-seconds``) is *lost*: the pool logs it, samples its share of the groups on the
others, and goes on without it. Before each request it asks a lost server's ``/health`` again (at
most every ``recheck_seconds``); once that answers, the server gets the newest adapter under the
pool's version and is taken back. The pool fails only when no server is left.
"""

import logging
import threading
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

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 10.0  # how often, at most, a lost server's /health is asked again


def reply_or_error(call, *args):
    """``call(*args)``, or the ``GeneratorError`` it raised (the pool decides what a failure means)."""
    try:
        return call(*args)
    except GeneratorError as error:
        return error


def is_loss(error: BaseException) -> bool:
    """Unreachable or failing (5xx) after the retries: the server, not the request, is the problem."""
    return isinstance(error, GeneratorError) and (error.status is None or error.status >= 500)


class ServerPool:
    def __init__(self, members: list[Generator], recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.members = members
        self.recheck_seconds = recheck_seconds
        self.lost: dict[int, float] = {}  # member index -> when its health was last asked
        self.newest: AdapterUpload | None = None  # the newest activated adapter, under the pool's version
        self._taking_back = threading.Lock()  # the trainer's and the producer's threads both call in
        self.threads = ThreadPoolExecutor(max_workers=len(members))

    def close(self) -> None:
        self.threads.shutdown()
        for member in self.members:
            member.close()

    def _name(self, index: int) -> str:
        return getattr(self.members[index], "base_url", f"server {index}")

    def _serving(self) -> list[int]:
        """The members not lost, after taking back any lost one that is healthy again."""
        with self._taking_back:
            for index, asked in list(self.lost.items()):
                if time.monotonic() - asked >= self.recheck_seconds:
                    self._try_to_take_back(index)
        serving = [index for index in range(len(self.members)) if index not in self.lost]
        if not serving:
            raise self._all_lost()
        return serving

    def _all_lost(self) -> GeneratorError:
        return GeneratorError(f"every server of the pool is lost: {', '.join(map(self._name, self.lost))}")

    def _try_to_take_back(self, index: int) -> None:
        member = self.members[index]
        try:
            member.health()
            if self.newest is not None:  # the adapter it lost, before it samples anything
                self._give_newest(member)
        except GeneratorError as error:
            self.lost[index] = time.monotonic()
            logger.info("%s is still lost (%s)", self._name(index), str(error)[:200])
            return
        del self.lost[index]
        logger.warning("%s is healthy again: taken back into the pool", self._name(index))

    def _give_newest(self, member: Generator) -> None:
        """Push the newest adapter under the pool's version; a server that kept its adapters while
        away may have it already (409: not greater than its highest version)."""
        try:
            member.push_adapter(self.newest)
        except GeneratorError as error:
            if error.status != 409 or member.active_version() != self.newest.version:
                raise

    def _lose(self, index: int, error: BaseException) -> None:
        self.lost[index] = time.monotonic()
        logger.warning("%s is lost (%s); the other servers take its share", self._name(index), str(error)[:300])

    def _on_each(self, indices: list[int], call) -> dict[int, object]:
        """``call(member)`` on each of ``indices`` at once: index → reply or the error it raised."""
        return dict(zip(indices, self.threads.map(lambda index: reply_or_error(call, self.members[index]), indices)))

    def health(self) -> HealthResponse:
        serving = self._serving()
        healths = list(self.threads.map(lambda index: self.members[index].health(), serving))
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
        """The groups in prompt order; a run of prompts whose server is lost is sampled again on
        the servers left."""
        groups: dict[int, list] = {}  # first prompt index of a run -> its groups
        versions = set()
        pending = [(0, len(request.prompts))]
        while pending:
            serving = self._serving()
            runs = [run for start, end in pending for run in split(start, end, len(serving))]
            jobs = [(serving[number % len(serving)], start, end) for number, (start, end) in enumerate(runs)]
            pending = []
            for (index, start, end), reply in zip(
                jobs, self.threads.map(lambda job: self._sample(request, *job), jobs)
            ):
                if isinstance(reply, GenerateResponse):
                    groups[start] = reply.groups
                    versions.add(reply.adapter_version)
                elif is_loss(reply):
                    if index not in self.lost:
                        self._lose(index, reply)
                    pending.append((start, end))
                else:
                    raise reply
        if len(versions) != 1:
            raise GeneratorError(f"the servers sampled with different adapter versions: {sorted(map(str, versions))}")
        return GenerateResponse(
            adapter_version=versions.pop(), groups=[group for start in sorted(groups) for group in groups[start]]
        )

    def _sample(self, request: GenerateRequest, index: int, start: int, end: int):
        part = request.model_copy(update={"prompts": request.prompts[start:end]})
        return reply_or_error(self.members[index].generate, part)

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        """Push to every serving member; where "next" gave them different versions (another client
        pushed to one of them), push again under the highest, so all agree. A lost member gets the
        newest activated adapter when it is taken back."""
        started = time.perf_counter()
        replies = self._pushed(self._serving(), upload)
        version = max(reply.version for reply in replies.values())
        again = upload.model_copy(update={"version": version})
        behind = [index for index, reply in replies.items() if reply.version != version]
        self._pushed(behind, again, require_one=False)
        if upload.activate:
            self.newest = again
        return AdapterLoadResponse(
            version=version,
            active_version=version if upload.activate else next(iter(replies.values())).active_version,
            load_ms=(time.perf_counter() - started) * 1000,
        )

    def _pushed(self, indices: list[int], upload: AdapterUpload, require_one: bool = True) -> dict:
        """index → reply for the members that loaded ``upload``; lost ones are marked lost."""
        replies = {}
        for index, reply in self._on_each(indices, lambda member: member.push_adapter(upload)).items():
            if isinstance(reply, AdapterLoadResponse):
                replies[index] = reply
            elif is_loss(reply):
                self._lose(index, reply)
            else:
                raise reply
        if require_one and not replies:
            raise self._all_lost()
        return replies

    def active_version(self) -> int | None:
        replies = self._on_each(self._serving(), lambda member: member.active_version()).values()
        versions = {reply for reply in replies if not isinstance(reply, GeneratorError)}
        return versions.pop() if len(versions) == 1 else None


def split(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous runs of [start, end), as even as can be, at most ``parts`` of them, none empty.

    >>> split(0, 5, 2), split(3, 4, 3)
    ([(0, 2), (2, 5)], [(3, 4)])
    """
    count = end - start
    bounds = [start + count * index // parts for index in range(parts + 1)]
    return [(low, high) for low, high in zip(bounds, bounds[1:]) if high > low]
