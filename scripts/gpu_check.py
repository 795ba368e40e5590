"""The trainer's CUDA path, checked on a small model built from a config (no download):

  nf4 double-quant base + LoRA r16 (q, v) with fp16 compute · gradient checkpointing · chunked
  log-probabilities equal to a full log-softmax · one GRPO loss step (backward, clip, AdamW) that
  changes the LoRA weights · the adapter's PEFT bytes, as pushed to the server.

It needs torch, transformers, peft and accelerate, and bitsandbytes and pydantic (which a bare GPU
machine may lack: give their wheels with --wheels DIR, installed there with no index). It prints
one JSON object of what it measured and exits non-zero if a check fails.

    python scripts/gpu_check.py [--wheels .whl]
    pytest -m gpu tests/test_gpu.py          # the same script, as a test
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def install_wheels(folder: Path) -> None:
    """Wheels installed with no index and no dependency resolution, into a folder on sys.path."""
    target = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    wheels = sorted(str(path) for path in folder.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target), *wheels],
        check=True,
    )
    sys.path.insert(0, str(target))


def tiny_model(folder: Path) -> None:
    """A 4-layer Qwen2 (the GPU default's architecture) with random weights, saved in fp16."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float16).save_pretrained(folder)


def check(results: dict, name: str, passed: bool, **measured) -> None:
    results["checks"][name] = {"passed": bool(passed), **measured}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, help="folder of wheels to install first (bitsandbytes, pydantic)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to check this script itself")
    args = parser.parse_args()
    if args.wheels is not None:
        install_wheels(args.wheels)
    sys.path.insert(0, str(ROOT))

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    import bitsandbytes
    from safetensors.torch import load as load_safetensors

    from trainer.batching import Sequence, collate
    from trainer.grpo import LossConfig, Normaliser, group_advantages, policy_loss
    from trainer.policy import adapter_upload, completion_logprobs, compute_dtype_for, load_policy
    from trainer.settings import TrainSettings

    on_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name() if on_cuda else "cpu"
    results = {"device": name, "torch": torch.__version__, "checks": {}}
    with tempfile.TemporaryDirectory() as folder:
        tiny_model(Path(folder))
        settings = TrainSettings(lora_dropout=0.0)  # the recipe's LoRA, without dropout for exact comparisons
        policy = load_policy(folder, settings, init_adapter=None, gradient_checkpointing=True, device=device)

    linear_4bit = [m for m in policy.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    check(
        results, f"nf4 double-quant base, {compute_dtype_for(device)} compute",
        bool(linear_4bit) and all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in linear_4bit)
        and all(m.compute_dtype == compute_dtype_for(device) for m in linear_4bit),
        layers=len(linear_4bit),
    )  # fmt: skip
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    check(results, "LoRA r16 on q_proj, v_proj", trainable == 4 * (16 * 256 + 256 * 16 + 16 * 256 + 64 * 16),
          trainable_parameters=trainable)  # fmt: skip
    check(results, "gradient checkpointing on", policy.get_base_model().is_gradient_checkpointing)
    advantages = group_advantages(torch.tensor([[1.0, 3.0]], device=device))
    check(results, "group advantages on the device", advantages.device.type == device.type)

    generator = torch.Generator().manual_seed(1)
    sequences = [
        Sequence(
            prompt_token_ids=torch.randint(3, 4096, (prompt,), generator=generator).tolist(),
            completion_token_ids=torch.randint(3, 4096, (completion,), generator=generator).tolist(),
            sampler_logprobs=[-8.3] * completion,
            advantage=advantage,
        )
        for prompt, completion, advantage in ((40, 200, 1.0), (40, 150, -1.0), (40, 90, 0.5), (40, 30, -0.5))
    ]
    batch = collate(sequences, pad_token_id=0, device=device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    logps, _ = completion_logprobs(policy, batch, temperature=0.9, chunk_tokens=128)  # (B, T)
    with torch.no_grad():
        causal_lm = policy.get_base_model()
        hidden = causal_lm.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        full = torch.log_softmax(hidden.float() @ causal_lm.lm_head.weight.float().T / 0.9, dim=-1)  # (B, L, V)
        scored = batch.completion_positions[:, 1:]
        expected = full[:, :-1][scored].gather(1, batch.input_ids[:, 1:][scored][:, None])[:, 0]
    difference = (logps.detach()[batch.completion_mask] - expected).abs().max().item()
    check(results, "chunked logprobs = full log-softmax", difference < 1e-3, max_abs_difference=difference)

    mask = batch.completion_mask.float()
    normaliser = Normaliser(sequences=4, tokens=int(mask.sum()), max_completion_length=256)
    loss = policy_loss(logps, batch.advantages, mask, normaliser, LossConfig("dapo"))
    loss.backward()
    trainable_parameters = [p for p in policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable_parameters]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters, 0.1).item()
    torch.optim.AdamW(trainable_parameters, lr=1e-3).step()
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    changed = sum(not torch.equal(b, p) for b, p in zip(before, trainable_parameters))
    check(
        results, "one loss step moves LoRA",
        torch.isfinite(loss).item() and grad_norm > 0 and changed == len(trainable_parameters),
        loss=loss.item(), grad_norm=grad_norm, parameters_changed=changed, seconds=round(seconds, 3),
        peak_allocated_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_cuda else None,
    )  # fmt: skip

    upload = adapter_upload(policy, version="next")
    tensors = load_safetensors(upload.adapter_model)
    check(
        results, "the adapter's PEFT bytes",
        len(tensors) == 4 * 2 * 2 and all(key.startswith("base_model.model.model.layers.") for key in tensors)
        and json.loads(upload.adapter_config)["r"] == 16,
        tensors=len(tensors), bytes=len(upload.adapter_model),
    )  # fmt: skip
    results["passed"] = all(result["passed"] for result in results["checks"].values())
    print(json.dumps(results, indent=2))
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
