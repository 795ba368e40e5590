"""The policy being trained: a 4-bit nf4 base model with a LoRA adapter, and what the loop needs
from it: per-token log-probabilities of given completions, and the adapter as PEFT bytes.

Log-probabilities are computed only at completion positions and in chunks: the hidden states of
the scored tokens go through the LM head ``chunk_tokens`` rows at a time, and each chunk's
gradient with respect to its hidden states is computed in the same pass, so neither the full
``(B, L, vocab)`` logits nor a full log-softmax ever exist, nor are they recomputed for the
backward (with a large vocabulary they dominate the trainer's memory; docs/performance.md has the
figures).

The G completions of a group share their prompt, so the prompt can run through the model once
(``PromptPrefix``): each completion's forward reads the prompt's keys and values as a cache, the
gradients its loss sends back to them are summed over the group, and one backward through the
prompt's forward passes that sum on to LoRA. The values are those of running every sequence whole
(``tests/test_trainer_parts.py``), with one LoRA-dropout draw for the prompt per group instead of
one per sequence. The idea is Prefix Grouper's (Liu et al., 2025, arXiv:2506.05433; verl's
``use_prefix_grouper``), which splits the attention itself; here the split is transformers' own
cache, and the model's code is unchanged.
"""

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from shared.models import cpu_compute_dtype, nf4_quantization_config
from shared.protocol import AdapterUpload
from trainer.batching import MicroBatch

logger = logging.getLogger(__name__)


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """fp16 on GPU, as the recipe; on CPU ``shared.models.cpu_compute_dtype``: bf16 where the CPU
    has native bf16 instructions, float32 where it has not."""
    return torch.float16 if device.type == "cuda" else cpu_compute_dtype()


def load_policy(
    model_path: str, lora, *, init_adapter: str | None, gradient_checkpointing: bool, device: torch.device
) -> PeftModel:
    """The base model (nf4 double-quant when ``lora.load_in_4bit``) with a LoRA adapter: new, from
    ``lora``'s ``lora_r``/``lora_alpha``/``lora_dropout``/``lora_target_modules`` (the trainer's and
    the warm-up's settings both have them), or loaded from ``init_adapter``."""
    from transformers import AutoModelForCausalLM

    compute_dtype = compute_dtype_for(device)
    logger.info("policy: %s base, compute dtype %s", "nf4" if lora.load_in_4bit else "unquantised", compute_dtype)
    quantization = nf4_quantization_config(compute_dtype) if lora.load_in_4bit else None
    base = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=quantization, dtype=compute_dtype, device_map={"": device}
    )
    if gradient_checkpointing:
        enable_gradient_checkpointing(base)
    if init_adapter is not None:
        policy = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
        logger.info("LoRA adapter initialised from %s", init_adapter)
    else:
        config = LoraConfig(
            r=lora.lora_r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=(
                "all-linear" if tuple(lora.lora_target_modules) == ("all-linear",) else list(lora.lora_target_modules)
            ),
            bias="none",
            task_type="CAUSAL_LM",
        )
        policy = get_peft_model(base, config)
    # Train mode from the start, and for good: on CPU, bitsandbytes 0.50 repacks an nf4 layer for
    # inference the first time it runs in eval mode without gradients; the repacked layer computes
    # different values and passes no gradient back, so LoRA layers below it would stop learning.
    policy.train()
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    logger.info(
        "policy: %s, %s, %d trainable LoRA parameters",
        model_path,
        "nf4" if lora.load_in_4bit else compute_dtype,
        trainable,
    )
    return policy


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing in every decoder layer (non-reentrant: LoRA's inputs need no
    gradient of their own), on the base model or on the PEFT model around it."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def nf4_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The bitsandbytes 4-bit linear layers of ``model``, by module name (none in a bf16 base)."""
    import bitsandbytes

    return [(name, module) for name, module in model.named_modules() if isinstance(module, bitsandbytes.nn.Linear4bit)]


def dequantized_linear(layer: torch.nn.Module) -> torch.nn.Linear:
    """A frozen ``nn.Linear`` holding ``layer``'s nf4 weight dequantised to its compute dtype: the
    very matrix bitsandbytes dequantises in every forward and backward of ``layer`` (on CPU, and on
    GPU for more than one row), computed once."""
    import bitsandbytes

    weight = bitsandbytes.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    weight = weight.to(layer.compute_dtype or weight.dtype)  # (out_features, in_features)
    linear = torch.nn.utils.skip_init(  # no random initialisation of a weight about to be replaced
        torch.nn.Linear,
        weight.shape[1],
        weight.shape[0],
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        linear.bias = torch.nn.Parameter(layer.bias.detach().to(weight.dtype), requires_grad=False)
    return linear


@contextlib.contextmanager
def nf4_dequantized_once(policy: PeftModel, enabled: bool = True) -> Iterator[None]:
    """Within the block, every nf4 linear layer of the base model computes with a dequantised copy
    of its weight, made once on entry; the nf4 layers are back on exit. A step's update runs its
    micro-batches in the block: bitsandbytes would otherwise dequantise every layer twice per
    micro-batch (forward and backward), with no fused 4-bit kernel for training on CPU. The copy
    costs the base's linear weights in the compute dtype (2 bytes a parameter) for the update's
    duration; the values computed are the same. LoRA wrappers keep their adapters: only the
    frozen base layer under them is swapped."""

    def put(name: str, module: torch.nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(policy.get_submodule(parent), child, module)

    swapped = nf4_layers(policy) if enabled else []
    for name, layer in swapped:
        put(name, dequantized_linear(layer))
    try:
        yield
    finally:
        for name, layer in swapped:
            put(name, layer)


def dequantized_copy_bytes(policy: PeftModel) -> int:
    """What ``nf4_dequantized_once``'s copy of the nf4 base takes: 2 bytes a base parameter (0 without
    an nf4 base)."""
    return sum(layer.in_features * layer.out_features * 2 for _, layer in nf4_layers(policy))


def free_memory_bytes(device: torch.device) -> int:
    """The memory free now: the device's, or the machine's on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def head_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head_weight: torch.Tensor,
    temperature: float,
    head_dtype: torch.dtype,
    chunk_tokens: int,
    with_gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(N, H) hidden states, (N,) targets → (N,) log π(target) after temperature, (N,) entropy, and
    where ``with_gradient`` the (N, H) gradient of each log π(target) with respect to its hidden
    state, d log π(y)/d h = (W[y] − Σ_v π(v) W[v]) / τ, computed here where the softmax already is.
    The LM head's product in ``head_dtype``, the softmax in fp32, ``chunk_tokens`` rows at a time
    so that no more than (chunk_tokens, vocab) logits exist at once."""
    weight = head_weight.to(head_dtype)  # (vocab, H)
    logprob_chunks, entropy_chunks, gradient_chunks = [], [], []
    for start in range(0, targets.numel(), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        logits = (hidden[rows].to(head_dtype) @ weight.T).float().div_(temperature)  # (n, vocab)
        log_normaliser = torch.logsumexp(logits, dim=-1)  # (n,)
        log_probabilities = logits.sub_(log_normaliser[:, None])  # in place: the logits are not needed again
        probabilities = log_probabilities.exp()  # (n, vocab)
        logprob_chunks.append(log_probabilities.gather(1, targets[rows, None]).squeeze(1))
        entropy_chunks.append(-torch.linalg.vecdot(probabilities, log_probabilities))
        if with_gradient:
            expected_row = (probabilities.to(head_dtype) @ weight).float()  # (n, H): Σ_v π(v) W[v]
            gradient_chunks.append((weight[targets[rows]].float() - expected_row) / temperature)
    gradient = torch.cat(gradient_chunks) if with_gradient else None
    return torch.cat(logprob_chunks), torch.cat(entropy_chunks), gradient


class HeadLogprobs(torch.autograd.Function):
    """``head_logprobs`` with its gradient: the forward keeps the (N, H) gradient it computed, the
    backward scales it by the incoming (N,) gradient. Autograd through the chunks would keep every
    chunk's (n, vocab) logits for the backward or, under activation checkpointing, compute the
    head's product and the softmax again, then once more for the backward; this keeps one (N, H)
    tensor and computes neither again. The head's weight gets no gradient: it is frozen under LoRA."""

    @staticmethod
    def forward(ctx, hidden, targets, head_weight, temperature, head_dtype, chunk_tokens):
        logprobs, entropy, gradient = head_logprobs(
            hidden, targets, head_weight, temperature, head_dtype, chunk_tokens, with_gradient=True
        )
        ctx.save_for_backward(gradient)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, logprobs_gradient, entropy_gradient):
        (gradient,) = ctx.saved_tensors  # (N, H)
        hidden_gradient = (logprobs_gradient[:, None] * gradient).to(ctx.hidden_dtype)
        return hidden_gradient, None, None, None, None, None


@dataclass(frozen=True)
class PromptPrefix:
    """A prompt's keys and values in every layer, computed once for the completions that share it:
    all of the prompt but its last token, which stays in every completion's row (the first
    completion token is predicted from it). ``computed``: the tensors with their graph back to
    LoRA; ``read``: the same values as leaves, which the completions' forwards read and whose
    gradients sum theirs (where ``computed`` has no graph, the same tensor). Needs gradient
    checkpointing off: transformers' checkpointed layers drop the cache."""

    computed: tuple[torch.Tensor, ...]  # keys and values of layer 0, 1, …: each (1, kv_heads, P − 1, head_dim)
    read: tuple[torch.Tensor, ...]

    @property
    def tokens(self) -> int:
        return self.computed[0].shape[-2]

    def cache(self, rows: int, config):
        """A transformers cache that holds the prefix for each of ``rows`` completions."""
        from transformers import DynamicCache

        expanded = [tensor.expand(rows, -1, -1, -1) for tensor in self.read]
        return DynamicCache(ddp_cache_data=list(zip(expanded[0::2], expanded[1::2], strict=True)), config=config)

    def backward(self) -> None:
        """Send the summed gradients of ``read`` through the prompt's forward (once per group)."""
        pairs = [(computed, read.grad) for computed, read in zip(self.computed, self.read) if read.grad is not None]
        if pairs:
            torch.autograd.backward([computed for computed, _ in pairs], [gradient for _, gradient in pairs])


def prompt_prefix(policy: PeftModel, prompt_token_ids: list[int], device: torch.device) -> PromptPrefix | None:
    """The prompt's ``PromptPrefix`` from one forward of all its tokens but the last; None for a
    one-token prompt (nothing to share)."""
    if len(prompt_token_ids) < 2:
        return None
    causal_lm = policy.get_base_model()
    ids = torch.tensor([prompt_token_ids[:-1]], device=device)  # (1, P − 1)
    cache = causal_lm.base_model(input_ids=ids, use_cache=True).past_key_values
    computed = tuple(tensor for layer in cache.layers for tensor in (layer.keys, layer.values))
    # keys of layer 0 (no LoRA on k_proj) and everything without gradients have no graph to pass on to
    return PromptPrefix(computed, tuple(t.detach().requires_grad_() if t.requires_grad else t for t in computed))


def completion_logprobs(
    policy: PeftModel,
    batch: MicroBatch,
    temperature: float,
    chunk_tokens: int = 1024,
    head_dtype: torch.dtype = torch.float32,
    prefix: PromptPrefix | None = None,
    head=HeadLogprobs.apply,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and entropies of ``batch``'s completion tokens: two (B, T) tensors, zero on
    padding: log π(token) after temperature (with gradient) and the entropy of π at that position
    (without). ``head_dtype``: the LM head's matrix product (``--lm-head-dtype``).
    ``prefix``: the rows' shared prompt, whose tokens ``batch`` leaves out (``collate``'s
    ``skipped_prompt_tokens``). ``head``: what computes the scored tokens' log-probabilities and
    entropies, with their gradient, from ``(hidden states, targets, head weight, temperature,
    head dtype, chunk tokens)``: ``HeadLogprobs`` (the update probe passes autograd's reference)."""
    causal_lm = policy.get_base_model()
    attention_mask, cache = batch.attention_mask, None  # (B, L)
    if prefix is not None:
        rows = batch.input_ids.shape[0]
        cache = prefix.cache(rows, causal_lm.config)
        attention_mask = torch.cat([attention_mask.new_ones(rows, prefix.tokens), attention_mask], dim=1)
    hidden = causal_lm.base_model(
        input_ids=batch.input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=cache is not None
    ).last_hidden_state  # (B, L, H)
    scored = batch.completion_positions[:, 1:]  # token t is predicted from the hidden state at t − 1
    predictor_states = hidden[:, :-1][scored]  # (N, H), N = completion tokens in the micro-batch
    targets = batch.input_ids[:, 1:][scored]  # (N,)
    head_weight = causal_lm.get_output_embeddings().weight  # (vocab, H)
    scoring = (predictor_states, targets, head_weight, temperature, head_dtype, chunk_tokens)
    if torch.is_grad_enabled() and predictor_states.requires_grad:
        flat_logprobs, flat_entropies = head(*scoring)  # (N,), (N,)
    else:
        flat_logprobs, flat_entropies, _ = head_logprobs(*scoring, with_gradient=False)
    logprobs = torch.zeros(batch.completion_mask.shape, dtype=flat_logprobs.dtype, device=flat_logprobs.device)
    entropies = torch.zeros_like(logprobs)
    # row-major order of both masks lines the N scored tokens up with the (B, T) completion slots
    return logprobs.masked_scatter(batch.completion_mask, flat_logprobs), entropies.masked_scatter(
        batch.completion_mask, flat_entropies
    )


def adapter_upload(policy: PeftModel, **fields) -> AdapterUpload:
    """The adapter exactly as PEFT saves it, as an upload for the server (``fields``: ``version``,
    ``activate``); written through a RAM-backed folder where there is one."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="grpo-math-push-", dir=shm if shm.is_dir() else None) as folder:
        policy.save_pretrained(folder)
        return AdapterUpload.from_folder(folder, **fields)
