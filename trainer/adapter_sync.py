"""``AdapterSync``: the trainer's one owner of the adapter version.

Every push of the trainer's adapter goes through ``push``: it sends the policy's LoRA weights as
PEFT bytes with version ``"next"`` (the server numbers it, by the rule of ``shared.versions``),
records the ``adapter_version`` the server gave and the ``policy_step`` (optimizer step) that made
it, and tells its subscribers (the producer of ``--max-staleness``) that later batches sample with
it. ``restore`` pushes the same weights again when a server has lost them (it restarted).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from peft import PeftModel

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
