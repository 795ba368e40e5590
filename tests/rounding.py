"""Rounding-error bounds for the suite's float comparisons, made from the dtype, the magnitudes and
the reduction lengths, so that a bound holds on every CPU and kernel (AVX2, AVX-512, AMX; MKL,
oneDNN, ATen's own), whatever order or blocking a kernel sums in.

They are the deterministic worst cases of Higham, *Accuracy and Stability of Numerical
Algorithms* (2nd ed., 2002), §3.1 and §4.2: a sum of n terms, or a dot product of length n,
computed in any order, is within γ_n · Σ|terms| of its exact value, γ_n = n·u / (1 − n·u), with u
the dtype's unit roundoff (eps / 2). Two computations of the same quantity are therefore within
twice one's bound of each other. Worst cases are loose (rounding errors mostly cancel), so each
test that uses one also shows what a real mistake costs, far above it.
"""

import torch


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """u = eps / 2: 2**-24 for float32, 2**-8 for bfloat16.

    >>> unit_roundoff(torch.float32) == 2**-24, unit_roundoff(torch.bfloat16) == 2**-8
    (True, True)
    """
    return torch.finfo(dtype).eps / 2


def gamma(terms: int, dtype: torch.dtype = torch.float32) -> float:
    """γ_n: the relative error bound of a sum or dot product of ``terms`` terms in ``dtype``.

    >>> round(gamma(576) / unit_roundoff(), 3)  # a dot product over the embedded model's hidden size
    576.02
    """
    product = terms * unit_roundoff(dtype)
    assert product < 1, f"{terms} terms in {dtype}: no bound"
    return product / (1 - product)


def log_softmax_bound(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float, logprobs: torch.Tensor
) -> torch.Tensor:
    """(N, H) float32 hidden states, (V, H) head weight, (N,) reference log-probabilities → (N,):
    how far one float32 computation of log softmax(h·Wᵀ / τ)[y] can be from the exact value.

    - each logit z_v is an H-long dot product and a division: off by ≤ γ_{H+1}·Σ_k |h_k||W_vk| / τ;
      call the largest over the vocabulary E;
    - log-sum-exp is 1-Lipschitz in the largest logit error, so the exact LSE of the computed
      logits is within E; computed as m + log Σ_v exp(z_v − m), it adds γ_{V+2} (the V-term sum of
      positive terms and the exp, passed through the log) and u·|LSE| (adding m back);
    - log π(y) = z_y − LSE: E + (E + γ_{V+2} + u·|LSE|) + u·|log π(y)|."""
    hidden_size, vocabulary = hidden.shape[-1], weight.shape[0]
    u = unit_roundoff(torch.float32)
    magnitudes = hidden.detach().float().abs() @ weight.detach().float().abs().T / temperature  # (N, V)
    logit_error = gamma(hidden_size + 1) * magnitudes.max(dim=-1).values  # (N,) E
    log_normaliser = torch.logsumexp(hidden.detach().float() @ weight.detach().float().T / temperature, dim=-1)
    return 2 * logit_error + gamma(vocabulary + 2) + u * (log_normaliser.abs() + logprobs.detach().abs())


def entropy_bound(logprob_error: torch.Tensor, entropy: torch.Tensor, vocabulary: int) -> torch.Tensor:
    """(N,) bound on every computed log π(v) of a row (``log_softmax_bound``'s, at the row's largest
    |log π|), (N,) entropies → (N,): how far one float32 computation of H = −Σ_v π(v) log π(v) can be
    from the exact value. With each log π(v) off by ≤ e, −Σ π log π moves by
    Σ_v π(v)·|1 + log π(v)|·e ≤ (1 + H)·e; the exp and the V-term sum of non-negative terms add
    (γ_V + u)·H."""
    return (1 + entropy) * logprob_error + (gamma(vocabulary) + unit_roundoff()) * entropy


def head_gradient_bound(
    probabilities: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    incoming: torch.Tensor,
    temperature: float,
    logprob_error: torch.Tensor,
) -> torch.Tensor:
    """(N, V) probabilities, (V, H) head weight, (N,) targets, (N,) incoming gradient of each
    log π(y), (N,) ``log_softmax_bound`` at the row's largest |log π| → (N, H): how far one float32
    computation of incoming·d log π(y)/d h = incoming·(W[y] − Σ_v π(v) W[v]) / τ can be from the
    exact value, whether the softmax's gradient is formed in the forward or by autograd.
    π(v) = exp(log π(v)) is off by ≤ (e + u) relative; the V-long product with W by γ_V of
    Σ_v π(v)|W[v]| (and autograd's by γ_V of Σ_v |1{v=y} − π(v)||W[v]|); the subtraction, the
    division by τ and the product with the incoming gradient by u each, of their operands."""
    u = unit_roundoff(torch.float32)
    weight = weight.detach().float()
    expected_magnitude = probabilities.detach().float() @ weight.abs()  # (N, H): Σ_v π(v)|W[v]|
    target_magnitude = weight[targets].abs()  # (N, H)
    per_element = (logprob_error[:, None] + u) * expected_magnitude + (gamma(weight.shape[0]) + 3 * u) * (
        expected_magnitude + target_magnitude
    )
    return incoming.abs()[:, None] / temperature * per_element
