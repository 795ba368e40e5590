"""The trainer's side of the wire: a small httpx client for this project's generator server.

Requests are built from and replies validated with ``shared.protocol``, so both ends share one
definition. The training loop only calls ``generate``, ``push_adapter`` and ``active_version``; a
client for stock vLLM servers (adapters from a shared folder) can offer the same three.
"""

import time

import httpx

from shared.protocol import (
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
)


class ServerError(RuntimeError):
    """The server answered with an error; the message carries its status and reason."""


class GeneratorClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 1800.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ServerError(f"{response.request.method} {response.request.url.path} → {response.status_code}: {response.text[:2000]}")
        return response

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate_json(self._checked(self.http.get("/health")).content)

    def wait_until_healthy(self, timeout: float) -> HealthResponse:
        """Wait for a starting server; fail fast with a clear message when nothing listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except (httpx.TransportError, ServerError) as error:
                if time.monotonic() >= deadline:
                    raise ServerError(f"generator server at {self.base_url} is not reachable or not ready: {error}") from None
                time.sleep(1.0)

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        response = self.http.post("/v1/generate", content=request.model_dump_json(), headers={"content-type": "application/json"})
        return GenerateResponse.model_validate_json(self._checked(response).content)

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        data, files = upload.to_multipart()
        return AdapterLoadResponse.model_validate_json(self._checked(self.http.post("/v1/adapters", data=data, files=files)).content)

    def active_version(self) -> int | None:
        return AdapterListResponse.model_validate_json(self._checked(self.http.get("/v1/adapters")).content).active_version
