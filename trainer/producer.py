"""Where each step's batch comes from (``Batches``), and asynchronous GRPO's one moving part: a
producer that samples the coming steps' groups while the trainer learns from the current one
(``grpo-math train --max-staleness S``, S ≥ 1).

With S = 0 each batch is sampled when its step starts, with the newest adapter. With S ≥ 1 one
background thread samples step after step, each with the newest adapter the trainer has pushed,
and hands the batches over in step order through a queue. It starts sampling step t only once the
trainer has taken step t − S (S slots, each freed by a batch taken), so a batch is at most S
optimizer steps older than the policy that trains on it (its staleness; a batch older than that
is dropped, counted and sampled again). The importance weights π_trainer/π_sampler use the
sampler's own logprobs, so they correct for the staleness as for any sampler–trainer gap. Only
HTTP happens in the producer's thread: the model and the optimizer stay in the trainer's.

A server that lost its adapters (it restarted) answers 404 for the version asked for; the batch is
then sampled again after the trainer, which owns the policy, has pushed its current adapter again
(``AdapterSync.restore``).
"""

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from shared.protocol import GenerateResponse
from trainer.adapter_sync import AdapterSync
from trainer.generators import GeneratorError

logger = logging.getLogger(__name__)

Sample = Callable[[int, int | None], GenerateResponse]  # (step, adapter_version) → the step's groups


@dataclass(frozen=True)
class SampledBatch:
    step: int
    reply: GenerateResponse
    adapter_version: int | None  # the server's version that sampled it (None: the base model)
    policy_step: int  # the optimizer step whose update that adapter holds


class Batches:
    """Each step's batch: sampled now with the newest adapter, or taken from the producer."""

    def __init__(self, sample: Sample, sync: AdapterSync, steps: range, max_staleness: int) -> None:
        self.sample, self.sync, self.max_staleness = sample, sync, max_staleness
        self.dropped = 0  # batches too stale to train on
        self.producer = None
        if max_staleness > 0:  # batches in flight at a resume are sampled again
            self.producer = BatchProducer(sample, steps, max_staleness, sync.adapter_version, sync.policy_step)
            sync.subscribe(self.producer.publish)

    def take(self, step: int) -> SampledBatch:
        if self.producer is not None:
            batch = self.producer.take(step, self.sync.restore)
            if self.sync.policy_step - batch.policy_step <= self.max_staleness:
                return batch
            self.dropped += 1  # never trained on: sampled again, now, with the newest adapter
        return self.now(step)

    def now(self, step: int) -> SampledBatch:
        """Sample with the newest adapter; a server that lost it (restarted) gets it again."""
        try:
            return self._sample_newest(step)
        except GeneratorError as error:
            if error.status != 404 or self.sync.adapter_version is None:
                raise
            logger.warning("the server no longer has adapter %s (%s)", self.sync.adapter_version, error)
            self.sync.restore()
            return self._sample_newest(step)

    def _sample_newest(self, step: int) -> SampledBatch:
        version, policy_step = self.sync.adapter_version, self.sync.policy_step
        return SampledBatch(step, self.sample(step, version), version, policy_step)

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()


class BatchProducer:
    def __init__(
        self, sample: Sample, steps: range, max_staleness: int, adapter_version: int | None, policy_step: int
    ) -> None:
        """``sample(step, adapter_version)`` samples the groups of ``step`` (an HTTP request)."""
        self.sample = sample
        self.batches: queue.Queue[SampledBatch] = queue.Queue()
        self.slots = threading.Semaphore(max_staleness)  # batches sampled and not yet taken, at most S
        self.newest = (adapter_version, policy_step)
        self.version_pushed = threading.Event()
        self.missing_version = threading.Event()  # the server answered 404 for the newest version
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(steps,), name="batch-producer", daemon=True)
        self.thread.start()

    def publish(self, adapter_version: int | None, policy_step: int) -> None:
        """After each push (``AdapterSync.subscribe``): later batches sample with this version."""
        self.newest = (adapter_version, policy_step)
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
            adapter_version, policy_step = self.newest
            try:
                reply = self.sample(step, adapter_version)
                return SampledBatch(step, reply, adapter_version, policy_step)
            except GeneratorError as error:
                if error.status != 404 or adapter_version is None:
                    raise
                if self.newest[0] == adapter_version:  # not replaced meanwhile: the server lost it
                    self.version_pushed.clear()
                    self.missing_version.set()
                    self.version_pushed.wait(timeout=5.0)
        raise RuntimeError("the producer was stopped")
