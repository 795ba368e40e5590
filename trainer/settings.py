"""The trainer's settings: one frozen dataclass; ``grpo-math train`` has one flag per field.

Defaults are the original recipe's (a GPU run of Qwen2.5-3B-Instruct); names follow TRL's
``GRPOConfig`` where it has one. The CPU recipe's overrides of them are in one place,
``grpo_math/recipe.py``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.datasets import dataset_problem
from shared.models import is_missing_folder
from shared.protocol import AdapterUpload, HealthResponse
from shared.rewards import REWARD_FUNCTIONS
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
        "pushed: push it again once, stop if a batch sampled after that is still above (healthy runs measure "
        "0.005-0.04); judged on batches sampled with the trainer's own weights (staleness 0); none = never check",
        check=positive(),
    )
    max_bad_steps: int = setting(
        3,
        "steps in a row with NaN/Inf rewards, loss or gradients (each skipped) before the run stops",
        check=at_least(1),
    )
    model: str = setting(
        "auto", "hub id or folder; auto = Qwen2.5-3B-Instruct on CUDA, the embedded SmolLM2-135M-Instruct on CPU"
    )
    init_adapter: str | None = setting(None, "PEFT adapter folder to start from (e.g. the output of grpo-math sft)")
    dataset: str = setting(
        "gsm8k",
        "questions (its train split; --eval-every uses its test split): gsm8k (bundled), gsm8k-hub "
        "(openai/gsm8k), arithmetic:D (generated, difficulty D = 1..4) or a JSONL file",
    )
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
    vllm_importance_sampling_correction: bool = setting(
        True, "weight sequences by π_trainer/π_sampler (TRL's sequence_mask)"
    )
    vllm_importance_sampling_clip_max: float = setting(
        3.0, "sequences whose weight exceeds this are dropped", check=positive()
    )
    reward_weights: tuple[float, ...] = setting(
        (1.0, 1.0, 1.0, 1.0),
        "weights of " + ", ".join(reward.name for reward in REWARD_FUNCTIONS),
        check=Check(lambda v: len(v) == len(REWARD_FUNCTIONS), f"needs {len(REWARD_FUNCTIONS)} values"),
    )
    load_in_4bit: bool = setting(True, "nf4 double-quant base (bitsandbytes)")
    lora_r: int = setting(16, "LoRA rank", check=at_least(1))
    lora_alpha: int = setting(32, "LoRA alpha", check=positive())
    lora_dropout: float = setting(0.1, "LoRA dropout", check=Check(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    lora_target_modules: tuple[str, ...] = setting(
        ("q_proj", "v_proj"),
        "modules that get LoRA",
        check=Check(
            lambda v: not {"lm_head", "embed_tokens"} & set(v),
            "cannot name lm_head or embed_tokens: log-probabilities are scored through the LM head's frozen weight",
        ),
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = setting(
        "auto", "auto = on with CUDA (unless --shared-prompt-forward on), off on CPU"
    )
    lm_head_dtype: Literal["float32", "compute"] = setting(
        "compute",
        "the LM head's matrix product when scoring completions: float32, or the compute dtype (bf16 on CPU, "
        "fp16 on GPU; the softmax stays float32)",
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
        0, "evaluate the adapter greedily on --dataset's test split every N steps (0 = never)", check=at_least(0)
    )
    eval_limit: int = setting(32, "evaluation questions: the first N of the test split", check=at_least(1))
    report_to: Literal["trackio", "none"] = setting("trackio", "trackio (offline store) besides metrics.jsonl")
    server_timeout: float = setting(60.0, "seconds to wait for the server to be ready at start", check=at_least(0))

    def __post_init__(self) -> None:
        check_fields(self)
        require(bool(self.server_url), "server_url", "needs at least one URL")
        require(
            self.generator != "vllm" or self.vllm_adapter_dir is not None,
            "vllm_adapter_dir",
            "is needed with --generator vllm: the server loads adapters from a folder",
        )
        require(dataset_problem(self.dataset) is None, "dataset", dataset_problem(self.dataset) or "")
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
