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
an adapter) are one ``ServerLimits``, reported in ``/health`` and passed as validation context:
``GenerateRequest.model_validate_json(body, context=limits)``. Without a context only the fixed
limits below apply.

Adapter versions follow one rule, kept by the server: every adapter it loads gets a version
greater than every version it has loaded before (the next one, unless the push names a greater
one), so a version never means two adapters. A push either becomes the active adapter
(``"latest"``) or, with ``activate=false``, is only loaded, to be asked for by its version: an
evaluation pushes that way, so a training run on the same server is never disturbed.
"""

import contextlib
import hashlib
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

MAX_N = 64  # completions per prompt (a "group")
MAX_PROMPTS = 1024
MAX_SEED = 2**63 - 1


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ServerLimits(StrictModel):
    """What a server accepts, reported in ``/health`` (a client checks its settings against it before
    it starts work) and passed as validation context to ``GenerateRequest`` and ``AdapterUpload``."""

    max_prompts: int = Field(description="most prompts in one /v1/generate request")
    max_n: int = Field(description="most completions per prompt")
    max_tokens: int = Field(description="largest max_tokens a request may ask for")
    max_model_len: int = Field(description="prompt + completion tokens per sequence")
    max_lora_rank: int = Field(description="largest LoRA rank an adapter may have")
    max_adapter_bytes: int = Field(description="largest adapter_model.safetensors accepted")
    adapter_keep: int = Field(description="adapter versions kept loaded for requests in flight")


class GenerateRequest(StrictModel):
    prompts: list[Annotated[list[ChatMessage], Field(min_length=1)] | str] = Field(
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
        if isinstance(limits, ServerLimits):
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


class AdapterUpload(StrictModel):
    """``POST /v1/adapters`` as multipart form: text fields ``version`` and ``activate``,
    and the adapter as PEFT writes it: ``adapter_config`` (the text of ``adapter_config.json``) and
    ``adapter_model`` (the bytes of ``adapter_model.safetensors``).

    >>> import tempfile
    >>> upload = AdapterUpload(version="next", adapter_config="{}", adapter_model=b"12345678")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     again = AdapterUpload.from_folder(upload.write_to(folder), activate=False)
    >>> again == upload.model_copy(update={"activate": False, "adapter_sha256": again.adapter_sha256})
    True
    >>> again.digest_matches(), again.model_copy(update={"adapter_model": b"87654321"}).digest_matches()
    (True, False)
    """

    CONFIG_FILE: ClassVar[str] = "adapter_config.json"
    MODEL_FILE: ClassVar[str] = "adapter_model.safetensors"

    version: Literal["next"] | Annotated[int, Field(ge=1, le=MAX_SEED)] = Field(
        description='"next": the server gives the next version; a number must exceed every version the server '
        "has loaded"
    )
    activate: bool = Field(
        default=True, description="become the active ('latest') adapter; false: only load it (evaluation)"
    )
    adapter_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="sha256 of adapter_model's bytes; the server refuses the push where they differ "
        "(every client of this project sends it)",
    )
    adapter_config: str = Field(min_length=2, max_length=1_000_000)
    adapter_model: bytes = Field(min_length=8)

    @model_validator(mode="after")
    def _within_size_limit(self, info: ValidationInfo) -> "AdapterUpload":
        limits = info.context
        if isinstance(limits, ServerLimits) and len(self.adapter_model) > limits.max_adapter_bytes:
            raise ValueError(
                f"adapter_model is {len(self.adapter_model)} bytes, the limit is {limits.max_adapter_bytes}"
            )
        return self

    @classmethod
    def is_adapter_folder(cls, folder: str | Path) -> bool:
        return (Path(folder) / cls.CONFIG_FILE).is_file() and (Path(folder) / cls.MODEL_FILE).is_file()

    @classmethod
    def from_folder(cls, folder: str | Path, version: int | Literal["next"] = "next", **fields) -> "AdapterUpload":
        """The adapter PEFT saved in ``folder`` (``save_pretrained``), with its digest, plus
        ``version``/``activate``."""
        adapter_model = (Path(folder) / cls.MODEL_FILE).read_bytes()
        return cls(
            version=version,
            adapter_config=(Path(folder) / cls.CONFIG_FILE).read_text(),
            adapter_model=adapter_model,
            adapter_sha256=hashlib.sha256(adapter_model).hexdigest(),
            **fields,
        )

    def digest_matches(self) -> bool:
        return self.adapter_sha256 is None or hashlib.sha256(self.adapter_model).hexdigest() == self.adapter_sha256

    def write_to(self, folder: str | Path) -> Path:
        """Write the two PEFT files into ``folder`` (created if needed), where PEFT and vLLM load them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.CONFIG_FILE).write_text(self.adapter_config)
        (folder / self.MODEL_FILE).write_bytes(self.adapter_model)
        return folder

    def to_multipart(self) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
        """``(data, files)`` for ``httpx.post(..., data=data, files=files)``."""
        data = {
            "version": str(self.version),
            "activate": str(self.activate).lower(),
            "adapter_config": self.adapter_config,
        }
        if self.adapter_sha256 is not None:
            data["adapter_sha256"] = self.adapter_sha256
        files = {"adapter_model": (self.MODEL_FILE, self.adapter_model, "application/octet-stream")}
        return data, files

    @classmethod
    def from_multipart(cls, form: dict[str, str | bytes], limits: ServerLimits | None = None) -> "AdapterUpload":
        """Validate the parsed form (text fields as ``str``, files as ``bytes``). ``version`` and
        ``activate`` arrive as text, so they are parsed here; ``adapter_config`` may come as text or
        as a file (``curl -F adapter_config=@adapter_config.json``); any other type or extra field
        is refused."""
        fields = dict(form)
        # Anything that does not convert is left as it came, and validation names the field.
        if isinstance(fields.get("adapter_config"), bytes):
            with contextlib.suppress(UnicodeDecodeError):
                fields["adapter_config"] = fields["adapter_config"].decode("utf-8")
        if isinstance(fields.get("version"), str) and fields["version"].isdigit():
            fields["version"] = int(fields["version"])
        activate = fields.get("activate")
        if isinstance(activate, str) and activate.lower() in ("true", "false"):
            fields["activate"] = activate.lower() == "true"
        return cls.model_validate(fields, context=limits)


class AdapterLoadResponse(StrictModel):
    version: int = Field(description="the version the adapter was loaded as")
    active_version: int | None = Field(description="the active version after this push")
    load_ms: float


class AdapterListResponse(StrictModel):
    active_version: int | None
    loaded_versions: list[int]


class HealthResponse(StrictModel):
    status: Literal["ok"]
    model: str
    adapter_version: int | None = Field(description="the active adapter version (null: the base model)")
    adapter_mode: Literal["lora", "merge"] = Field(
        description="lora: each version a LoRA, several served at once; merge: one version merged into the weights"
    )
    limits: ServerLimits


class ErrorResponse(StrictModel):
    detail: str | list
