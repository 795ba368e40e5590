"""``Generator``: the one small interface through which the training loop, the evaluation and the
demo talk to a generator, whichever server is behind it."""

import time
from typing import Protocol

from shared.protocol import AdapterLoadResponse, AdapterUpload, GenerateRequest, GenerateResponse, HealthResponse
from trainer.generators.http import GeneratorError


class Generator(Protocol):
    def health(self) -> HealthResponse:
        """The served model, the active adapter version and the server's limits (changes nothing)."""

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        """One group of ``request.n`` completions per prompt, tagged with the adapter version that made them."""

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        """Load an adapter; the reply's ``version`` is the one to ask for when sampling with it."""

    def active_version(self) -> int | None:
        """The version ``"latest"`` requests use (None: the base model)."""

    def close(self) -> None: ...


def wait_until_healthy(generator: Generator, timeout: float) -> HealthResponse:
    """Wait for a starting generator; after ``timeout`` seconds raise ``GeneratorError`` saying why."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return generator.health()
        except GeneratorError as error:
            if time.monotonic() >= deadline:
                raise GeneratorError(f"not reachable or not ready: {error}") from None
            time.sleep(1.0)
