"""The client for ``grpo-math serve``: requests built from, and replies validated with,
``shared.protocol`` (both ends share one definition); adapters pushed as PEFT bytes."""

from shared.protocol import (
    AdapterListResponse,
    AdapterLoadResponse,
    AdapterUpload,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
)
from trainer.generators.http import RetryingHttp


class GrpoMathServer:
    """``Generator`` for ``grpo-math serve``."""

    def __init__(self, base_url: str, **http) -> None:
        self.http = RetryingHttp(base_url, **http)
        self.base_url = base_url

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, retry: bool = True, **arguments) -> bytes:
        return self.http.request(method, path, retry=retry, **arguments).content

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate_json(self._request("GET", "/health", retry=False))

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        body = request.model_dump_json()
        reply = self._request("POST", "/v1/generate", content=body, headers={"content-type": "application/json"})
        return GenerateResponse.model_validate_json(reply)

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        data, files = upload.to_multipart()
        return AdapterLoadResponse.model_validate_json(self._request("POST", "/v1/adapters", data=data, files=files))

    def active_version(self) -> int | None:
        return AdapterListResponse.model_validate_json(self._request("GET", "/v1/adapters")).active_version
