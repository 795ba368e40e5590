"""Proof that a pushed adapter is applied, before it becomes the active version.

A server can load an adapter and still sample with the base model (a LoRA id taken by something
else, target modules the engine does not map, a merge that never reached the weights). So before
a version becomes active, the server scores one fixed text (``PROBE_TEXT``) with the new version
and with the base model: the logprob of every token after its prefix, one forward pass
(vLLM's ``prompt_logprobs``), no sampling. An adapter whose B matrices are not all zero changes
those logprobs; if they come back equal, the version is refused and the previous one keeps
serving. An adapter with B all zero (PEFT's initial one) *is* the base model and is not probed.

The same rule serves both adapter modes of this project's server and the trainer's client for
vLLM's own server.
"""

from safetensors.torch import load as load_safetensors

PROBE_TEXT = (
    "Question: Lee has 14 coins and gets 15 more. How many coins does Lee have now?\n"
    "Answer: 14 + 15 = 29, so Lee has 29 coins."
)


class AdapterNotApplied(RuntimeError):
    """A loaded adapter left the served model's logprobs exactly as the base model's."""


def changes_the_model(adapter_model: bytes) -> bool:
    """Whether any ``lora_B`` of a PEFT safetensors file is non-zero (B·A is then non-zero
    wherever A is; PEFT starts every B at zero).

    >>> import torch
    >>> from safetensors.torch import save
    >>> zero = {"base_model.model.q_proj.lora_A.weight": torch.ones(2, 3),
    ...         "base_model.model.q_proj.lora_B.weight": torch.zeros(3, 2)}
    >>> changes_the_model(save(zero))
    False
    >>> changes_the_model(save({**zero, "base_model.model.q_proj.lora_B.weight": torch.full((3, 2), 1e-6)}))
    True
    """
    tensors = load_safetensors(adapter_model)
    return any(bool(tensor.any()) for key, tensor in tensors.items() if ".lora_B." in key)


def check_applied(version: int, base_logprobs: list[float], adapter_logprobs: list[float], server: str) -> None:
    """Raise ``AdapterNotApplied`` where the adapter's probe logprobs equal the base model's.

    >>> check_applied(3, [-1.5, -0.25], [-1.5, -0.2500001], "http://s")
    >>> check_applied(3, [-1.5, -0.25], [-1.5, -0.25], "http://s")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    shared.probe.AdapterNotApplied: adapter version 3 is not applied by http://s: ...
    """
    if adapter_logprobs == base_logprobs:
        raise AdapterNotApplied(
            f"adapter version {version} is not applied by {server}: its B matrices are non-zero, yet the "
            f"logprobs of the {len(base_logprobs)} probe tokens equal the base model's exactly; "
            "the version is refused and the previous one keeps serving"
        )
