"""Checkpoints of a run: ``<run>/checkpoints/step-000010/`` holds the adapter in PEFT format
(``adapter/``) and ``state.pt`` (optimizer, scheduler, RNG states, the step). The data order is a
function of (seed, step), so the step is the data position."""

import random
import shutil
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, policy: PeftModel, optimizer, scheduler, keep: int) -> Path:
    target = checkpoint_dir(run_dir, step)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    policy.save_pretrained(staging / "adapter")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        },
        staging / "state.pt",
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # a checkpoint exists only once complete
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if not p.name.endswith(".partial")) if folder.is_dir() else []


def load_checkpoint(path: Path, policy: PeftModel, optimizer, scheduler) -> int:
    """Restore the adapter weights, optimizer, scheduler and RNGs; return the step it was saved at."""
    set_peft_model_state_dict(policy, load_peft_weights(str(path / "adapter")))
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state["step"]
