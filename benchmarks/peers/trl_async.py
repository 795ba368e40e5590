"""Peer: TRL's experimental ``AsyncGRPOTrainer`` against ``vllm serve --enable-lora`` (adapter-only
sync through a folder: the peer whose design is nearest to this project's), run as TRL ships it:
the same 4-bit nf4 base and LoRA r16 q,v, the four rewards, 2 prompts × 8 per step. Prints one JSON
line per optimizer step ``{"step", "seconds"}``, or ``{"error": ...}`` with the exception raised.

    python -m benchmarks.peers.trl_async --server-url http://127.0.0.1:8000 --steps 3 --max-completion-length 256
"""

import argparse
import json
import sys
import tempfile
import time
import traceback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-url", required=True)
    parser.add_argument("--model", required=True, help="the folder the vLLM server serves")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--max-completion-length", type=int, required=True)
    args = parser.parse_args()
    try:
        run(args)
    except Exception as error:
        print(
            "@@", json.dumps({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]})
        )
        return 1
    return 0


def run(args) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

    from shared.gsm8k import load_gsm8k
    from shared.models import cpu_compute_dtype, nf4_quantization_config
    from shared.rewards import REWARD_FUNCTIONS
    from trainer.batching import question_indices
    from trainer.settings import TrainSettings

    settings = TrainSettings()
    problems = load_gsm8k("train")
    ordered = [problems[i] for step in range(1, args.steps + 1) for i in question_indices(step, 2, len(problems), 42)]

    class StepClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.last = time.perf_counter()

        def on_step_end(self, _arguments, state, *_, **__):
            now = time.perf_counter()
            print("@@", json.dumps({"step": state.global_step, "seconds": now - self.last}), flush=True)
            self.last = now

    dtype = cpu_compute_dtype()  # as this project's trainer on the same CPU
    with tempfile.TemporaryDirectory() as output_dir:
        config = AsyncGRPOConfig(
            output_dir=output_dir,
            vllm_server_base_url=args.server_url,
            max_steps=args.steps,
            num_generations=8,
            max_completion_length=args.max_completion_length,
            learning_rate=settings.learning_rate,
            max_grad_norm=settings.max_grad_norm,
            report_to="none",
            use_cpu=True,
            model_init_kwargs={"quantization_config": nf4_quantization_config(dtype), "dtype": dtype},
        )
        trainer = AsyncGRPOTrainer(
            model=args.model,
            reward_funcs=[reward.function for reward in REWARD_FUNCTIONS],
            args=config,
            train_dataset=Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in ordered]),
            peft_config=LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
            ),
            callbacks=[StepClock()],
        )
        trainer.train()


if __name__ == "__main__":
    sys.exit(main())
