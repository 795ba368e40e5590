"""The trainer's side of the wire: the one small interface through which the training loop, the
evaluation and the demo talk to a generator, and the client for this project's server.

``Generator`` is what they need: generate groups, push an adapter (getting back the version to
sample it with), the active version, and health with the server's limits. ``GrpoMathServer``
implements it over HTTP for ``grpo-math serve``; requests are built from and replies validated with
``shared.protocol``, so both ends share one definition.
"""

import time
from typing import Protocol

import httpx

from shared.protocol import (
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
)


class GeneratorError(RuntimeError):
    """The generator answered with an error, or could not be reached; the message says which."""


class Generator(Protocol):
    def health(self) -> HealthResponse:
        """The served model, the active adapter version and the server's limits."""

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


class GrpoMathServer:
    """``Generator`` for ``grpo-math serve``: JSON requests, adapters pushed as PEFT bytes."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 1800.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **arguments) -> bytes:
        try:
            response = self.http.request(method, path, **arguments)
        except httpx.TransportError as error:
            raise GeneratorError(f"{method} {self.base_url}{path}: {type(error).__name__}: {error}") from error
        if response.status_code >= 400:
            raise GeneratorError(f"{method} {self.base_url}{path} → {response.status_code}: {response.text[:2000]}")
        return response.content

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate_json(self._request("GET", "/health"))

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        body = request.model_dump_json()
        reply = self._request("POST", "/v1/generate", content=body, headers={"content-type": "application/json"})
        return GenerateResponse.model_validate_json(reply)

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        data, files = upload.to_multipart()
        return AdapterLoadResponse.model_validate_json(self._request("POST", "/v1/adapters", data=data, files=files))

    def active_version(self) -> int | None:
        return AdapterListResponse.model_validate_json(self._request("GET", "/v1/adapters")).active_version
