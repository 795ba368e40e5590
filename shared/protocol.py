"""The wire protocol between the trainer and the generator server, defined once.

The server's routes validate requests with these models and build replies from them; the
trainer's client builds requests from them and validates replies with them. Every model forbids
unknown fields and is strict (``"8"`` is not an int), so a malformed request is a 422 with a
message rather than a surprise.

Routes (``/v1/*`` need ``Authorization: Bearer <key>`` when the server has an API key):

- ``GET /health`` → ``HealthResponse`` (503 while the engine starts)
- ``POST /v1/generate`` ``GenerateRequest`` → ``GenerateResponse``
- ``POST /v1/adapters`` multipart ``AdapterUpload`` → ``AdapterLoadResponse``
- ``GET /v1/adapters`` → ``AdapterListResponse``
- ``GET /metrics`` → Prometheus text

Limits that depend on the server (how many prompts, how large ``n`` and ``max_tokens``, how large
an adapter) are passed as validation context: ``GenerateRequest.model_validate_json(body,
context=GenerateLimits(...))``. Without a context only the fixed limits below apply.
"""

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

MAX_N = 64  # completions per prompt (a "group")
MAX_PROMPTS = 1024
MAX_SEED = 2**63 - 1


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerateLimits:
    """The server's limits, checked by ``GenerateRequest`` when given as validation context."""

    max_prompts: int
    max_n: int
    max_tokens: int


class GenerateRequest(StrictModel):
    prompts: list[list[ChatMessage] | str] = Field(
        min_length=1,
        max_length=MAX_PROMPTS,
        description="chat messages (the server applies the model's chat template with the "
        "generation prompt) or a plain string used as-is",
    )
    n: int = Field(default=1, ge=1, le=MAX_N, description="completions per prompt")
    max_tokens: int = Field(default=256, ge=1, description="most completion tokens per completion")
    temperature: float = Field(default=1.0, ge=0.0, description="0 is greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="makes sampling reproducible")
    adapter_version: Literal["latest"] | int | None = Field(
        default="latest", description='"latest" = the active adapter, an int = that loaded version, null = base model'
    )

    @model_validator(mode="after")
    def _within_server_limits(self, info: ValidationInfo) -> "GenerateRequest":
        limits = info.context
        if isinstance(limits, GenerateLimits):
            if len(self.prompts) > limits.max_prompts:
                raise ValueError(f"at most {limits.max_prompts} prompts per request, got {len(self.prompts)}")
            if self.n > limits.max_n:
                raise ValueError(f"n must be at most {limits.max_n}, got {self.n}")
            if self.max_tokens > limits.max_tokens:
                raise ValueError(f"max_tokens must be at most {limits.max_tokens}, got {self.max_tokens}")
        return self


class SampledCompletion(StrictModel):
    text: str
    token_ids: list[int]
    logprobs: list[float] = Field(
        description="the sampler's log-probability of each chosen token, under the distribution it "
        "sampled from (after temperature)"
    )
    finish_reason: Literal["stop", "length"]

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> "SampledCompletion":
        if len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"{len(self.logprobs)} logprobs for {len(self.token_ids)} tokens")
        return self


class CompletionGroup(StrictModel):
    prompt_token_ids: list[int]
    completions: list[SampledCompletion]


class GenerateResponse(StrictModel):
    adapter_version: int | None = Field(description="the adapter version that produced every completion")
    groups: list[CompletionGroup] = Field(description="one group per prompt, in order")


@dataclass(frozen=True)
class AdapterLimits:
    max_adapter_bytes: int


class AdapterUpload(StrictModel):
    """``POST /v1/adapters`` as multipart form: two text fields and one file field.

    ``adapter_config`` is PEFT's ``adapter_config.json`` text, ``adapter_model`` the bytes of PEFT's
    ``adapter_model.safetensors``.
    """

    version: int = Field(ge=0, le=MAX_SEED, description="strictly greater than the active version")
    adapter_config: str = Field(min_length=2, max_length=1_000_000)
    adapter_model: bytes = Field(min_length=8)

    @model_validator(mode="after")
    def _within_size_limit(self, info: ValidationInfo) -> "AdapterUpload":
        limits = info.context
        if isinstance(limits, AdapterLimits) and len(self.adapter_model) > limits.max_adapter_bytes:
            raise ValueError(f"adapter_model is {len(self.adapter_model)} bytes, the limit is {limits.max_adapter_bytes}")
        return self

    def to_multipart(self) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
        """``(data, files)`` for ``httpx.post(..., data=data, files=files)``."""
        data = {"version": str(self.version), "adapter_config": self.adapter_config}
        files = {"adapter_model": ("adapter_model.safetensors", self.adapter_model, "application/octet-stream")}
        return data, files

    @classmethod
    def from_multipart(cls, form: dict[str, str | bytes], limits: AdapterLimits | None = None) -> "AdapterUpload":
        """Validate the parsed form (text fields as ``str``, files as ``bytes``). The version
        arrives as text, so it is parsed here; ``adapter_config`` may come as text or as a file
        (``curl -F adapter_config=@adapter_config.json``); any other type or extra field is refused."""
        fields = dict(form)
        if isinstance(fields.get("adapter_config"), bytes):
            try:
                fields["adapter_config"] = fields["adapter_config"].decode("utf-8")
            except UnicodeDecodeError:
                pass  # left as bytes: validation reports "adapter_config: Input should be a valid string"
        version = fields.get("version")
        if isinstance(version, str):
            try:
                fields["version"] = int(version)
            except ValueError:
                pass  # left as text: validation reports "version: Input should be a valid integer"
        return cls.model_validate(fields, context=limits)


class AdapterLoadResponse(StrictModel):
    version: int
    load_ms: float


class AdapterListResponse(StrictModel):
    active_version: int | None
    loaded_versions: list[int]


class HealthResponse(StrictModel):
    status: Literal["ok"]
    model: str
    adapter_version: int | None


class ErrorResponse(StrictModel):
    detail: str | list
