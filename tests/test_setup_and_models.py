"""The installed stack and the embedded model: what `make setup` promises."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from shared.models import embedded_model_dir, model_problems, resolve_model
from shared.prompting import build_prompt

GRPO_MATH = [sys.executable, "-m", "grpo_math"]


def test_the_stack_imports_and_vllm_knows_its_version():
    subprocess.run([sys.executable, "-c", "import vllm, trl, peft, bitsandbytes, trackio, shared.rewards"], check=True)
    assert importlib.metadata.version("vllm").startswith("0.32.0")
    for broken in ("torchvision", "torchaudio", "triton", "torchcodec"):  # removed by make setup
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version(broken)


def test_a_command_loads_openmp_with_a_short_spin_and_leaves_the_environment_as_it_was():
    """Every command but ``serve`` loads PyTorch's libgomp with a spin count of 3,000, and the
    variable is gone again afterwards (a peer the benchmark starts gets the user's environment); a
    wait policy or spin count the user set wins."""
    code = (
        "import os; from grpo_math.cli import import_torch_spinning_briefly as load; "
        "load(); import torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    clean = {name: value for name, value in os.environ.items() if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def variable_left_and_spin_count(**environment) -> tuple[str, str]:
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **environment},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return result.stdout.strip(), re.search(r"GOMP_SPINCOUNT = '(\d+)'", result.stderr).group(1)

    assert variable_left_and_spin_count() == ("None", "3000")
    assert variable_left_and_spin_count(GOMP_SPINCOUNT="1000") == ("1000", "1000")
    assert variable_left_and_spin_count(OMP_WAIT_POLICY="PASSIVE") == ("None", "0")


def test_cli_help_lists_commands():
    result = subprocess.run(GRPO_MATH + ["--help"], capture_output=True, text=True, check=True)
    assert "embedded-model" in result.stdout
    unknown = subprocess.run(GRPO_MATH + ["no-such-command"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_embedded_model_generates_with_its_chat_template():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    printed = subprocess.run(GRPO_MATH + ["embedded-model"], capture_output=True, text=True, check=True)
    folder = Path(printed.stdout.strip())
    assert folder == embedded_model_dir() and (folder / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 2
    prompt_ids = tokenizer.apply_chat_template(
        build_prompt("What is 2 + 3?"), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    text = tokenizer.decode(prompt_ids[0])
    assert text.startswith("<|im_start|>system\nYou are a mathematical reasoning assistant.")
    assert text.endswith("<|im_start|>assistant\n")
    output = model.generate(prompt_ids, max_new_tokens=12, do_sample=False)
    completion = tokenizer.decode(output[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    assert len(completion.strip()) > 0


def test_auto_resolves_to_the_embedded_model_without_cuda():
    assert not torch.cuda.is_available()  # this suite runs on CPU machines
    assert resolve_model("auto") == str(embedded_model_dir())
    assert resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"


def test_two_processes_convert_once_into_a_complete_folder(tmp_path):
    """A fresh cache: two processes ask at once; the lock lets one convert, the other waits."""
    environment = {**os.environ, "GRPO_MATH_CACHE": str(tmp_path)}

    def ask(_):
        return subprocess.run(GRPO_MATH + ["embedded-model"], env=environment, capture_output=True, text=True)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(ask, range(2)))
    folders = {result.stdout.strip() for result in results}
    assert all(result.returncode == 0 for result in results) and len(folders) == 1
    conversions = sum("converting the embedded model" in result.stderr for result in results)
    assert conversions == 1
    assert sorted(path.name for path in Path(folders.pop()).iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    leftovers = [path for path in tmp_path.iterdir() if path.is_dir() and path.name != "SmolLM2-135M-Instruct-bf16"]
    assert leftovers == []  # no staging folder left behind


def model_without_weights(tmp_path, chat_template: bool) -> Path:
    """The embedded model's config and tokenizer, without weights (enough for every check below);
    ``chat_template=False`` leaves its chat template out."""
    source, folder = embedded_model_dir(), tmp_path / "model"
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if chat_template:
        shutil.copy(source / "chat_template.jinja", folder / "chat_template.jinja")
    return folder


def test_a_model_without_a_chat_template_is_refused_before_any_weights_load(tmp_path):
    assert model_problems(str(model_without_weights(tmp_path / "with", chat_template=True))) == []
    folder = model_without_weights(tmp_path / "without", chat_template=False)
    ((flag, message),) = model_problems(str(folder))
    assert flag == "model" and message.startswith(f"{folder} has no chat template")
    served = subprocess.run([*GRPO_MATH, "serve", "--model", str(folder)], capture_output=True, text=True, timeout=120)
    assert served.returncode != 0
    assert f"grpo-math serve: error: --model {folder} has no chat template" in served.stderr


def test_lora_target_modules_the_model_lacks_are_named_with_the_layers_it_has():
    model = str(embedded_model_dir())
    assert model_problems(model, ("q_proj", "v_proj")) == [] and model_problems(model, ("all-linear",)) == []
    assert model_problems(model, ("q_proj", "c_attn")) == [
        (
            "lora_target_modules",
            f"c_attn: no such linear layer in {model} "
            "(its decoder has down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj; or all-linear)",
        )
    ]
