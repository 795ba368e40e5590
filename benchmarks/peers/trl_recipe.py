"""Peer: the original recipe as TRL ships it: ``GRPOTrainer`` generating inside the trainer, with
transformers (``--mode transformers``) or a colocated vLLM engine (``--mode colocate``).

The same policy as this project's trainer (``trainer.policy.load_policy``: nf4 double-quant base,
LoRA r16 α32 q,v, dropout 0.1, optionally from a warm-up adapter), the four rewards, 2 prompts × 8
completions per optimizer step (TRL: 2 completions per micro-batch × 8 accumulation steps), lr
5e-6, clip 0.1, the same questions in the same order as ``grpo-math train --seed 42``. Prints one
``@@ {json}`` line per optimizer step: ``{"step", "seconds", "generate_s", "rewards_s"}``, and on failure
one line ``{"error": ...}`` with the exception as raised.

Timing is added by a subclass that times ``_generate`` and ``_calculate_rewards`` around TRL's
own calls (their behaviour is unchanged) and a callback at each optimizer step's end.

    python -m benchmarks.peers.trl_recipe --steps 3 --max-completion-length 256
"""

import argparse
import json
import sys
import tempfile
import time
import traceback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--max-completion-length", type=int, required=True)
    parser.add_argument("--init-adapter", default=None)
    parser.add_argument("--mode", choices=("transformers", "colocate"), default="transformers")
    args = parser.parse_args()
    try:
        run(args)
    except Exception as error:  # the peer as it ships may not run here: report exactly why
        print(
            "@@", json.dumps({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]})
        )
        return 1
    return 0


def run(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from shared.gsm8k import load_gsm8k
    from shared.models import resolve_model
    from shared.rewards import REWARD_FUNCTIONS
    from trainer.batching import question_indices
    from trainer.policy import load_policy
    from trainer.settings import TrainSettings

    settings = TrainSettings()  # the recipe's policy and optimiser settings
    model_path = resolve_model("auto")
    problems = load_gsm8k("train")
    ordered = [problems[i] for step in range(1, args.steps + 1) for i in question_indices(step, 2, len(problems), 42)]
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in ordered])
    policy = load_policy(
        model_path, settings, init_adapter=args.init_adapter, gradient_checkpointing=False, device=torch.device("cpu")
    )
    timings = {"generate_s": 0.0, "rewards_s": 0.0}

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
        def on_train_begin(self, *_, **__):
            self.last = time.perf_counter()

        def on_step_end(self, _arguments, state, *_, **__):
            now = time.perf_counter()
            print("@@", json.dumps({"step": state.global_step, "seconds": now - self.last, **timings}), flush=True)
            self.last = now
            timings.update(generate_s=0.0, rewards_s=0.0)

    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            max_steps=args.steps,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=8,
            num_generations=8,
            max_completion_length=args.max_completion_length,
            temperature=1.0,
            learning_rate=settings.learning_rate,
            max_grad_norm=settings.max_grad_norm,
            shuffle_dataset=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=True,
            seed=42,
            dataloader_num_workers=0,
            use_vllm=args.mode == "colocate",
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=0.2,
        )
        trainer = TimedGRPOTrainer(
            model=policy,
            reward_funcs=[reward.function for reward in REWARD_FUNCTIONS],
            args=config,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_path),
            callbacks=[StepClock()],
        )
        trainer.train()


if __name__ == "__main__":
    sys.exit(main())
