"""Several trainer processes (``trainer/distributed.py``) with real processes: ``torchrun`` and
``accelerate launch``, gloo on CPU. Two ranks, each training its share of a fixed batch, end with
the summed gradient one process computes from the whole batch, to within the rounding of adding
the same per-sequence gradients in another order; one rank's share without the sum (a missing
all-reduce) is orders of magnitude outside that bound. Every rank then takes the same optimizer
step, and that step is AdamW's on the summed gradient.

Like with like: both launchers give each rank one OpenMP thread, so the one-process run gets one
too. On CPUs with native bf16 kernels (AVX-512 BF16, AMX) a bf16 matrix product rounds differently
with another thread split, and through 30 layers that moves a gradient by about 1.7 % (measured on
an Intel Xeon, see docs/reliability.md): comparing a 2-thread process with 1-thread ranks would
measure the thread count, not the all-reduce. Gradients are compared, not the weights after Adam:
Adam's first step is about lr·sign(g), so a gradient element near zero whose sign rounding flips
moves by 2·lr.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_math.local_server import free_port
from tests.conftest import torchrun
from tests.distributed_step import SETTINGS, output_of
from tests.rounding import gamma, unit_roundoff
from trainer.distributed import Ranks

ROOT = Path(__file__).resolve().parent.parent
SEQUENCES = 8  # tests.distributed_step.fixed_sequences


def launch_two_ranks(launcher: str) -> list[str]:
    """Two ranks on this machine, as the docs launch them, up to the program they run."""
    if launcher == "torchrun":
        return torchrun(2)
    config = "configs/accelerate/cpu-2-ranks.yaml"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
            "--main_process_port", str(free_port())]  # fmt: skip


def run_step(output: Path, *arguments: str, launcher: str | None = None) -> list[dict[str, torch.Tensor]]:
    """The files every rank wrote (one for one process), rank 0's first."""
    environment = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    environment["OMP_NUM_THREADS"] = "1"  # what torchrun and accelerate launch give each rank
    command = [sys.executable, "-m", "tests.distributed_step"]
    if launcher is not None:
        command = [*launch_two_ranks(launcher), "-m", "tests.distributed_step"]
    result = subprocess.run([*command, str(output), *arguments], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return [load_file(output_of(str(output), rank)) for rank in range(1 if launcher is None else 2)]


def names(tensors: dict) -> list[str]:
    return [name for name in tensors if "/" not in name]


def norm(tensors: list[torch.Tensor]) -> float:
    return sum(float(t.double().square().sum()) for t in tensors) ** 0.5


def gradient_difference(first: dict, second: dict) -> float:
    """‖g(first) − g(second)‖ ÷ ‖g(second)‖ over every LoRA tensor."""
    return norm([first[f"grad/{n}"] - second[f"grad/{n}"] for n in names(second)]) / norm(
        [second[f"grad/{n}"] for n in names(second)]
    )


def update_difference(first: dict, second: dict) -> float:
    """‖Δw(first) − Δw(second)‖ ÷ ‖Δw(second)‖: the weights after AdamW, printed beside the gradients."""
    update = [second[n] - second[f"start/{n}"] for n in names(second)]
    return norm([first[n] - second[n] for n in names(second)]) / norm(update)


def summation_bound(one: dict) -> float:
    """The most that adding the same per-sequence gradients g_1 … g_n in another order can move
    their sum, relative to ‖Σ g_i‖. Each element is a sum of n terms in the gradient's dtype
    (float32: LoRA weights stay fp32), within γ_{n−1}·Σ|g_i| of the exact sum in any order
    (tests/rounding.py); a rank's partial sum, then the all-reduce's, is one such order, and two
    orders are within twice that of each other. Each g_i is the same on a rank as in one
    process: the same micro-batch of one sequence, the same kernels, one thread each."""
    dtype = one[f"grad/{names(one)[0]}"].dtype
    absolute_sums = norm([one[f"abs_sum/{n}"] for n in names(one)])
    return 2 * gamma(SEQUENCES - 1, dtype) * absolute_sums / norm([one[f"grad/{n}"] for n in names(one)])


def check_adamw_first_step(run: dict) -> None:
    """The weights after the step are AdamW's first step on the run's own summed gradient, computed
    here in float64: clip to ``max_grad_norm``, then w − lr·ĝ / (|ĝ| + eps) (m̂ = ĝ, v̂ = ĝ² on
    step 1; weight decay 0). Not a sign function where |ĝ| is near eps, and 2·lr off wherever a
    rank stepped with another gradient's sign (one share's gradient: 275x the bound).
    Bound, per element: the float32 step rounds about ten times (the clip's product, the moments,
    sqrt, the bias corrections, + eps, the quotient, × step size), each ≤ u of the step's lr-sized
    value, plus u·|w| for the final subtraction; the clip coefficient's own error δc (a norm over
    N elements: ≤ γ_N / 2 + u) changes lr·ĝ/(|ĝ|+eps) by at most lr·δc / 4."""
    u = unit_roundoff(torch.float32)
    gradients = {n: run[f"grad/{n}"].double() for n in names(run)}
    clip = min(1.0, SETTINGS.max_grad_norm / (norm(list(gradients.values())) + 1e-6))
    clip_error = gamma(sum(g.numel() for g in gradients.values())) / 2 + u
    learning_rate, eps = SETTINGS.learning_rate, 1e-8  # torch.optim.AdamW's default eps
    worst = 0.0
    for n, gradient in gradients.items():
        clipped = gradient * clip
        expected = run[f"start/{n}"].double() - learning_rate * clipped / (clipped.abs() + eps)
        bound = learning_rate * (10 * u + clip_error / 4) + u * expected.abs()
        worst = max(worst, float(((run[n].double() - expected).abs() / bound).max()))
    assert worst <= 1.0, f"the step is {worst:.2f}x its rounding bound away from AdamW on the summed gradient"


@pytest.mark.numerics
def test_two_ranks_sum_the_one_process_gradient_and_a_missing_all_reduce_does_not(tmp_path):
    (one,) = run_step(tmp_path / "one.safetensors", "--sequence-gradients")
    by_torchrun = run_step(tmp_path / "two.safetensors", launcher="torchrun")
    by_accelerate = run_step(tmp_path / "two-accelerate.safetensors", launcher="accelerate")
    (half,) = run_step(tmp_path / "half.safetensors", "--share-of-rank", "0", "--of", "2")
    bound = summation_bound(one)
    print(
        f"\nsummed gradient vs one process (bound {bound:.2e}): 2 ranks {gradient_difference(by_torchrun[0], one):.2e}"
        f" (torchrun), {gradient_difference(by_accelerate[0], one):.2e} (accelerate launch);"
        f" one share alone {gradient_difference(half, one):.2e}"
        f"\nweights after AdamW vs one process: 2 ranks {update_difference(by_torchrun[0], one):.2e} (torchrun),"
        f" {update_difference(by_accelerate[0], one):.2e} (accelerate launch); one share alone"
        f" {update_difference(half, one):.2e}"
    )
    assert set(one) - {k for k in one if k.startswith("abs_sum/")} == set(by_torchrun[0]) == set(half)
    assert all(torch.equal(one[n], half[n]) for n in one if n.startswith("start/"))  # B ≠ 0, the same on each
    lora_a = [n for n in names(one) if "lora_A" in n]
    assert lora_a and all(one[f"grad/{n}"].abs().sum() > 0 for n in lora_a), "the gradient reaches lora_A too"
    for ranks in (by_torchrun, by_accelerate):
        assert gradient_difference(ranks[0], one) <= bound
        rank_0, rank_1 = ranks
        assert all(torch.equal(rank_0[n], rank_1[n]) for n in rank_0), "every rank has the same sum and step"
        check_adamw_first_step(rank_0)
    assert gradient_difference(half, one) >= 100 * bound


def test_shares_cover_every_sequence_once_and_balance_tokens():
    class Item:
        def __init__(self, length):
            self.prompt_token_ids, self.completion_token_ids = [0] * 20, [0] * length

    items = [Item(length) for length in (300, 12, 250, 40, 180, 90, 75, 5)]
    shares = [Ranks(rank, 3).share(items) for rank in range(3)]
    assert sorted(map(id, sum(shares, []))) == sorted(map(id, items))
    loads = [sum(20 + len(item.completion_token_ids) for item in share) for share in shares]
    assert max(loads) - min(loads) <= 20 + 250  # greedy longest-first: within the largest item
