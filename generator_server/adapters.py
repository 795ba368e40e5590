"""Checks on a pushed LoRA adapter, before vLLM ever sees it.

An adapter arrives as PEFT's two files: ``adapter_config.json`` and ``adapter_model.safetensors``.
It is accepted only if the config is a LoRA config this server can serve (a positive integer ``r``
at most ``--max-lora-rank``, a positive ``lora_alpha``, no DoRA, no per-module rank or alpha
patterns), the safetensors parse, every tensor is a finite fp32/fp16/bf16 ``lora_A``/``lora_B``
weight of a linear layer the base model has, the shapes fit that layer with the config's rank
(A: ``r × in``, B: ``out × r``), and the config's ``target_modules`` and the tensors name the same
modules (PEFT itself cannot load an adapter where they differ). Anything else is an
``AdapterRejected`` with a message saying what is wrong, and the server keeps serving the adapter
it had.
"""

import json
import math
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")


class AdapterRejected(ValueError):
    """The pushed adapter is not one this server can load; the message says why."""


class UnknownAdapterVersion(LookupError):
    """A request asked for an adapter version this server does not serve (any more)."""


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
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterRejected(f"adapter_config needs a positive numeric 'lora_alpha', got {alpha!r}")
    if config.get("use_dora"):
        raise AdapterRejected("DoRA adapters are not served")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            raise AdapterRejected(
                f"adapter_config has a {pattern}; only one rank and one alpha for all modules are served"
            )
    targets = config.get("target_modules")
    if not (
        isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))
    ):
        raise AdapterRejected(
            f"adapter_config needs 'target_modules' (a list of module names or a regex), got {targets!r}"
        )

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
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise AdapterRejected(
                f"tensor {key!r} has dtype {tensor.dtype}; LoRA weights are float32, float16 or bfloat16"
            )
        if not torch.isfinite(tensor).all():
            raise AdapterRejected(f"tensor {key!r} holds NaN or Inf values")
        in_features, out_features = layer_shapes[module]
        expected = (rank, in_features) if kind == "lora_A" else (out_features, rank)
        if tuple(tensor.shape) != expected:
            raise AdapterRejected(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {expected} (r={rank})")
        kinds_by_module.setdefault(module, set()).add(kind)
    for module, kinds in kinds_by_module.items():
        if kinds != {"lora_A", "lora_B"}:
            raise AdapterRejected(f"module {module!r} has {sorted(kinds)} but needs both lora_A and lora_B")
    check_targets(targets, sorted(kinds_by_module), sorted(layer_shapes))
    return rank


def targeted(target: str, module: str) -> bool:
    """PEFT's rule for a name in ``target_modules``: the module's full name or its last parts.

    >>> targeted("q_proj", "model.layers.0.self_attn.q_proj"), targeted("proj", "model.layers.0.self_attn.q_proj")
    (True, False)
    """
    return module == target or module.endswith("." + target)


def check_targets(targets: str | list[str], adapter_modules: list[str], base_modules: list[str]) -> None:
    """The config's ``target_modules`` must pick out exactly the modules the tensors adapt, among
    the base model's layers (a regex string is matched in full, as PEFT does)."""
    if isinstance(targets, str):
        selected = {module for module in base_modules if re.fullmatch(targets, module)}
    else:
        selected = {module for module in base_modules if any(targeted(target, module) for target in targets)}
    missing, extra = sorted(selected - set(adapter_modules)), sorted(set(adapter_modules) - selected)
    if missing or extra:
        raise AdapterRejected(
            f"adapter_config's target_modules {targets!r} do not match the tensors: "
            + "; ".join(
                part
                for part in (
                    f"{len(missing)} targeted modules have no tensors (e.g. {missing[0]!r})" if missing else "",
                    f"{len(extra)} modules with tensors are not targeted (e.g. {extra[0]!r})" if extra else "",
                )
                if part
            )
        )
