"""The trainer's settings: one frozen dataclass; ``grpo-math train`` has one flag per field.

Defaults are the original recipe's (a GPU run of Qwen2.5-3B-Instruct); names follow TRL's
``GRPOConfig`` where it has one. The CPU recipe's overrides of them are in one place,
``grpo_math/recipe.py``.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.datasets import DATASET_HELP, SYSTEM_PROMPT_HELP, longest_prompt_tokens, require_dataset
from shared.models import is_missing_folder
from shared.prompting import Problem
from shared.protocol import AdapterUpload, HealthResponse, ServerLimits
from shared.rewards import (
    DEFAULT_REWARD_FUNCS,
    REWARD_FUNCS_HELP,
    WeightedReward,
    load_rewards,
    reward_function_problem,
)
from shared.settings import Check, SettingsError, at_least, check_fields, positive, read_api_key, require, setting
from shared.versions import adapter_keep_for


@dataclass(frozen=True)
class TrainSettings:
    server_url: tuple[str, ...] = setting(
        ("http://127.0.0.1:8000",),
        "generator server; give it more than once (or several URLs) and each step's groups are split "
        "across the servers, every adapter pushed to all of them",
    )
    generator: Literal["grpo-math", "vllm"] = setting(
        "grpo-math",
        "grpo-math = grpo-math serve (adapters pushed over HTTP); vllm = vLLM's own server (vllm serve or "
        "trl vllm-serve with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), adapters through "
        "--vllm-adapter-dir",
    )
    vllm_adapter_dir: str | None = setting(
        None, "--generator vllm: a folder the vLLM server can read, where each adapter version is written"
    )
    api_key_file: str | None = setting(None, "file holding the server's API key; else $GRPO_MATH_API_KEY")
    ca_bundle: str | None = setting(
        None, "HTTPS: the CA certificate(s) that signed the server's (PEM); none = the system's"
    )
    server_retry_seconds: float = setting(
        300.0,
        "how long a request is retried (backoff 1, 2, 4 … 30 s) while the server is unreachable or answers 5xx "
        "before the run stops; a restarted server gets the current adapter again",
        check=at_least(0),
    )
    max_staleness: int = setting(
        0,
        "asynchronous GRPO: sample up to S steps ahead while training, each batch at most S optimizer steps "
        "older than the policy (the importance weights correct it); 0 = sample, then train (synchronous)",
        check=at_least(0),
    )
    max_sampler_gap: float | None = setting(
        0.1,
        "mean |log π_trainer − log π_sampler| per token above which the server is taken not to serve the adapter "
        "pushed: push it again once, stop if a batch sampled after that is still above (healthy runs measure far "
        "less: docs/reliability.md); judged on batches sampled with the trainer's own weights (staleness 0); "
        "none = never check",
        check=positive(),
    )
    max_bad_steps: int = setting(
        3,
        "steps in a row with NaN/Inf loss or gradients (each skipped) before the run stops",
        check=at_least(1),
    )
    model: str = setting(
        "auto", "hub id or folder; auto = Qwen2.5-3B-Instruct on CUDA, the embedded SmolLM2-135M-Instruct on CPU"
    )
    init_adapter: str | None = setting(None, "PEFT adapter folder to start from (e.g. the output of grpo-math sft)")
    dataset: str = setting("gsm8k", f"the questions: {DATASET_HELP}")
    dataset_train_split: str = setting("train", "the split trained on (a slice works: train[:1000])")
    dataset_test_split: str = setting(
        "test", "the split --eval-every evaluates on (a single file is one split: slice it, train[1000:])"
    )
    system_prompt: str | None = setting(None, SYSTEM_PROMPT_HELP)
    max_steps: int = setting(10, "optimizer steps", check=at_least(1))
    prompts_per_step: int = setting(2, "questions per step (the recipe's batch 2)", check=at_least(1))
    num_generations: int = setting(
        8,
        "completions per question (G, the group size)",
        check=Check(lambda v: v >= 2, "must be at least 2: advantages compare completions within a group"),
    )
    micro_batch_size: int = setting(
        2, "sequences per forward/backward; gradients accumulate over the step's prompts × G", check=at_least(1)
    )
    max_completion_length: int = setting(1024, "most tokens per completion", check=at_least(1))
    temperature: float = setting(
        1.0,
        "sampling temperature; the trainer scores with the same one",
        check=Check(lambda v: v > 0, "must be > 0: the policy is scored at the sampling temperature"),
    )
    top_p: float = setting(1.0, "nucleus sampling", check=Check(lambda v: 0 < v <= 1, "must be in (0, 1]"))
    learning_rate: float = setting(5e-6, "AdamW peak learning rate", check=positive())
    lr_scheduler_type: Literal["linear", "constant"] = setting("linear", "linear decays to 0 at max-steps")
    warmup_steps: int = setting(0, "linear warm-up steps", check=at_least(0))
    weight_decay: float = setting(0.0, "AdamW weight decay", check=at_least(0))
    max_grad_norm: float = setting(0.1, "gradient norm clip", check=positive())
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = setting(
        "dapo", "loss aggregation, as TRL 1.16 (dapo: mean over all tokens)"
    )
    beta: float = setting(0.0, "KL coefficient; the reference is the base model (adapter disabled)", check=at_least(0))
    epsilon: float = setting(0.2, "clip range (lower, and upper unless --epsilon-high)", check=positive())
    epsilon_high: float | None = setting(None, "upper clip range; none = --epsilon", check=positive())
    scale_rewards: Literal["group", "none"] = setting(
        "group", "group: divide advantages by the group's std (+1e-4); none: only centre them"
    )
    num_iterations: int = setting(
        1,
        "updates per sampled batch (TRL's μ): π_old is the policy before the first, so from the second on the "
        "ratio moves and --epsilon / --epsilon-high clip it; the schedule steps once per batch",
        check=at_least(1),
    )
    mask_truncated_completions: bool = setting(
        False, "completions cut off at --max-completion-length count in no loss, nor their tokens in its normaliser"
    )
    vllm_importance_sampling_correction: bool = setting(
        True, "weight sequences by π_trainer/π_sampler (TRL's sequence_mask)"
    )
    vllm_importance_sampling_clip_max: float = setting(
        3.0, "sequences whose weight exceeds this are dropped", check=positive()
    )
    reward_funcs: tuple[str, ...] = setting(DEFAULT_REWARD_FUNCS, REWARD_FUNCS_HELP)
    reward_weights: tuple[float, ...] | None = setting(
        None, "one weight per --reward-funcs function, for their weighted sum; none: 1.0 each (TRL's default)"
    )
    load_in_4bit: bool = setting(True, "nf4 double-quant base (bitsandbytes)")
    lora_r: int = setting(16, "LoRA rank", check=at_least(1))
    lora_alpha: int = setting(32, "LoRA alpha", check=positive())
    lora_dropout: float = setting(0.1, "LoRA dropout", check=Check(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    lora_target_modules: tuple[str, ...] = setting(
        ("q_proj", "v_proj"),
        "modules that get LoRA; all-linear = every linear layer but the LM head (PEFT's shorthand)",
        check=Check(
            lambda v: not {"lm_head", "embed_tokens"} & set(v) and ("all-linear" not in v or len(v) == 1),
            "cannot name lm_head or embed_tokens (log-probabilities are scored through the LM head's frozen "
            "weight), nor all-linear beside other names",
        ),
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = setting(
        "auto", "auto = on with CUDA (unless --shared-prompt-forward on), off on CPU"
    )
    lm_head_dtype: Literal["float32", "compute"] = setting(
        "compute",
        "the LM head's matrix product when scoring completions: float32, or the compute dtype (fp16 on GPU; on "
        "CPU bf16 where it has native bf16 instructions, else float32; the softmax stays float32)",
    )
    dequantize_once: Literal["auto", "on", "off"] = setting(
        "auto",
        "dequantise the nf4 base once per step for the update, not in every micro-batch's forward and "
        "backward; auto = on where the copy (2 bytes a base parameter) takes under a quarter of the free memory",
    )
    shared_prompt_forward: Literal["auto", "on", "off"] = setting(
        "auto",
        "run each question's prompt through the policy once for its G completions, which read its keys "
        "and values (their gradients reach LoRA through them); auto = on where gradient checkpointing is "
        "off (transformers' checkpointed layers drop the cache)",
    )
    seed: int = setting(42, "data order, dropout and LoRA init")
    output_dir: str | None = setting(None, "run folder; none = runs/<model>-<time>")
    save_every: int = setting(5, "checkpoint every N steps (0 = only the final adapter)", check=at_least(0))
    keep_checkpoints: int = setting(2, "checkpoints kept (the newest)", check=at_least(1))
    resume: bool = setting(False, "continue from the newest checkpoint in --output-dir")
    eval_every: int = setting(
        0, "evaluate the adapter greedily on --dataset-test-split every N steps (0 = never)", check=at_least(0)
    )
    eval_limit: int = setting(32, "evaluation questions: the first N of --dataset-test-split", check=at_least(1))
    report_to: Literal["trackio", "none"] = setting("trackio", "trackio (offline store) besides metrics.jsonl")
    server_timeout: float = setting(
        600.0,
        "seconds to wait for the server to be ready at start (a server started just before may still be loading "
        "its model: minutes on a first GPU start, about a minute and a half for a CPU engine)",
        check=at_least(0),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(bool(self.server_url), "server_url", "needs at least one URL")
        require(
            self.generator != "vllm" or self.vllm_adapter_dir is not None,
            "vllm_adapter_dir",
            "is needed with --generator vllm: the server loads adapters from a folder",
        )
        require_dataset("dataset", self.dataset)
        require(
            self.reward_weights is None or len(self.reward_weights) == len(self.reward_funcs),
            "reward_weights",
            f"needs one weight per --reward-funcs function ({len(self.reward_funcs)}), got {self.reward_weights}",
        )
        for spec in self.reward_funcs:
            require(reward_function_problem(spec) is None, "reward_funcs", reward_function_problem(spec) or "")
        names = [spec.rpartition(":")[2] for spec in self.reward_funcs]
        require(
            len(set(names)) == len(names), "reward_funcs", f"two functions share a name: {names} (metrics name each)"
        )
        require(not self.resume or self.output_dir is not None, "resume", "needs --output-dir (the run to continue)")
        require(
            not (self.shared_prompt_forward == "on" and self.gradient_checkpointing == "on"),
            "shared_prompt_forward",
            "cannot be on with --gradient-checkpointing on: transformers' checkpointed layers drop the prompt's cache",
        )
        require(
            self.ca_bundle is None or Path(self.ca_bundle).is_file(), "ca_bundle", f"{self.ca_bundle}: no such file"
        )
        for name in ("model", "init_adapter"):
            path = getattr(self, name)
            require(path is None or not is_missing_folder(path), name, f"{path}: no such folder")
        if self.init_adapter is not None:
            require(
                AdapterUpload.is_adapter_folder(self.init_adapter),
                "init_adapter",
                f"{self.init_adapter}: no adapter_config.json and adapter_model.safetensors there (not a PEFT adapter)",
            )

    def api_key(self) -> str | None:
        return read_api_key(self.api_key_file)

    def rewards(self) -> tuple[WeightedReward, ...]:
        """``--reward-funcs`` loaded, each with its ``--reward-weights`` weight.

        >>> [(reward.name, reward.weight) for reward in TrainSettings(reward_weights=(1, 0, 2, 1)).rewards()][2]
        ('check_answer_correctness', 2)
        """
        return load_rewards(self.reward_funcs, self.reward_weights)


def resolve(settings: TrainSettings, cuda: bool, dequantized_copy_bytes: int, free_memory_bytes: int) -> TrainSettings:
    """The settings with every ``auto`` made ``on`` or ``off`` for this machine, in one place:

    - ``--gradient-checkpointing``: on with CUDA (activations dominate a GPU's memory), off on CPU,
      and off wherever the prompt is shared (transformers' checkpointed layers drop its cache);
    - ``--shared-prompt-forward``: on wherever gradient checkpointing is off;
    - ``--dequantize-once``: on where the dequantised copy of the nf4 base (``dequantized_copy_bytes``;
      0 without an nf4 base) takes under a quarter of the free memory.

    ``--lm-head-dtype compute`` stays as it is: the compute dtype is the device's
    (``trainer.policy.compute_dtype_for``). A run writes these settings to its ``settings.json``.

    >>> on_cpu = resolve(TrainSettings(), cuda=False, dequantized_copy_bytes=2**28, free_memory_bytes=2**33)
    >>> on_cpu.gradient_checkpointing, on_cpu.shared_prompt_forward, on_cpu.dequantize_once
    ('off', 'on', 'on')
    """
    checkpointing = settings.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = "on" if cuda and settings.shared_prompt_forward != "on" else "off"
    shared_prompt = settings.shared_prompt_forward
    if shared_prompt == "auto":
        shared_prompt = "on" if checkpointing == "off" else "off"
    dequantize = settings.dequantize_once
    if dequantize == "auto":
        dequantize = "on" if 0 < dequantized_copy_bytes < free_memory_bytes / 4 else "off"
    return dataclasses.replace(
        settings, gradient_checkpointing=checkpointing, shared_prompt_forward=shared_prompt, dequantize_once=dequantize
    )


def check_against_server(settings: TrainSettings, health: HealthResponse) -> None:
    """Raise ``SettingsError`` naming the flag to change where the server would refuse the run's
    requests; called before any model is loaded."""
    limits = health.limits
    needed = adapter_keep_for(settings.max_staleness)
    if settings.max_staleness and health.adapter_mode == "lora" and limits.adapter_keep < needed:
        raise SettingsError(
            "max_staleness",
            f"{settings.max_staleness} needs the server to keep {needed} adapter versions loaded "
            f"for the requests in flight; it keeps {limits.adapter_keep} (its --adapter-keep)",
        )
    for name, value, limit, server_flag in (
        ("num_generations", settings.num_generations, limits.max_n, "--max-num-generations"),
        ("prompts_per_step", settings.prompts_per_step, limits.max_prompts, "--max-prompts"),
        ("max_completion_length", settings.max_completion_length, limits.max_tokens, "--max-completion-length"),
        ("lora_r", settings.lora_r, limits.max_lora_rank, "--max-lora-rank"),
    ):
        if value > limit:
            raise SettingsError(name, f"{value} is more than the server allows ({limit}, its {server_flag})")


def check_prompt_lengths(
    problems: list[Problem], model_path: str, limits: ServerLimits, settings: TrainSettings
) -> None:
    """Raise ``SettingsError`` naming ``--dataset`` where a prompt leaves less than
    ``--max-completion-length`` tokens of the server's context (the server would refuse it)."""
    from transformers import AutoTokenizer

    room = limits.max_model_len - settings.max_completion_length
    tokens, problem = longest_prompt_tokens(problems, AutoTokenizer.from_pretrained(model_path))
    if tokens > room:
        raise SettingsError(
            "dataset", f"{settings.dataset}: a prompt takes {tokens} tokens ({problem.question[:60]!r}...), more than "
            f"the server's context ({limits.max_model_len}, its --max-model-len) leaves beside --max-completion-length "
            f"{settings.max_completion_length}: shorten the prompts or the completions",
        )  # fmt: skip
