"""Peer: the original recipe as TRL ships it: ``GRPOTrainer`` generating inside the trainer, with
transformers (``--mode transformers``) or a colocated vLLM engine (``--mode colocate``).

The same policy as this project's trainer (``trainer.policy.load_policy``: nf4 double-quant base,
LoRA r16 α32 q,v, dropout 0.1, optionally from a warm-up adapter), the four rewards with equal
weights, ``--prompts-per-step`` prompts × 8 completions per optimizer step (TRL: 2 completions per
micro-batch, accumulated over the step), the same questions in the same order as
``grpo-math train --seed SEED --prompts-per-step P --dataset D``; by default the recipe's lr 5e-6
(linear schedule), clip 0.1, 2 prompts, GSM8K, seed 42. A fifth reward of weight 0 counts the
completions that are strictly correct (``trainer.evaluation.strictly_correct``), so TRL logs the
sampled right-answer fraction without changing the loss.

Prints one ``@@ {json}`` line per optimizer step: ``{"step", "seconds", "generate_s", "rewards_s",
"reward", "strict_accuracy", "completion_length_mean", "completion_length_max", "truncated_fraction"}``
(seconds: the step's own, without checkpoint saving; transformers generates a step's completions
in padded batches, so one completion that runs to the limit holds its batch's generation), and on
failure one line ``{"error": ...}`` with the exception as raised. With
``--output-dir`` the lines also go to ``steps.jsonl`` there, and TRL saves a checkpoint (the
adapter, the optimizer, the schedule) every ``--save-every`` steps under ``checkpoints/``;
``--resume`` continues from the newest one.

Timing is added by a subclass that times ``_generate`` and ``_calculate_rewards`` around TRL's
own calls (their behaviour is unchanged) and a callback at each optimizer step's end.

    python -m benchmarks.peers.trl_recipe --steps 3 --max-completion-length 256
    python -m benchmarks.peers.trl_recipe --steps 40 --max-completion-length 256 --dataset arithmetic:1 \\
        --prompts-per-step 4 --learning-rate 1e-4 --lr-scheduler-type constant --seed 1 \\
        --init-adapter runs/sft --output-dir runs/recipe --save-every 10
"""

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

COMPLETIONS_PER_MICRO_BATCH = 2  # the notebook's per-device batch


def main() -> int:
    from trainer.settings import TrainSettings

    recipe = TrainSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--max-completion-length", type=int, required=True)
    parser.add_argument("--init-adapter", default=None)
    parser.add_argument("--mode", choices=("transformers", "colocate"), default="transformers")
    parser.add_argument("--dataset", default=recipe.dataset)
    parser.add_argument("--prompts-per-step", type=int, default=recipe.prompts_per_step)
    parser.add_argument("--learning-rate", type=float, default=recipe.learning_rate)
    parser.add_argument("--lr-scheduler-type", choices=("linear", "constant"), default=recipe.lr_scheduler_type)
    parser.add_argument("--temperature", type=float, default=recipe.temperature)
    parser.add_argument("--seed", type=int, default=recipe.seed, help="the questions' order and TRL's seed")
    parser.add_argument("--output-dir", default=None, help="steps.jsonl and checkpoints/; none = nothing kept")
    parser.add_argument("--save-every", type=int, default=0, help="a checkpoint every N steps (with --output-dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args = parser.parse_args()
    try:
        run(args)
    except Exception as error:  # the peer as it ships may not run here: report exactly why
        report(args, {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]})
        return 1
    return 0


def report(args, line: dict) -> None:
    """One ``@@`` line on stdout, and in ``steps.jsonl`` with ``--output-dir``."""
    print("@@", json.dumps(line), flush=True)
    if args.output_dir is not None:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(args.output_dir) / "steps.jsonl", "a") as steps:
            steps.write(json.dumps(line) + "\n")


def run(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from shared.datasets import load_problems
    from shared.models import resolve_model
    from shared.rewards import completion_text
    from trainer.batching import question_indices
    from trainer.evaluation import strictly_correct
    from trainer.policy import compute_dtype_for, load_policy
    from trainer.settings import TrainSettings

    settings = TrainSettings()  # the recipe's policy and optimiser settings
    model_path = resolve_model("auto")
    problems = load_problems("train", args.dataset)
    ordered = [
        problems[i]
        for step in range(1, args.steps + 1)
        for i in question_indices(step, args.prompts_per_step, len(problems), args.seed)
    ]
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in ordered])
    policy = load_policy(
        model_path, settings, init_adapter=args.init_adapter, gradient_checkpointing=False, device=torch.device("cpu")
    )
    timings = {"generate_s": 0.0, "rewards_s": 0.0}

    def strictly_correct_completions(completions, answer, **kwargs) -> list[float]:
        return [float(strictly_correct(completion_text(c), a)) for c, a in zip(completions, answer, strict=True)]

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            started = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                timings["generate_s"] += time.perf_counter() - started

        def _calculate_rewards(self, *arguments, **keywords):
            started = time.perf_counter()
            try:
                return super()._calculate_rewards(*arguments, **keywords)
            finally:
                timings["rewards_s"] += time.perf_counter() - started

    class StepClock(TrainerCallback):
        """A step's seconds from the end of the one before (or the start, or a checkpoint's save)
        to its own end; reported with the step's logged rewards."""

        def on_train_begin(self, *_, **__):
            self.last = time.perf_counter()

        def on_step_end(self, _arguments, state, *_, **__):
            now = time.perf_counter()
            self.step = {"step": state.global_step, "seconds": now - self.last, **timings}
            self.last = now
            timings.update(generate_s=0.0, rewards_s=0.0)

        def on_log(self, _arguments, state, _control, logs=None, **__):
            if logs and "reward" in logs and getattr(self, "step", {}).get("step") == state.global_step:
                report(
                    args,
                    {
                        **self.step,
                        "reward": logs["reward"],
                        "strict_accuracy": logs.get("rewards/strictly_correct_completions/mean"),
                        "completion_length_mean": logs.get("completions/mean_length"),
                        "completion_length_max": logs.get("completions/max_length"),
                        "truncated_fraction": logs.get("completions/clipped_ratio"),
                    },
                )

        def on_save(self, *_, **__):
            self.last = time.perf_counter()  # saving a checkpoint is not training

    keep = args.output_dir is not None and args.save_every > 0
    with tempfile.TemporaryDirectory() as scratch:
        config = GRPOConfig(
            output_dir=str(Path(args.output_dir) / "checkpoints") if keep else scratch,
            max_steps=args.steps,
            per_device_train_batch_size=COMPLETIONS_PER_MICRO_BATCH,
            gradient_accumulation_steps=args.prompts_per_step * settings.num_generations // COMPLETIONS_PER_MICRO_BATCH,
            num_generations=settings.num_generations,
            max_completion_length=args.max_completion_length,
            temperature=args.temperature,
            learning_rate=args.learning_rate,
            lr_scheduler_type=args.lr_scheduler_type,
            max_grad_norm=settings.max_grad_norm,
            loss_type=settings.loss_type,
            beta=settings.beta,
            epsilon=settings.epsilon,
            scale_rewards=settings.scale_rewards,
            reward_weights=[*(reward.weight for reward in settings.rewards()), 0.0],  # the right-answer counter: 0
            shuffle_dataset=False,
            logging_steps=1,
            save_strategy="steps" if keep else "no",
            save_steps=max(args.save_every, 1),
            report_to="none",
            use_cpu=True,
            bf16=compute_dtype_for(torch.device("cpu")) == torch.bfloat16,  # as load_policy's nf4 compute
            seed=args.seed,
            dataloader_num_workers=0,
            use_vllm=args.mode == "colocate",
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=0.2,
        )
        trainer = TimedGRPOTrainer(
            model=policy,
            reward_funcs=[*(reward.function for reward in settings.rewards()), strictly_correct_completions],
            args=config,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_path),
            callbacks=[StepClock()],
        )
        trainer.train(resume_from_checkpoint=True if args.resume else None)


if __name__ == "__main__":
    sys.exit(main())
