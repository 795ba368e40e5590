"""GRPO's maths as pure tensor functions: group advantages, the sampler importance weights, and
the clipped policy loss, following TRL 1.16's ``GRPOTrainer`` (``_generate_and_score_completions``
and ``_compute_loss``) term for term.

Shapes: ``B`` sequences in a micro-batch, ``T`` completion tokens (right-padded), ``G`` completions
per prompt. ``mask`` is 1.0 on real completion tokens, 0.0 on padding.

The loss of the whole batch is a sum over sequences with *batch-wide* normalisers, so it splits
exactly into micro-batches: each micro-batch's ``policy_loss(..., normaliser)`` is its share, and
the gradients of the shares add up to the gradient of the whole (TRL's gradient accumulation).
"""

from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "dapo", "dr_grpo"]


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """(num_prompts, G) rewards → (num_prompts, G) advantages: ``(r − group mean) / (group std + 1e-4)``
    with the unbiased std, or only centred when ``scale`` is off (TRL's ``scale_rewards="none"``).
    A NaN reward (no reward function applied to that completion) is left out of its group's mean
    and std and gets advantage 0, as in TRL.

    >>> group_advantages(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    tensor([[-0.7071,  0.7071],
            [ 0.0000,  0.0000]])
    >>> group_advantages(torch.tensor([[1.0, 3.0, float("nan")]]))
    tensor([[-0.7071,  0.7071,  0.0000]])
    """
    unscorable = rewards.isnan()  # (P, G)
    if unscorable.any():
        mean = rewards.nanmean(dim=1, keepdim=True)  # (P, 1)
        count = (~unscorable).sum(dim=1, keepdim=True)  # (P, 1)
        std = (((rewards - mean) ** 2).nansum(dim=1, keepdim=True) / (count - 1)).sqrt()  # unbiased, NaN below 2
    else:  # the same values, computed as they always were
        mean, std = rewards.mean(dim=1, keepdim=True), rewards.std(dim=1, keepdim=True)
    centred = rewards - mean
    advantages = centred / (std + 1e-4) if scale else centred
    return advantages.masked_fill(unscorable | advantages.isnan(), 0.0)


def sampler_importance_weights(
    trainer_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, clip_max: float = 3.0
) -> torch.Tensor:
    """(B, T) × 2 → (B, 1): TRL's ``sequence_mask`` correction for sampling with a different engine.

    The weight of a sequence is ``exp(Σ_t (log π_trainer − log π_sampler))`` over its completion tokens;
    a sequence whose weight exceeds ``clip_max`` is dropped (weight 0) rather than clipped.

    >>> mask = torch.ones(2, 2)
    >>> sampler_importance_weights(torch.zeros(2, 2), torch.tensor([[0.0, -0.5], [-1.0, -1.0]]), mask)
    tensor([[1.6487],
            [0.0000]])
    """
    log_ratio = ((trainer_logps - sampler_logps) * mask).sum(dim=-1, keepdim=True)  # (B, 1)
    weights = torch.exp(log_ratio)
    return weights.masked_fill(weights > clip_max, 0.0)


@dataclass(frozen=True)
class Normaliser:
    """Batch-wide counts that turn per-token terms into the batch's loss."""

    sequences: int  # completions in the whole batch (prompts × G)
    tokens: int  # completion tokens in the whole batch
    max_completion_length: int


@dataclass(frozen=True)
class LossConfig:
    loss_type: LossType = "dapo"
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2


def policy_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normaliser: Normaliser,
    config: LossConfig,
    importance_weights: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """A micro-batch's share of the clipped GRPO loss.

    ``logps`` (B, T) carries the gradient. ``old_logps`` (B, T): the policy before the batch's first
    update (``--num-iterations`` μ > 1: the ratio moves from the second update on, and the clip
    acts); None: ``logps`` detached, so the ratio is 1 in value and the clip is inactive, exactly
    as in TRL when ``num_iterations == 1``. ``advantages`` (B,); ``importance_weights`` (B, 1)
    from ``sampler_importance_weights`` or None; ``ref_logps`` (B, T) when ``beta > 0``.

    >>> logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    >>> mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    >>> loss = policy_loss(logps, torch.tensor([1.0, -1.0]), mask, Normaliser(2, 3, 4), LossConfig("dapo"))
    >>> loss.backward(); loss.item(), logps.grad
    (-0.3333333432674408, tensor([[-0.3333, -0.3333],
            [ 0.3333,  0.0000]]))
    """
    ratio = torch.exp(logps - (logps.detach() if old_logps is None else old_logps))  # (B, T)
    clipped = torch.clamp(ratio, 1 - config.epsilon_low, 1 + config.epsilon_high)
    advantages = advantages.unsqueeze(1)  # (B, 1)
    per_token = -torch.min(ratio * advantages, clipped * advantages)  # (B, T)
    if importance_weights is not None:
        per_token = per_token * importance_weights
    if config.beta != 0.0:
        # k3 estimator of KL(π‖π_ref), weighted by the ratio (TRL's use_bias_correction_kl)
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + config.beta * kl * ratio
    masked = per_token * mask
    if config.loss_type == "grpo":  # mean over sequences of each sequence's token mean
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / normaliser.sequences
    if config.loss_type == "dapo":  # mean over every completion token of the batch
        return masked.sum() / max(normaliser.tokens, 1)
    if config.loss_type == "dr_grpo":  # token sum over a constant: sequences × max length
        return masked.sum() / (normaliser.sequences * normaliser.max_completion_length)
    raise ValueError(f"unknown loss_type {config.loss_type!r}")


def clipped(ratio: torch.Tensor, advantages: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """(B, T) ratios π/π_old, (B,) advantages → (B, T) True where the clip took the gradient away:
    below 1 − ε_low with a negative advantage, above 1 + ε_high with a positive one (TRL's
    ``clip_ratio/region_mean``).

    >>> clipped(torch.tensor([[0.7, 1.0, 1.3]]), torch.tensor([-1.0]), LossConfig())
    tensor([[ True, False, False]])
    """
    advantages = advantages.unsqueeze(1)
    low = (ratio < 1 - config.epsilon_low) & (advantages < 0)
    high = (ratio > 1 + config.epsilon_high) & (advantages > 0)
    return low | high
