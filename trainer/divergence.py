"""How far one adapter's policy has moved from another's: KL(π ‖ π_reference) per token, estimated
on completions sampled from π (``grpo-math eval``'s rows, which keep their token ids). The
forgetting measure of ``grpo-math arms``: GRPO's adapter against the SFT adapter it started from.

Per sampled token y_t, with log r_t = log π_reference(y_t | y_<t) − log π(y_t | y_<t), the estimator
k3_t = r_t − 1 − log r_t (Schulman's "k3"; the one TRL's GRPO uses for its beta term) is ≥ 0 and,
under π's sampling, unbiased for the KL of the two next-token distributions at that position. The
mean over every sampled token is the KL per token, in nats. Both log-probabilities come from the
trainer's model (the same nf4 base, the same compute dtype), so the sampler–trainer gap does not
enter; LoRA dropout is off while measuring, and the rest of the model stays in train mode
(``trainer.policy.load_policy`` says why).
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from trainer.batching import Sequence, collate, micro_batches
from trainer.policy import completion_logprobs, load_policy

REFERENCE = "reference"  # the PEFT adapter name of π_reference beside π's ("default")


@dataclass(frozen=True)
class Base:
    """What ``load_policy`` reads when it loads an adapter: whether the base is nf4."""

    load_in_4bit: bool = True


def k3(logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(Σ k3 over the masked tokens, their number); every tensor (B, T).

    >>> same = torch.tensor([[-1.0, -2.0]])
    >>> k3(same, same, torch.ones(1, 2, dtype=torch.bool))
    (0.0, 2)
    >>> total, tokens = k3(torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), torch.ones(1, 1, dtype=torch.bool))
    >>> round(total, 4)  # e^-1 − 1 + 1
    0.3679
    """
    log_ratio = (reference_logprobs - logprobs)[mask]  # (N,)
    return float((torch.exp(log_ratio) - 1 - log_ratio).sum()), int(mask.sum())


def sequences_of(rows: Iterable[dict]) -> list[Sequence]:
    """``grpo-math eval`` rows (``prompt_token_ids``, ``completion_token_ids``) as sequences to score;
    empty completions have no token to measure."""
    return [
        Sequence(row["prompt_token_ids"], row["completion_token_ids"], [0.0] * len(row["completion_token_ids"]), 0.0)
        for row in rows
        if row["completion_token_ids"]
    ]


def kl_per_token(
    model_path: str,
    adapter: str,
    reference_adapter: str,
    rows: Iterable[dict],
    temperature: float = 1.0,
    micro_batch_size: int = 8,
    load_in_4bit: bool = True,
) -> dict:
    """KL(π_adapter ‖ π_reference) per token on ``rows`` sampled from ``adapter`` at ``temperature``:
    ``{"kl_per_token", "tokens", "completions"}``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_policy(model_path, Base(load_in_4bit), init_adapter=adapter, gradient_checkpointing=False,
                         device=device)  # fmt: skip
    policy.load_adapter(reference_adapter, adapter_name=REFERENCE)
    for module in policy.modules():  # LoRA dropout off; nf4 layers stay in train mode
        if isinstance(module, torch.nn.Dropout):
            module.train(False)
    sequences = sequences_of(rows)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for chunk in micro_batches(sequences, micro_batch_size):
            batch = collate(chunk, pad_token_id=0, device=device)
            measured = {}
            for name in ("default", REFERENCE):
                policy.set_adapter(name)
                measured[name], _ = completion_logprobs(policy, batch, temperature)  # (B, T)
            chunk_total, chunk_tokens = k3(measured["default"], measured[REFERENCE], batch.completion_mask)
            total, tokens = total + chunk_total, tokens + chunk_tokens
    return {"kl_per_token": total / max(1, tokens), "tokens": tokens, "completions": len(sequences)}
