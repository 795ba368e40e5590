"""The trainer's settings: one frozen dataclass; ``grpo-math train`` has one flag per field.

Defaults are the original recipe's (a GPU run of Qwen2.5-3B-Instruct); names follow TRL's
``GRPOConfig`` where it has one. ``make demo`` overrides a few for the CPU (see the Makefile).
"""

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TrainSettings:
    server_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "generator server (its API key from GRPO_MATH_API_KEY)"})
    model: str = field(default="auto", metadata={"help": "hub id or folder; auto = Qwen2.5-3B-Instruct on CUDA, the embedded SmolLM2-135M-Instruct on CPU"})
    init_adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder to start from (e.g. the output of grpo-math sft)"})
    dataset: str = field(default="bundled", metadata={"help": "GSM8K train questions: bundled, hub (openai/gsm8k) or a JSONL file"})
    max_steps: int = field(default=10, metadata={"help": "optimizer steps"})
    prompts_per_step: int = field(default=2, metadata={"help": "questions per step (the recipe's batch 2)"})
    num_generations: int = field(default=8, metadata={"help": "completions per question (G, the group size)"})
    micro_batch_size: int = field(default=2, metadata={"help": "sequences per forward/backward; gradients accumulate over the step's prompts × G"})
    max_completion_length: int = field(default=1024, metadata={"help": "most tokens per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature; the trainer scores with the same one"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW peak learning rate"})
    lr_scheduler_type: Literal["linear", "constant"] = field(default="linear", metadata={"help": "linear decays to 0 at max-steps"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=0.1, metadata={"help": "gradient norm clip"})
    loss_type: Literal["dapo", "grpo", "dr_grpo"] = field(default="dapo", metadata={"help": "loss aggregation, as TRL 1.16 (dapo: mean over all tokens)"})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; the reference is the base model (adapter disabled)"})
    epsilon: float = field(default=0.2, metadata={"help": "clip range (lower, and upper unless --epsilon-high)"})
    epsilon_high: float | None = field(default=None, metadata={"help": "upper clip range; none = --epsilon"})
    scale_rewards: Literal["group", "none"] = field(default="group", metadata={"help": "group: divide advantages by the group's std (+1e-4); none: only centre them"})
    vllm_importance_sampling_correction: bool = field(default=True, metadata={"help": "weight sequences by π_trainer/π_sampler (TRL's sequence_mask)"})
    vllm_importance_sampling_clip_max: float = field(default=3.0, metadata={"help": "sequences whose weight exceeds this are dropped"})
    reward_weights: tuple[float, ...] = field(default=(1.0, 1.0, 1.0, 1.0), metadata={"help": "weights of match_format_exactly, match_format_approximately, check_answer_correctness, check_numbers_extraction"})
    load_in_4bit: bool = field(default=True, metadata={"help": "nf4 double-quant base (bitsandbytes)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    lora_target_modules: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata={"help": "modules that get LoRA"})
    gradient_checkpointing: Literal["auto", "on", "off"] = field(default="auto", metadata={"help": "auto = on with CUDA, off on CPU"})
    seed: int = field(default=42, metadata={"help": "data order, dropout and LoRA init"})
    output_dir: str | None = field(default=None, metadata={"help": "run folder; none = runs/<model>-<time>"})
    save_every: int = field(default=5, metadata={"help": "checkpoint every N steps (0 = only the final adapter)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (the newest)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --output-dir"})
    eval_every: int = field(default=0, metadata={"help": "evaluate the adapter on GSM8K test every N steps (0 = never)"})
    eval_limit: int = field(default=32, metadata={"help": "test questions per periodic evaluation (greedy)"})
    report_to: Literal["trackio", "none"] = field(default="trackio", metadata={"help": "trackio (offline store) besides metrics.jsonl"})
    server_timeout: float = field(default=60.0, metadata={"help": "seconds to wait for the server to be ready at start"})
