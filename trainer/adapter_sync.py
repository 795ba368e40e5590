"""``AdapterSync``: the trainer's one owner of the adapter version.

Every push of the trainer's adapter goes through ``push``: it sends the policy's LoRA weights as
PEFT bytes with version ``"next"`` (the server numbers it, by the rule of ``shared.versions``),
records the ``adapter_version`` the server gave and the ``policy_step`` (optimizer step) that made
it, and tells its subscribers (the producer of ``--max-staleness``) that later batches sample with
it. ``restore`` pushes the same weights again when a server has lost them (it restarted), or
when ``GapWatch`` sees a sampler that does not seem to serve them.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from peft import PeftModel

from trainer import metrics as metric_names
from trainer.generators import Generator
from trainer.policy import adapter_upload

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pushed:
    adapter_version: int
    adapter_bytes: int  # the size of adapter_model.safetensors
    load_ms: float  # the server's check + load time


class AdapterSync:
    def __init__(
        self, generator: Generator, policy: PeftModel, adapter_version: int | None = None, policy_step: int = 0
    ) -> None:
        self.generator = generator
        self.policy = policy
        self.adapter_version = adapter_version  # the newest pushed adapter's version (None: the base model)
        self.policy_step = policy_step  # the optimizer step whose update it holds (0: the initial adapter)
        self.subscribers: list[Callable[[int | None, int], None]] = []

    def subscribe(self, on_push: Callable[[int | None, int], None]) -> None:
        """``on_push(adapter_version, policy_step)`` after every push."""
        self.subscribers.append(on_push)

    def push(self, policy_step: int) -> Pushed:
        """Push the policy's adapter as the next version, made by optimizer step ``policy_step``."""
        upload = adapter_upload(self.policy, version="next")
        reply = self.generator.push_adapter(upload)
        self.adapter_version, self.policy_step = reply.version, policy_step
        for on_push in self.subscribers:
            on_push(reply.version, policy_step)
        return Pushed(reply.version, len(upload.adapter_model), reply.load_ms)

    def restore(self) -> None:
        """A server lost the newest version (it restarted): push the policy's adapter again. Called
        from the trainer's thread, where the policy has not changed since that version was pushed."""
        pushed = self.push(self.policy_step)
        logger.warning("pushed the current adapter again as version %s", pushed.adapter_version)


class SamplerMismatch(RuntimeError):
    """The server samples with something other than the adapter pushed to it."""


@dataclass
class GapWatch:
    """``--max-sampler-gap``: a batch whose sampler–trainer gap is above the bound suggests the
    server samples with something other than the adapter pushed (the base model, say). The adapter
    is pushed again once; a batch sampled with that push or later and still above it stops the run.
    Only a batch sampled with the trainer's own weights (staleness 0) is judged: one sampled a step
    or more earlier (``--max-staleness``) differs by the updates made since, which prove nothing."""

    bound: float | None
    repushed: int | None = None  # the version pushed again, while watching

    def check(self, metrics: dict, sync: AdapterSync, servers: tuple[str, ...]) -> None:
        gap, sampled = metrics.get(metric_names.SAMPLER_GAP), metrics[metric_names.SAMPLED_WITH_ADAPTER]
        if metrics.get(metric_names.STALENESS, 0) > 0:
            return
        after_repush = self.repushed is not None and sampled >= self.repushed
        if self.bound is None or gap is None or gap <= self.bound:
            if gap is not None and after_repush:
                self.repushed = None  # healthy again
            return
        if after_repush:
            raise SamplerMismatch(
                f"the sampler–trainer gap is {gap:.3f} nats per token (--max-sampler-gap {self.bound}) for adapter "
                f"version {sampled} even after pushing it again: {', '.join(servers)} does not serve the adapter "
                "it was pushed"
            )
        if self.repushed is None:
            logger.warning(
                "step %d: sampler–trainer gap %.3f > --max-sampler-gap %s with adapter version %s; pushing it again",
                metrics[metric_names.STEP], gap, self.bound, sampled,
            )  # fmt: skip
            sync.restore()
            self.repushed = sync.adapter_version
