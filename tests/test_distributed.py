"""Several trainer processes (``trainer/distributed.py``) with real processes: ``torchrun`` and gloo
on CPU. Two ranks, each training its share of a fixed batch with the gradients summed, end the
step with the adapter one process makes from the whole batch; one rank's share without the sum
(a missing all-reduce) ends far outside that tolerance (docs/deploy.md has the measured figures)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from grpo_math.local_server import free_port
from tests.conftest import torchrun
from trainer.distributed import Ranks

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4  # ‖update(2 ranks) − update(1 process)‖ ÷ ‖update(1 process)‖


def launch_two_ranks(launcher: str) -> list[str]:
    """Two ranks on this machine, as the docs launch them, up to the program they run."""
    if launcher == "torchrun":
        return torchrun(2)
    config = "configs/accelerate/cpu-2-ranks.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
            "--main_process_port", str(free_port())]  # fmt: skip


def run_step(output: Path, *arguments: str, launcher: str | None = None) -> dict[str, torch.Tensor]:
    environment = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    command = [sys.executable, "-m", "tests.distributed_step"]
    if launcher is not None:
        command = [*launch_two_ranks(launcher), "-m", "tests.distributed_step"]
    result = subprocess.run([*command, str(output), *arguments], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(output)


def relative_difference(first: dict, second: dict) -> float:
    """‖update(first) − update(second)‖ ÷ ‖update(second)‖ over every LoRA tensor; both files
    hold the same starting weights under ``start/<name>``."""
    names = [name for name in second if not name.startswith("start/")]
    assert all(torch.equal(first[f"start/{name}"], second[f"start/{name}"]) for name in names)
    difference = sum(float((first[name] - second[name]).square().sum()) for name in names)
    update = sum(float((second[name] - second[f"start/{name}"]).square().sum()) for name in names)
    return (difference / update) ** 0.5


def test_two_ranks_make_the_one_process_update_and_a_missing_all_reduce_does_not(tmp_path):
    one = run_step(tmp_path / "one.safetensors")
    two = run_step(tmp_path / "two.safetensors", launcher="torchrun")
    two_by_accelerate = run_step(tmp_path / "two-accelerate.safetensors", launcher="accelerate")
    half = run_step(tmp_path / "half.safetensors", "--share-of-rank", "0", "--of", "2")
    assert set(one) == set(two) == set(two_by_accelerate) == set(half)
    print(
        f"\n2 ranks: {relative_difference(two, one):.2e} (torchrun), {relative_difference(two_by_accelerate, one):.2e}"
        f" (accelerate launch); one share alone: {relative_difference(half, one):.2e}"
    )
    assert relative_difference(two, one) <= TOLERANCE and relative_difference(two_by_accelerate, one) <= TOLERANCE
    assert relative_difference(half, one) >= 10 * TOLERANCE


def test_shares_cover_every_sequence_once_and_balance_tokens():
    class Item:
        def __init__(self, length):
            self.prompt_token_ids, self.completion_token_ids = [0] * 20, [0] * length

    items = [Item(length) for length in (300, 12, 250, 40, 180, 90, 75, 5)]
    shares = [Ranks(rank, 3).share(items) for rank in range(3)]
    assert sorted(map(id, sum(shares, []))) == sorted(map(id, items))
    loads = [sum(20 + len(item.completion_token_ids) for item in share) for share in shares]
    assert max(loads) - min(loads) <= 20 + 250  # greedy longest-first: within the largest item
