"""GRPO's maths on small hand-written tensors, and against TRL 1.16's own loss code."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer

from tests.rounding import gamma
from trainer.grpo import (
    LossConfig,
    Normaliser,
    clipped,
    group_advantages,
    policy_loss,
    sampler_importance_weights,
)

pytestmark = pytest.mark.numerics

LOGPS = [[-1.0, -2.0, -3.0], [-0.5, -1.0, 0.0]]
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADVANTAGES = torch.tensor([2.0, -1.0])
BATCH = Normaliser(sequences=4, tokens=10, max_completion_length=8)  # this micro-batch is half a batch
# The hand-computed values below are exact in float64; the float32 side rounds at most 8 times
# (sums of a few exact small terms, a division or two, an exp) on the way to each value
FEW_ROUNDINGS = gamma(8)  # ≈ 4.8e-7, relative


def test_group_advantages_by_hand():
    # group 0: mean 1.5, unbiased std sqrt(5/3) = 1.2909944; group 1: all equal
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0], [2.0, 2.0, 2.0, 2.0]])
    expected = torch.tensor([[-1.5, -0.5, 0.5, 1.5], [0.0, 0.0, 0.0, 0.0]]) / torch.tensor([[1.2909944 + 1e-4], [1e-4]])
    # float32 on both sides: the mean, the std (4-term sums, a sqrt), + 1e-4 and the division round
    # about 12 times, the expected side 3 times; the literal std's 8 digits are 3.8e-8 off, relative
    assert torch.allclose(group_advantages(rewards), expected, rtol=gamma(15) + 3.8e-8, atol=0)
    assert group_advantages(rewards)[1].eq(0).all()  # equal rewards: exactly zero, so those sequences can be skipped
    assert torch.equal(group_advantages(rewards, scale=False), torch.tensor([[-1.5, -0.5, 0.5, 1.5], [0.0] * 4]))


@pytest.mark.parametrize(
    "loss_type, expected_loss, expected_grad",
    [
        # per-token terms are −A: row 0 → −2 ×3 tokens, row 1 → +1 ×2 tokens
        ("dapo", (-6 + 2) / 10, [[-2 / 10] * 3, [1 / 10, 1 / 10, 0.0]]),  # over the batch's 10 tokens
        ("grpo", (-2 + 1) / 4, [[-2 / 3 / 4] * 3, [1 / 2 / 4, 1 / 2 / 4, 0.0]]),  # sequence means over 4 sequences
        ("dr_grpo", (-6 + 2) / (4 * 8), [[-2 / 32] * 3, [1 / 32, 1 / 32, 0.0]]),  # over 4 sequences × 8 max tokens
    ],
)
def test_policy_loss_by_hand(loss_type, expected_loss, expected_grad):
    logps = torch.tensor(LOGPS, requires_grad=True)
    loss = policy_loss(logps, ADVANTAGES, MASK, BATCH, LossConfig(loss_type))
    loss.backward()
    assert loss.item() == pytest.approx(expected_loss, rel=FEW_ROUNDINGS)
    assert torch.allclose(logps.grad, torch.tensor(expected_grad), rtol=FEW_ROUNDINGS, atol=0)


def test_importance_weights_and_kl_by_hand():
    logps = torch.tensor(LOGPS, requires_grad=True)
    weights = torch.tensor([[0.5], [2.0]])
    assert policy_loss(logps, ADVANTAGES, MASK, BATCH, LossConfig("dapo"), weights).item() == pytest.approx(
        (-6 * 0.5 + 2 * 2.0) / 10, rel=FEW_ROUNDINGS
    )
    # reference 0.1 nats below the policy on every token: k3 = e^−0.1 + 0.1 − 1 per token, times beta
    k3 = math.exp(-0.1) + 0.1 - 1
    with_kl = policy_loss(logps, ADVANTAGES, MASK, BATCH, LossConfig("dapo", beta=0.5), ref_logps=logps.detach() - 0.1)
    # k3 ≈ 0.0048 cancels (×207 on its float32 rounding), but it is 0.3 % of the loss: within FEW_ROUNDINGS
    assert with_kl.item() == pytest.approx(-0.4 + 0.5 * k3 * 5 / 10, rel=FEW_ROUNDINGS)

    trainer = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-3.0, 0.0]])
    sampler = torch.tensor([[-1.5, -1.0], [-2.5, -2.0], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    # Σ(trainer − sampler): 0.5 → e^0.5; 2.5 → e^2.5 = 12.2 > 3, dropped; −2 (padding ignored) → e^−2
    expected = torch.tensor([[math.exp(0.5)], [0.0], [math.exp(-2.0)]])
    weights = sampler_importance_weights(trainer, sampler, mask, clip_max=3.0)
    assert torch.allclose(weights, expected, rtol=FEW_ROUNDINGS, atol=0)


def test_micro_batch_shares_add_up_to_the_whole_batch():
    torch.manual_seed(0)
    logps = (-torch.rand(4, 5) * 3).requires_grad_()
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0], [1.0] + [0.0] * 4])
    advantages = torch.tensor([1.0, -0.5, 0.3, -0.8])
    normaliser = Normaliser(sequences=4, tokens=int(mask.sum()), max_completion_length=5)
    for loss_type in ("dapo", "grpo", "dr_grpo"):
        config = LossConfig(loss_type)
        whole = policy_loss(logps, advantages, mask, normaliser, config)
        (whole_grad,) = torch.autograd.grad(whole, logps)
        parts = [
            policy_loss(logps[rows], advantages[rows], mask[rows], normaliser, config)
            for rows in (slice(0, 1), slice(1, 4))
        ]
        (parts_grad,) = torch.autograd.grad(sum(parts), logps)
        # the same per-token terms, summed in another grouping: within 2·γ_n of the terms' absolute
        # sum (tests/rounding.py; n = 13 tokens, +2 for the normalisers), which is the loss with
        # every advantage made −|A| (per-token terms are −A at ratio 1)
        magnitude = policy_loss(logps.detach(), -advantages.abs(), mask, normaliser, config).item()
        assert abs(sum(parts).item() - whole.item()) <= 2 * gamma(int(mask.sum()) + 2) * magnitude
        assert torch.equal(parts_grad, whole_grad)  # each token's gradient is the same product in both


def trl_compute_loss(
    logps, advantages, mask, loss_type, beta, importance_weights, ref_logps, max_completion_length, old_logps=None
):
    """Drive TRL 1.16's own ``GRPOTrainer._compute_loss`` on given per-token log-probabilities.

    ``_compute_loss`` reads a handful of attributes of the trainer; a stand-in object supplies
    them with a single process and no gradient accumulation, and its forward pass returns
    ``logps``. The rest (ratio, clip, IS weights, KL, aggregation) is TRL's code as shipped."""
    batch_size, length = logps.shape
    stand_in = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        loss_type=loss_type,
        beta=beta,
        epsilon_low=0.2,
        epsilon_high=0.2,
        max_completion_length=max_completion_length,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=1),
        use_vllm=True,
        vllm_importance_sampling_correction=True,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(
            num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x
        ),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros(batch_size, 2, dtype=torch.long),
        "prompt_mask": torch.ones(batch_size, 2, dtype=torch.long),
        "completion_ids": torch.zeros(batch_size, length, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "importance_sampling_ratio": importance_weights,
        "num_items_in_batch": mask.sum(),
    }
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = ref_logps
    if old_logps is not None:
        inputs["old_per_token_logps"] = old_logps
    return GRPOTrainer._compute_loss(stand_in, model=None, inputs=inputs)


def trl_sequence_mask_weights(old_logps, sampler_logps, mask, clip_max):
    """TRL 1.16 ``_generate_and_score_completions``, ``vllm_importance_sampling_mode="sequence_mask"``
    (trl/trainer/grpo_trainer.py, lines 2660–2702 of the installed 1.16.0), transcribed: that code
    sits inside the 600-line sampling method and cannot be called on its own."""
    per_token_logps_diff = torch.nan_to_num((old_logps - sampler_logps) * mask, nan=0.0)
    ratio = torch.exp(per_token_logps_diff.sum(dim=-1, keepdim=True))
    return ratio.masked_fill((ratio < -math.inf) | (ratio > clip_max), value=0.0)


@pytest.mark.parametrize(
    "loss_type, beta, later_update",
    [("dapo", 0.0, False), ("grpo", 0.0, False), ("dr_grpo", 0.0, False), ("dapo", 0.04, False),
     ("dapo", 0.0, True), ("grpo", 0.0, True), ("dapo", 0.04, True)],
)  # fmt: skip
def test_loss_and_gradient_equal_trl(loss_type, beta, later_update):
    """In float64, where rounding (γ_n of 2**-53) is far below any difference of formula: each side
    rounds a per-token term about 10 times, then sums the 42 tokens. ``later_update``: a second
    update of ``--num-iterations``, the policy moved away from π_old, so the ratio is not 1 and the
    clip holds some tokens (TRL's ``old_per_token_logps``)."""
    torch.manual_seed(1)
    batch, length, dtype = 6, 7, torch.float64
    mask = (torch.arange(length)[None, :] < torch.tensor([7, 5, 3, 7, 1, 6])[:, None]).to(dtype)
    rewards = torch.tensor([[1.0, 0.0, 3.5], [2.0, -2.0, 0.5]], dtype=dtype)
    advantages = group_advantages(rewards).flatten()
    trainer_logps = -torch.rand(batch, length, dtype=dtype) * 2
    sampler_logps = (trainer_logps + torch.randn(batch, length, dtype=dtype) * 0.3) * mask
    ref_logps = trainer_logps - torch.rand(batch, length, dtype=dtype) * 0.2 if beta else None
    old_logps = trainer_logps + torch.randn(batch, length, dtype=dtype) * 0.3 if later_update else None
    weights = sampler_importance_weights(trainer_logps, sampler_logps, mask, clip_max=3.0)
    assert torch.equal(weights, trl_sequence_mask_weights(trainer_logps, sampler_logps, mask, 3.0))
    assert (weights == 0).any() and (weights > 0).any()  # both kinds of sequences present

    ours_logps = trainer_logps.clone().requires_grad_()
    normaliser, config = Normaliser(batch, int(mask.sum()), length), LossConfig(loss_type, beta)
    ours = policy_loss(ours_logps, advantages, mask, normaliser, config, weights, ref_logps, old_logps)
    ours.backward()
    trl_logps = trainer_logps.clone().requires_grad_()
    theirs = trl_compute_loss(
        trl_logps, advantages, mask, loss_type, beta, weights, ref_logps, max_completion_length=length,
        old_logps=old_logps,
    )  # fmt: skip
    theirs.backward()
    rounding = 2 * gamma(10 + batch * length, dtype)
    # the terms' absolute sum: every advantage −|A| (the KL term is ≥ 0)
    magnitude = policy_loss(trainer_logps, -advantages.abs(), mask, normaliser, config, weights, ref_logps).item()
    assert abs(ours.item() - theirs.item()) <= rounding * magnitude
    assert torch.allclose(ours_logps.grad, trl_logps.grad, rtol=rounding, atol=rounding * ours_logps.grad.abs().max())
    if later_update:  # the clip acts: some tokens held, and the gradient is not the unclipped one
        held = clipped(torch.exp(trainer_logps - old_logps), advantages, config) & mask.bool()
        assert 0 < held.sum() < mask.sum()
        if beta == 0:
            assert (ours_logps.grad[held] == 0).all()  # a held token passes no gradient
