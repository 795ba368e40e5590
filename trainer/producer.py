"""Asynchronous GRPO's one moving part: a producer that samples the coming steps' groups while the
trainer learns from the current one (``grpo-math train --max-staleness S``, S ≥ 1).

One background thread samples step after step, each with the newest adapter the trainer has
pushed, and hands the batches over in step order through a queue. It starts sampling step t only
once the trainer has taken step t − S (S slots, each freed by a batch taken), so a batch is at
most S optimizer steps older than the policy that trains on it (its staleness; the trainer drops
and re-samples any batch older than that). The importance weights π_trainer/π_sampler use
the sampler's own logprobs, so they correct for the staleness as for any sampler–trainer gap.
Only HTTP happens in this thread: the model and the optimizer stay in the trainer's.

A server that lost its adapters (it restarted) answers 404 for the version asked for; the producer
then waits, and the trainer, which owns the policy, pushes its current adapter again (``take``).
"""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from shared.protocol import GenerateResponse
from trainer.generators import GeneratorError


@dataclass(frozen=True)
class SampledBatch:
    step: int
    reply: GenerateResponse
    adapter_version: int | None  # the server's version that sampled it (None: the base model)
    policy_version: int  # the optimizer steps behind that adapter


class BatchProducer:
    def __init__(
        self,
        sample: Callable[[int, int | None], GenerateResponse],
        steps: range,
        max_staleness: int,
        adapter_version: int | None,
        policy_version: int,
    ) -> None:
        """``sample(step, adapter_version)`` samples the groups of ``step`` (an HTTP request)."""
        self.sample = sample
        self.batches: queue.Queue[SampledBatch] = queue.Queue()
        self.slots = threading.Semaphore(max_staleness)  # batches sampled and not yet taken, at most S
        self.newest = (adapter_version, policy_version)
        self.version_pushed = threading.Event()
        self.missing_version = threading.Event()  # the server answered 404 for the newest version
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(steps,), name="batch-producer", daemon=True)
        self.thread.start()

    def publish(self, adapter_version: int | None, policy_version: int) -> None:
        """Called by the trainer after each push: later batches sample with this version."""
        self.newest = (adapter_version, policy_version)
        self.missing_version.clear()
        self.version_pushed.set()

    def take(self, step: int, restore: Callable[[], None]) -> SampledBatch:
        """The batch of ``step``, waiting for it; ``restore()`` pushes the policy's adapter again and
        publishes it (trainer thread) when the server has lost the version the producer asks for."""
        while True:
            try:
                batch = self.batches.get(timeout=1.0)
                assert batch.step == step, f"the producer sampled step {batch.step}, the trainer is at {step}"
                self.slots.release()
                return batch
            except queue.Empty:
                if self.error is not None:
                    raise self.error from None
                if self.missing_version.is_set():
                    restore()

    def close(self) -> None:
        self.stopping.set()
        self.version_pushed.set()
        self.thread.join()

    def _produce(self, steps: range) -> None:
        try:
            for step in steps:
                while not self.slots.acquire(timeout=0.5):  # wait until the trainer has taken step − S
                    if self.stopping.is_set():
                        return
                self.batches.put(self._sample_with_newest(step))
        except BaseException as error:  # handed to the trainer by take()
            self.error = error

    def _sample_with_newest(self, step: int) -> SampledBatch:
        while not self.stopping.is_set():
            adapter_version, policy_version = self.newest
            try:
                reply = self.sample(step, adapter_version)
                return SampledBatch(step, reply, adapter_version, policy_version)
            except GeneratorError as error:
                if error.status != 404 or adapter_version is None:
                    raise
                if self.newest[0] == adapter_version:  # not replaced meanwhile: the server lost it
                    self.version_pushed.clear()
                    self.missing_version.set()
                    self.version_pushed.wait(timeout=5.0)
        raise RuntimeError("the producer was stopped")
