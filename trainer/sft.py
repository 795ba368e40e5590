"""``grpo-math sft``: a short supervised warm-up that teaches the tag format before GRPO.

A small model given the recipe's system prompt may write none of the four tags (the embedded
SmolLM2-135M-Instruct does not: docs/results). Every completion then scores the same
(−2, 0, 0, 0), every advantage is 0 and GRPO cannot start. So the same 4-bit LoRA adapter is first
fine-tuned, with TRL's ``SFTTrainer``, on the dataset's *train* solutions
rewritten into the format: the reasoning (``<<…>>`` annotations removed) between
``<start_working_out>`` and ``<end_working_out>``, the answer between ``<SOLUTION>`` and
``</SOLUTION>``. A dataset of another task brings its own answers in TRL's ``completion`` column
(text or assistant messages). The examples are prompt/completion pairs, so the loss covers the
assistant turn only. The output is a PEFT adapter for ``grpo-math train
--init-adapter``; ``--save-every N`` also keeps the adapter of every N-th step (to find where SFT
stops improving, evaluated afterwards: ``grpo-math arms``). Left out: packing, evaluation during
training.

    grpo-math sft --output-dir runs/sft --max-steps 40
    grpo-math train --init-adapter runs/sft
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from shared.datasets import SYSTEM_PROMPT_HELP, WORKED_SOLUTIONS_HELP, load_problems, require_dataset
from shared.gsm8k import solution_reasoning
from shared.models import local_model_problems, resolve_model
from shared.prompting import Problem, format_reference_completion
from shared.settings import SettingsError, at_least, check_fields, parse_settings, positive, setting
from trainer.policy import compute_dtype_for, load_policy
from trainer.settings import TrainSettings


@dataclass(frozen=True)
class SFTSettings:
    output_dir: str = setting("runs/sft", "where the adapter (PEFT) is saved")
    model: str = setting("auto", "hub id or folder; auto = Qwen2.5-3B-Instruct on CUDA, the embedded model on CPU")
    max_steps: int = setting(40, "optimizer steps", check=at_least(1))
    dataset: str = setting("gsm8k", WORKED_SOLUTIONS_HELP)
    dataset_train_split: str = setting(TrainSettings.dataset_train_split, "the split trained on")
    system_prompt: str | None = setting(TrainSettings.system_prompt, SYSTEM_PROMPT_HELP)
    per_device_train_batch_size: int = setting(8, "examples per step", check=at_least(1))
    learning_rate: float = setting(2e-4, "AdamW learning rate (constant)", check=positive())
    max_length: int = setting(
        576, "tokens per example (prompt + solution); longer ones are truncated", check=at_least(32)
    )
    seed: int = setting(42, "example order and LoRA init")
    save_every: int = setting(
        0,
        "also save the adapter every N steps, as output_dir/trainer/checkpoint-N (0 = only at the end)",
        check=at_least(0),
    )
    load_in_4bit: bool = setting(TrainSettings.load_in_4bit, "nf4 double-quant base, as grpo-math train")
    lora_r: int = setting(TrainSettings.lora_r, "LoRA rank", check=at_least(1))
    lora_alpha: int = setting(TrainSettings.lora_alpha, "LoRA alpha", check=positive())
    lora_dropout: float = setting(TrainSettings.lora_dropout, "LoRA dropout")
    lora_target_modules: tuple[str, ...] = setting(
        TrainSettings.lora_target_modules,
        "modules that get LoRA; all-linear = every linear layer but the LM head (PEFT's shorthand)",
    )
    report_to: Literal["trackio", "none"] = setting("trackio", "log the loss to trackio (offline store)")

    def __post_init__(self) -> None:
        check_fields(self)
        require_dataset("dataset", self.dataset)


def sft_example(problem: Problem) -> dict:
    """One prompt/completion pair in TRL's conversational form: the row's own ``completion``, or a
    GSM8K-shaped solution rewritten into the tag format.

    >>> sft_example(Problem([{"role": "user", "content": "abc"}], {"completion": "cba"}))["completion"]
    [{'role': 'assistant', 'content': 'cba'}]
    """
    completion = problem.columns.get("completion")
    if completion is None and problem.solution is not None and problem.answer is not None:
        completion = format_reference_completion(solution_reasoning(problem.solution), problem.answer)
    if completion is None:
        columns = ", ".join(problem.columns)
        raise SettingsError(
            "dataset", f"SFT needs a 'completion' column (or GSM8K's solutions); the columns: {columns}"
        )
    messages = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    return {"prompt": problem.prompt, "completion": messages}


def main(argv: list[str] | None = None) -> int:
    try:
        run_sft(parse_settings(SFTSettings, argv, prog="grpo-math sft", description=__doc__))
    except SettingsError as error:  # what the model lacks, found before its weights load
        raise SystemExit(f"grpo-math sft: error: {error}") from None
    return 0


def run_sft(settings: SFTSettings) -> Path:
    """Fine-tune the adapter; return the folder it was saved to."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    model_path = resolve_model(settings.model)
    for flag, message in local_model_problems(model_path, settings.lora_target_modules):  # before weights load
        raise SettingsError(flag, message)
    count = settings.max_steps * settings.per_device_train_batch_size
    problems = load_problems(settings.dataset_train_split, settings.dataset, settings.system_prompt)[:count]
    examples = [sft_example(p) for p in problems]
    policy = load_policy(
        model_path, settings, init_adapter=None, gradient_checkpointing=device.type == "cuda", device=device
    )
    output_dir = Path(settings.output_dir)
    config = SFTConfig(
        output_dir=str(output_dir / "trainer"),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        max_length=settings.max_length,
        completion_only_loss=True,  # loss on the assistant turn only
        logging_steps=1,
        save_strategy="steps" if settings.save_every else "no",
        save_steps=settings.save_every or 500,  # read only with save_strategy "steps"
        save_only_model=True,  # the adapter, not the optimizer: an evaluation point, not a resume point
        report_to=[] if settings.report_to == "none" else ["trackio"],
        run_name=f"sft-{output_dir.name}",
        project="grpo-math",
        seed=settings.seed,
        use_cpu=device.type == "cpu",
        bf16=compute_dtype_for(device) == torch.bfloat16,  # the nf4 compute dtype (trainer.policy)
        fp16=device.type == "cuda",
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=policy,
        args=config,
        train_dataset=Dataset.from_list(examples),
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )
    trainer.train()
    policy.save_pretrained(output_dir)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    print(f"adapter: {output_dir} (loss {losses[0]:.3f} → {losses[-1]:.3f} over {settings.max_steps} steps)")
    print(f"next: grpo-math train --init-adapter {output_dir}")
    return output_dir
