"""Checks on a pushed LoRA adapter, before vLLM ever sees it.

An adapter arrives as PEFT's two files: ``adapter_config.json`` and ``adapter_model.safetensors``.
It is accepted only if the safetensors parse, every tensor is a ``lora_A``/``lora_B`` weight of a
linear layer the base model has, the shapes fit that layer (A: ``r × in``, B: ``out × r``), and the
rank is the config's ``r`` and at most the server's ``--max-lora-rank``. Anything else is an
``AdapterRejected`` with a message saying what is wrong, and the server keeps serving the adapter
it had.
"""

import json
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")


class AdapterRejected(ValueError):
    """The pushed adapter is not one this server can load; the message says why."""


def linear_layer_shapes(model_path: str) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` for every linear layer inside the decoder
    layers, from the model's config alone (built on the meta device: no weights are read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }


def check_adapter(
    adapter_config: str, adapter_model: bytes, layer_shapes: dict[str, tuple[int, int]], max_rank: int
) -> int:
    """Raise ``AdapterRejected`` unless the adapter fits the base model; return its rank."""
    try:
        config = json.loads(adapter_config)
    except json.JSONDecodeError as error:
        raise AdapterRejected(f"adapter_config is not JSON: {error}") from None
    if not isinstance(config, dict):
        raise AdapterRejected("adapter_config must be a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected(f"only LoRA adapters are served, got peft_type {config['peft_type']!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterRejected(f"adapter_config needs a positive integer rank 'r', got {rank!r}")
    if rank > max_rank:
        raise AdapterRejected(f"adapter rank {rank} exceeds the server's --max-lora-rank {max_rank}")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise AdapterRejected("adapter_config needs a numeric 'lora_alpha'")
    if config.get("use_dora"):
        raise AdapterRejected("DoRA adapters are not served")

    try:
        tensors = load_safetensors(adapter_model)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise AdapterRejected(f"adapter_model is not a safetensors file: {error}") from None
    if not tensors:
        raise AdapterRejected("adapter_model holds no tensors")

    kinds_by_module: dict[str, set[str]] = {}
    for key, tensor in tensors.items():
        match = PEFT_KEY.match(key)
        if match is None:
            raise AdapterRejected(
                f"tensor {key!r} is not a PEFT LoRA weight (base_model.model.<module>.lora_A/B.weight)"
            )
        module, kind = match["module"], match["kind"]
        if module not in layer_shapes:
            raise AdapterRejected(f"tensor {key!r} names {module!r}, which is not a linear layer of the base model")
        if not tensor.is_floating_point():
            raise AdapterRejected(f"tensor {key!r} has dtype {tensor.dtype}; LoRA weights are floating point")
        in_features, out_features = layer_shapes[module]
        expected = (rank, in_features) if kind == "lora_A" else (out_features, rank)
        if tuple(tensor.shape) != expected:
            raise AdapterRejected(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {expected} (r={rank})")
        kinds_by_module.setdefault(module, set()).add(kind)
    for module, kinds in kinds_by_module.items():
        if kinds != {"lora_A", "lora_B"}:
            raise AdapterRejected(f"module {module!r} has {sorted(kinds)} but needs both lora_A and lora_B")
    return rank
