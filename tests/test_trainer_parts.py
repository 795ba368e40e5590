"""The trainer's parts on the embedded model: log-probabilities, batching, data order, the pushed
adapter's format, and bad settings."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load as load_safetensors

from generator_server.adapters import check_adapter
from shared.models import embedded_model_dir, linear_layer_shapes
from shared.settings import parse_settings
from tests.rounding import entropy_bound, gamma, head_gradient_bound, log_softmax_bound, unit_roundoff
from trainer.batching import Sequence, collate, micro_batches, question_indices, same_prompt
from trainer.distributed import Ranks
from trainer.grpo import LossConfig, Normaliser
from trainer.policy import (
    HeadLogprobs,
    adapter_upload,
    completion_logprobs,
    head_logprobs,
    load_policy,
    nf4_dequantized_once,
    nf4_layers,
    prompt_prefix,
)
from trainer.settings import TrainSettings, resolve
from trainer.step import Learner, backward_micro_batch, backward_share, measure_micro_batch, to_train, update


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    settings = TrainSettings(lora_dropout=0.0)
    return load_policy(
        str(embedded_model_dir()), settings, init_adapter=None, gradient_checkpointing=False, device=torch.device("cpu")
    )


def test_policy_is_nf4_with_the_recipe_lora(policy):
    import bitsandbytes

    linear_4bit = [m for m in policy.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert linear_4bit and all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in linear_4bit)
    config = policy.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, sorted(config.target_modules)) == (
        16,
        32,
        0.0,
        ["q_proj", "v_proj"],
    )
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) == 921_600


def predictor_states(hidden: torch.Tensor, batch) -> torch.Tensor:
    """(B, L, H) hidden states → (N, H): those that predict the N completion tokens."""
    return hidden[:, :-1][batch.completion_positions[:, 1:]]


@pytest.mark.numerics
def test_chunked_logprobs_equal_a_full_log_softmax_and_reach_lora(policy):
    torch.manual_seed(3)
    sequences = [
        Sequence([5, 6, 7, 8], [9, 10, 11], [-1.0] * 3, 1.0),
        Sequence([5, 6], [12, 13, 14, 15, 2], [-1.0] * 5, -1.0),
    ]
    batch = collate(sequences, pad_token_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11], [5, 6, 12, 13, 14, 15, 2]]
    assert batch.completion_mask.tolist() == [[True, True, True, False, False], [True] * 5]
    logps, entropies = completion_logprobs(policy, batch, temperature=0.7, chunk_tokens=3)
    with torch.no_grad():
        causal_lm = policy.get_base_model()
        hidden = causal_lm.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        full = torch.log_softmax(hidden.float() @ causal_lm.lm_head.weight.float().T / 0.7, dim=-1)  # (B, L, vocab)
    expected = torch.zeros(2, 5)
    for row, sequence in enumerate(sequences):
        start = len(sequence.prompt_token_ids)
        for offset, token in enumerate(sequence.completion_token_ids):
            expected[row, offset] = full[row, start + offset - 1, token]
    # both in float32 from the same hidden states: within twice one computation's rounding bound
    # (tests/rounding.py); a target one position off would be nats away
    scored = predictor_states(hidden, batch)
    bound = 2 * log_softmax_bound(scored, causal_lm.lm_head.weight, 0.7, expected[batch.completion_mask])
    difference = (logps.detach() - expected)[batch.completion_mask].abs()
    print(f"\nchunked vs full log-softmax: {difference.max():.2e} nats (bound {bound.min():.2e})")
    assert (difference <= bound).all()
    probabilities = full.exp()
    exact_entropy = -(probabilities[1, 1] * full[1, 1]).sum()
    worst_logprob = log_softmax_bound(hidden[1, 1:2], causal_lm.lm_head.weight, 0.7, full[1, 1].min()[None])
    entropy_error = 2 * entropy_bound(worst_logprob, exact_entropy[None], full.shape[-1])
    assert abs(entropies[1, 0] - exact_entropy) <= entropy_error
    (logps * batch.completion_mask).sum().backward()
    lora_b_grads = [p.grad for name, p in policy.named_parameters() if "lora_B" in name]
    assert len(lora_b_grads) == 60 and all(g is not None and g.abs().sum() > 0 for g in lora_b_grads)
    policy.zero_grad(set_to_none=True)


@pytest.mark.numerics
def test_the_head_gradient_computed_in_the_forward_equals_autograd_through_a_full_log_softmax(policy):
    """``HeadLogprobs`` computes d log π(y)/d h in its forward pass, chunk by chunk; on the model's
    own hidden states and LM head, the gradient it passes back equals autograd's through the full
    (N, vocab) log-softmax, and so does the no-gradient path's output."""
    causal_lm = policy.get_base_model()
    with torch.no_grad():
        ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
        states = causal_lm.base_model(input_ids=ids).last_hidden_state[0].float()  # (11, H)
    targets = torch.tensor([6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 2])
    head_weight = causal_lm.lm_head.weight  # (vocab, H), bf16
    incoming = torch.linspace(-1.0, 2.0, 11)  # the loss's gradient with respect to each log-probability

    hidden = states.clone().requires_grad_()
    logprobs, entropy = HeadLogprobs.apply(hidden, targets, head_weight, 0.7, torch.float32, 4)  # chunks 4, 4, 3
    (logprobs * incoming).sum().backward()
    reference_hidden = states.clone().requires_grad_()
    full = torch.log_softmax(reference_hidden @ head_weight.float().T / 0.7, dim=-1)  # (11, vocab)
    reference = full.gather(1, targets[:, None]).squeeze(1)
    (reference * incoming).sum().backward()

    # Bounds: twice one float32 computation's worst-case rounding (tests/rounding.py), from the
    # hidden states' and the head's magnitudes, the hidden size and the vocabulary
    logprob_error = log_softmax_bound(states, head_weight, 0.7, reference)
    worst_logprob_error = log_softmax_bound(states, head_weight, 0.7, full.detach().min(dim=-1).values)
    exact_entropy = -(full.exp() * full).sum(-1).detach()
    assert ((logprobs - reference).abs() <= 2 * logprob_error).all()
    assert ((entropy - exact_entropy).abs() <= 2 * entropy_bound(worst_logprob_error, exact_entropy, 49152)).all()
    error = (hidden.grad - reference_hidden.grad).norm() / reference_hidden.grad.norm()
    gradient_bound = head_gradient_bound(full.exp(), head_weight, targets, incoming, 0.7, worst_logprob_error)
    bound = 2 * gradient_bound.norm() / reference_hidden.grad.norm()
    print(f"\nhead: |Δ log π| {(logprobs - reference).abs().max():.2e} (bound {2 * logprob_error.min():.2e}),"
          f" gradient {error:.2e} (bound {bound:.2e})")  # fmt: skip
    assert error <= bound  # leaving out the temperature: 0.42, 17x the bound
    with torch.no_grad():
        plain = head_logprobs(states, targets, head_weight, 0.7, torch.float32, 4, with_gradient=False)
    assert torch.equal(plain[0], logprobs.detach()) and plain[2] is None


def test_a_no_grad_forward_leaves_the_policy_trainable(policy):
    """bitsandbytes repacks an nf4 layer that runs in eval mode without gradients (and then passes
    no gradient back); the policy stays in train mode, so a no-grad pass must not trigger that."""
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        policy(input_ids=ids)
    assert policy.training
    logits = policy(input_ids=ids).logits
    logits[0, -1, 0].backward()
    assert all(p.grad is not None for name, p in policy.named_parameters() if "lora_B" in name)
    policy.zero_grad(set_to_none=True)


@pytest.mark.numerics
def test_a_step_that_trains_nothing_still_measures_the_gap_to_the_sampler(policy):
    """Where every group scored alike, one group goes through the policy without gradients: the
    sampler–trainer gap that ``--max-sampler-gap`` checks, and no sequence counted as trained."""
    run = SimpleNamespace(settings=TrainSettings(), device=torch.device("cpu"), lm_head_dtype=torch.float32)
    sequences = [Sequence([5, 6, 7], [9, 10], [-1.0, -2.0], 0.0), Sequence([5, 6], [12, 13, 2], [-1.0] * 3, 0.0)]
    stats = measure_micro_batch(run, policy, sequences)
    batch = collate(sequences, pad_token_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        logps, _ = completion_logprobs(policy, batch, run.settings.temperature)
    mask = batch.completion_mask
    expected = ((logps - batch.sampler_logprobs).abs() * mask).sum() / mask.sum()
    assert (stats.sequences, stats.tokens, stats.loss) == (0, 5, 0.0)
    # the same no-gradient forward on both sides; only the 5-term sum of |gap| and the division round
    assert stats.abs_gap / stats.tokens == pytest.approx(expected.item(), rel=2 * gamma(stats.tokens + 1))
    assert all(p.grad is None for p in policy.parameters())


@pytest.mark.numerics
def test_dequantising_once_per_step_computes_the_same_logprobs_and_gradients(policy):
    """``nf4_dequantized_once`` swaps the nf4 base layers for dequantised copies for the block: the
    log-probabilities and every LoRA gradient are those of the nf4 layers, and the nf4 layers are
    back afterwards."""
    sequences = [Sequence([5, 6, 7, 8], [9, 10, 11], [-1.0] * 3, 1.0), Sequence([5, 6], [12, 13, 2], [-1.0] * 3, -1.0)]
    batch = collate(sequences, pad_token_id=0, device=torch.device("cpu"))
    layers_before = nf4_layers(policy)

    def logprobs_and_gradients():
        logps, _ = completion_logprobs(policy, batch, temperature=0.9)
        (logps * batch.completion_mask * batch.advantages[:, None]).sum().backward()
        gradients = {name: p.grad.clone() for name, p in policy.named_parameters() if p.requires_grad}
        policy.zero_grad(set_to_none=True)
        return logps.detach(), gradients

    per_micro_batch = logprobs_and_gradients()
    with nf4_dequantized_once(policy):
        assert nf4_layers(policy) == []
        once = logprobs_and_gradients()
    assert nf4_layers(policy) == layers_before
    # Equal, not close: bitsandbytes computes an nf4 layer on CPU by dequantising its weight to the
    # same bf16 matrix and calling the same torch products (linear forward, matmul with the
    # (out, in) matrix backward) as the copy does, in the same process and threads
    assert torch.equal(once[0], per_micro_batch[0])
    assert once[1].keys() == per_micro_batch[1].keys() and len(once[1]) == 120
    for name, gradient in per_micro_batch[1].items():
        assert torch.equal(once[1][name], gradient), name


@pytest.mark.numerics
def test_the_lm_head_in_bf16_stays_near_float32(policy):
    """``--lm-head-dtype compute``: the head's product in bf16, the softmax in fp32; log-probabilities
    within a few hundredths of a nat of the fp32 head's, and gradients still reach LoRA."""
    sequences = [Sequence([5, 6, 7, 8], [9, 10, 11], [-1.0] * 3, 1.0), Sequence([5, 6], [12, 13, 2], [-1.0] * 3, -1.0)]
    batch = collate(sequences, pad_token_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        float32, _ = completion_logprobs(policy, batch, temperature=0.9)
        causal_lm = policy.get_base_model()
        hidden = causal_lm.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    bf16, _ = completion_logprobs(policy, batch, temperature=0.9, head_dtype=torch.bfloat16)
    difference = (bf16.detach() - float32).abs()[batch.completion_mask]
    # Bound: both heads multiply the same bf16 values and accumulate in fp32 (tests/rounding.py's
    # log_softmax_bound for each), and the bf16 head rounds each product to bf16, u_bf16·|z|: z_y's
    # and, through the log-sum-exp, at most the largest |z|'s. It is tenths of a nat where the logits
    # reach 40; the measured difference is hundredths (0.025 here).
    states, head_weight = predictor_states(hidden, batch), causal_lm.lm_head.weight
    largest_logit = (states.float() @ head_weight.float().T / 0.9).abs().max(dim=-1).values  # (N,)
    fp32_part = 2 * log_softmax_bound(states, head_weight, 0.9, float32[batch.completion_mask])
    bound = fp32_part + 2 * unit_roundoff(torch.bfloat16) * largest_logit
    print(f"\nbf16 head vs fp32: {difference.max():.3f} nats (bound {bound.min():.3f})")
    assert (difference > 0).any() and (difference <= bound).all()
    (bf16 * batch.completion_mask).sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for name, p in policy.named_parameters() if "lora_B" in name
    )
    policy.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def float32_policy():
    """The embedded model in float32, unquantised, with a LoRA adapter whose B is not zero: the
    shared prompt's values are exact here (bf16 kernels differ by query length, nf4 or not)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    policy = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    return policy


def float32_run(settings: TrainSettings, shared_prompt: bool, loss_config: LossConfig, **more) -> SimpleNamespace:
    """The parts of ``trainer.step.Run`` an update reads, for the float32 policy on one CPU rank."""
    return SimpleNamespace(
        settings=settings,
        ranks=Ranks(),
        device=torch.device("cpu"),
        lm_head_dtype=torch.float32,
        head=HeadLogprobs.apply,
        shared_prompt=shared_prompt,
        loss_config=loss_config,
        **more,
    )


def two_groups() -> list[Sequence]:
    """Two questions' groups (3 and 2 completions) of random tokens, advantages of both signs."""
    generator = torch.Generator().manual_seed(1)
    sequences = []
    for prompt_tokens, completion_lengths in ((40, (7, 12, 3)), (25, (9, 4))):
        prompt = torch.randint(3, 40000, (prompt_tokens,), generator=generator).tolist()
        for index, length in enumerate(completion_lengths):
            completion = torch.randint(3, 40000, (length,), generator=generator).tolist()
            sequences.append(Sequence(prompt, completion, [-5.0] * length, 1.0 if index % 2 else -0.5))
    return sequences


@pytest.mark.numerics
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_a_prompt_run_once_for_its_group_gives_the_loss_and_gradients_of_whole_sequences(float32_policy, beta):
    """``--shared-prompt-forward``: each group's prompt runs once and its completions read its keys
    and values; the loss, the gap to the sampler and every LoRA gradient are those of running each
    sequence whole. Leaving out the prompt's own backward (``PromptPrefix.backward``) would be 0.9
    off, so the tolerance catches a lost path."""
    sequences = two_groups()
    settings = TrainSettings(lora_dropout=0.0, micro_batch_size=2, beta=beta)
    normaliser = Normaliser(len(sequences), sum(len(s.completion_token_ids) for s in sequences), 16)

    def update(shared_prompt: bool, prompt_backward: bool = True):
        run = float32_run(settings, shared_prompt, LossConfig(beta=beta))
        if prompt_backward:
            stats = backward_share(run, float32_policy, sequences, normaliser)
        else:
            for group in same_prompt(sequences):
                prefix = prompt_prefix(float32_policy, group[0].prompt_token_ids, run.device)
                for chunk in micro_batches(group, settings.micro_batch_size):
                    backward_micro_batch(run, float32_policy, chunk, normaliser, prefix)
            stats = None
        gradient = torch.cat([p.grad.flatten() for p in float32_policy.parameters() if p.requires_grad])
        float32_policy.zero_grad(set_to_none=True)
        return stats, gradient

    whole, whole_gradient = update(shared_prompt=False)
    shared, shared_gradient = update(shared_prompt=True)
    _, without_prompt_backward = update(shared_prompt=True, prompt_backward=False)

    def error(gradient: torch.Tensor) -> float:
        return ((gradient - whole_gradient).norm() / whole_gradient.norm()).item()

    assert shared.tokens == whole.tokens == 35 and shared.sequences == whole.sequences == 5
    print(f"\nshared prompt, beta {beta}: loss {abs(shared.loss - whole.loss) / abs(whole.loss):.2e},"
          f" gap {abs(shared.abs_gap - whole.abs_gap) / whole.abs_gap:.2e}, gradient {error(shared_gradient):.2e}"
          f" (without the prompt's backward {error(without_prompt_backward):.2e})")  # fmt: skip
    # The two run other kernels (attention over a cache; the prompt's keys from their own forward)
    # through 30 float32 layers, which no short derivation bounds; measured on AMD EPYC with the
    # default kernels and with ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 (.ci/run):
    # loss ≤ 5.7e-6, gap ≤ 1.2e-7, gradient ≤ 6.1e-6 relative. The bounds are ≥ 16x those, and a lost
    # path (the prompt's backward left out) is 0.91, 9,000x the gradient's bound.
    assert shared.loss == pytest.approx(whole.loss, rel=1e-4)
    assert shared.abs_gap == pytest.approx(whole.abs_gap, rel=1e-5)
    assert error(shared_gradient) < 1e-4 and error(without_prompt_backward) > 0.5


@pytest.mark.numerics
def test_two_updates_on_one_batch_step_twice_clip_against_the_policy_before_them_and_schedule_once(float32_policy):
    """``--num-iterations 2``: π_old from one pass without gradients, two AdamW steps on the same
    batch, the schedule moved once; the second update's ratio has moved (a learning rate large
    enough to move it past 1 ± ε), so the clip holds some tokens, counted over both updates. The
    sampler correction is off: ``two_groups``' sampler logprobs (−5) are far from the random
    tokens' (about −10.6), and weights near 0 would leave nothing to move."""
    sequences = two_groups()
    settings = TrainSettings(
        lora_dropout=0.0,
        micro_batch_size=2,
        num_iterations=2,
        learning_rate=0.05,
        vllm_importance_sampling_correction=False,
    )
    trainable = [p for p in float32_policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    run = float32_run(settings, shared_prompt=True, loss_config=LossConfig(), dequantize_once=False)
    trained, normaliser = to_train(sequences, settings)
    try:
        stats, optimized = update(
            run, Learner(float32_policy, optimizer, scheduler), sequences, trained, normaliser, {}
        )
    finally:
        with torch.no_grad():
            for parameter, value in zip(trainable, before, strict=True):
                parameter.copy_(value)
    assert optimized is not None and scheduler.last_epoch == 1
    assert int(optimizer.state[trainable[0]]["step"]) == 2
    assert stats.tokens == 35 and stats.clip_tokens == 2 * 35 and 0 < stats.clipped < stats.clip_tokens


# (settings, CUDA, copy fits in a quarter of free memory) → (checkpointing, shared prompt, dequantise once)
RESOLVED = [
    (TrainSettings(), False, True, ("off", "on", "on")),  # CPU: the defaults
    (TrainSettings(), False, False, ("off", "on", "off")),  # the copy does not fit
    (TrainSettings(), True, True, ("on", "off", "on")),  # CUDA: checkpointing, so no shared prompt
    (TrainSettings(shared_prompt_forward="on"), True, True, ("off", "on", "on")),  # sharing turns it off
    (TrainSettings(gradient_checkpointing="on"), False, True, ("on", "off", "on")),  # asked for on CPU
    (TrainSettings(gradient_checkpointing="off"), True, False, ("off", "on", "off")),
    (TrainSettings(shared_prompt_forward="off", dequantize_once="on"), False, False, ("off", "off", "on")),
    (TrainSettings(load_in_4bit=False), False, None, ("off", "on", "off")),  # no nf4 base: no copy
]


@pytest.mark.parametrize("settings, cuda, fits, expected", RESOLVED)
def test_every_auto_is_resolved_in_one_place(settings, cuda, fits, expected):
    """Transformers' checkpointed layers drop a cache, so the shared prompt and checkpointing never
    run together; the resolved settings hold no auto and pass their own checks again."""
    copy_bytes = 0 if fits is None else 2**30
    free_bytes = 2**33 if fits else 2**31
    resolved = resolve(settings, cuda, copy_bytes, free_bytes)
    assert (resolved.gradient_checkpointing, resolved.shared_prompt_forward, resolved.dequantize_once) == expected
    assert TrainSettings(**vars(resolved)) == resolved


def test_a_shared_prompt_leaves_its_tokens_out_of_the_rows():
    sequences = [Sequence([5, 6, 7], [9, 10], [-1.0] * 2, 1.0), Sequence([5, 6, 7], [11], [-1.0], -1.0)]
    batch = collate(sequences, pad_token_id=0, device=torch.device("cpu"), skipped_prompt_tokens=2)
    assert batch.input_ids.tolist() == [[7, 9, 10], [7, 11, 0]]
    assert batch.completion_positions.tolist() == [[False, True, True], [False, True, False]]
    with pytest.raises(ValueError, match="share"):
        collate([sequences[0], Sequence([5, 8, 7], [9], [-1.0], 1.0)], 0, torch.device("cpu"), skipped_prompt_tokens=2)


def test_micro_batches_group_similar_lengths():
    sequences = [Sequence([1] * p, [2] * c, [0.0] * c, 1.0) for p, c in [(10, 90), (10, 5), (10, 50), (10, 7)]]
    batches = micro_batches(sequences, size=2)
    assert [[len(s.completion_token_ids) for s in batch] for batch in batches] == [[5, 7], [50, 90]]


def test_data_order_is_a_function_of_seed_and_step():
    size = 7473
    first = [i for step in range(1, 4) for i in question_indices(step, 2, size, seed=42)]
    assert (
        first == [i for step in range(1, 4) for i in question_indices(step, 2, size, seed=42)] and len(set(first)) == 6
    )
    assert first != [i for step in range(1, 4) for i in question_indices(step, 2, size, seed=43)]
    one_epoch = [i for step in range(1, size // 2 + 1) for i in question_indices(step, 2, size, seed=42)]
    assert len(set(one_epoch)) == len(one_epoch)  # an epoch visits every question once


def test_pushed_adapter_is_peft_format_and_passes_the_server_checks(policy, tmp_path):
    upload = adapter_upload(policy, version=7)
    assert upload.version == 7 and json.loads(upload.adapter_config)["r"] == 16
    tensors = load_safetensors(upload.adapter_model)
    assert len(tensors) == 30 * 2 * 2 and all(key.startswith("base_model.model.model.layers.") for key in tensors)
    assert (
        check_adapter(
            upload.adapter_config, upload.adapter_model, linear_layer_shapes(str(embedded_model_dir())), max_rank=16
        )
        == 16
    )
    upload.write_to(tmp_path)
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_model_dir()), tmp_path)
    assert loaded.peft_config["default"].r == 16


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning-rate", "0"], "--learning-rate must be > 0"),
        (["--learning-rate=-1e-5"], "--learning-rate must be > 0"),
        (["--num-generations", "1"], "--num-generations must be at least 2"),
        (["--model", "./no/such/model"], "--model ./no/such/model: no such folder"),
        (["--init-adapter", "/"], "no adapter_config.json"),
        (["--resume"], "--resume needs --output-dir"),
        (["--reward-weights", "1", "2"], "--reward-weights needs one weight per --reward-funcs function (4)"),
        (["--loss-type", "ppo"], "invalid choice"),
        (["--lora-target-modules", "q_proj", "lm_head"], "--lora-target-modules cannot name lm_head"),
        (["--lora-target-modules", "q_proj", "all-linear"], "nor all-linear beside other names"),
        (["--num-iterations", "0"], "--num-iterations must be at least 1"),
        (
            ["--shared-prompt-forward", "on", "--gradient-checkpointing", "on"],
            "--shared-prompt-forward cannot be on with --gradient-checkpointing on",
        ),
    ],
)
def test_bad_settings_fail_fast_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(TrainSettings, flags, prog="grpo-math train")
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_unreachable_server_fails_fast():
    result = subprocess.run(
        [sys.executable, "-m", "grpo_math", "train", "--server-url", "http://127.0.0.1:9", "--server-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "--server-url" in result.stderr and "not reachable" in result.stderr
