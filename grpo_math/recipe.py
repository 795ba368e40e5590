"""The CPU recipe: every setting in which the CPU runs (demo, study, benchmarks, compose's CPU pair)
differ from the recipe's GPU defaults, in one place. The defaults themselves live in the settings
dataclasses (``TrainSettings``: the original notebook's; ``SFTSettings``); docs/results has the
measurements behind each choice made here.

- SFT (the format warm-up): the embedded model writes none of the tags on its own, so GRPO starts
  from an adapter fine-tuned on worked solutions in the tag format: 40 steps of 4 examples at
  learning rate 1e-3 (constant).
- GRPO: learning rate 3e-4 held constant (the recipe's 5e-6 moves nothing visible in a short CPU
  run), 256 completion tokens (a step stays short), no checkpoints inside a short run.
- The easy task (``arithmetic:1``, where GRPO can teach correctness to the embedded model): a
  short warm-up (10 SFT steps) that leaves room to learn, 4 questions per GRPO step and learning
  rate 1e-4, so that GRPO's noisy steps do not undo what SFT taught.
"""

from pathlib import Path

SFT_STEPS = 40
SFT_BATCH_SIZE = 4
SFT_LEARNING_RATE = 1e-3
GRPO_LEARNING_RATE = 3e-4
GRPO_LR_SCHEDULER_TYPE = "constant"
MAX_COMPLETION_LENGTH = 256

EASY_DATASET = "arithmetic:1"
EASY_SFT_STEPS = 10
EASY_PROMPTS_PER_STEP = 4
EASY_GRPO_LEARNING_RATE = 1e-4


def sft_settings(output_dir: Path, **overrides):
    """``grpo-math sft`` with the CPU recipe; ``overrides``: any other ``SFTSettings`` field."""
    from trainer.sft import SFTSettings

    recipe = dict(max_steps=SFT_STEPS, per_device_train_batch_size=SFT_BATCH_SIZE, learning_rate=SFT_LEARNING_RATE)
    return SFTSettings(**{"output_dir": str(output_dir), **recipe, **overrides})


def grpo_settings(server_url: str, output_dir: Path, **overrides):
    """``grpo-math train`` with the CPU recipe; ``overrides``: any other ``TrainSettings`` field
    (``init_adapter``, ``max_steps``, ``seed``, ...)."""
    from trainer.settings import TrainSettings

    recipe = dict(
        learning_rate=GRPO_LEARNING_RATE,
        lr_scheduler_type=GRPO_LR_SCHEDULER_TYPE,
        max_completion_length=MAX_COMPLETION_LENGTH,
        save_every=0,
    )
    return TrainSettings(**{"server_url": (server_url,), "output_dir": str(output_dir), **recipe, **overrides})


def eval_settings(server_url: str, output_dir: Path, **overrides):
    """``grpo-math eval`` at the CPU recipe's completion length; ``overrides``: ``EvalSettings`` fields."""
    from trainer.evaluate import EvalSettings

    recipe = dict(max_completion_length=MAX_COMPLETION_LENGTH)
    return EvalSettings(**{"server_url": (server_url,), "output_dir": str(output_dir), **recipe, **overrides})
