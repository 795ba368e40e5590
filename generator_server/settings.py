"""The generator server's settings: one frozen dataclass; ``grpo-math serve`` has one flag per field."""

import os
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ServerSettings:
    model: str = field(default="auto", metadata={"help": "hub id or folder; auto = Qwen2.5-3B-Instruct on CUDA, the embedded SmolLM2-135M-Instruct on CPU"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    api_key: str | None = field(default=None, metadata={"help": "require 'Authorization: Bearer KEY' on /v1/*; also read from GRPO_MATH_API_KEY"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={"help": "weights and activations; auto = the model's own (bf16 for both defaults)"})
    max_model_len: int = field(default=4096, metadata={"help": "prompt + completion tokens per sequence"})
    max_lora_rank: int = field(default=16, metadata={"help": "largest LoRA rank an adapter may have"})
    max_loras: int = field(default=1, metadata={"help": "adapters in one batch; one is enough, since requests of different versions never share a batch"})
    adapter_keep: int = field(default=3, metadata={"help": "adapter versions kept loaded: the active one and the ones before it, for requests in flight and trainers a step or two behind"})
    max_adapter_bytes: int = field(default=512 * 2**20, metadata={"help": "largest adapter_model.safetensors accepted"})
    max_prompts: int = field(default=256, metadata={"help": "most prompts in one /v1/generate request"})
    max_n: int = field(default=64, metadata={"help": "most completions per prompt"})
    max_tokens: int = field(default=4096, metadata={"help": "largest max_tokens a request may ask for"})
    enforce_eager: bool = field(default=False, metadata={"help": "no CUDA graphs / torch.compile (faster start, used in tests)"})
    kv_cache_bytes: int = field(default=2**30, metadata={"help": "CPU: bytes of KV cache (vLLM sees one NUMA node, so it is given explicitly); ignored on GPU"})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "GPU: fraction of memory vLLM may use; ignored on CPU"})
    quantization: Literal["auto", "none", "bitsandbytes", "nf4-dequantized"] = field(default="auto", metadata={"help": "serve the nf4 base the 4-bit trainer trains on: bitsandbytes (GPU), or nf4-dequantized (the nf4 weights stored as bf16; CPU, where vLLM has no bitsandbytes); auto = bitsandbytes on CUDA, nf4-dequantized on CPU; none = the model as it is"})
    cpu_threads: str = field(default="all", metadata={"help": "CPU: cores vLLM binds to ('all' = every core this process may use, else a list like 0-3); vLLM's own default keeps one core free"})
    log_level: str = field(default="info", metadata={"help": "uvicorn and server log level"})

    def resolved_quantization(self, on_cpu: bool) -> str:
        if self.quantization == "auto":
            return "nf4-dequantized" if on_cpu else "bitsandbytes"
        return self.quantization

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get("GRPO_MATH_API_KEY") or None
