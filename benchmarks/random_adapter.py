"""A PEFT LoRA adapter on the embedded model with random, non-zero B (so it changes the output),
saved with PEFT's own ``save_pretrained``: what the tests and the lora-overhead scenario push.
Both A and B come from the seed, so the same seed gives the same adapter in every process."""

from pathlib import Path

import torch

from shared.models import embedded_model_dir


def save_random_adapter(
    folder: Path, seed: int, rank: int = 16, target_modules=("q_proj", "v_proj"), scale: float = 0.02
):
    """A PEFT LoRA adapter on the embedded model with non-zero B (so it changes the output), A and B
    drawn from ``seed`` (A as PEFT draws it: uniform in ±1/√in), saved with PEFT's own
    ``save_pretrained``; returns the folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name:  # (r, in)
                bound = parameter.shape[1] ** -0.5
                parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
            if "lora_B" in name:  # (out, r)
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(folder)
    return folder
