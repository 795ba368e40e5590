"""GRPO teaches correctness, not only the format: on the generated task in the embedded model's
reach (the CPU recipe's ``arithmetic:1``), from one short SFT warm-up, 24 GRPO steps raise the
fraction of sampled completions that are right (strict format and the right answer) by at least
10 points, the first 8 steps against the last 8.

GRPO trains on 32 of the task's questions, 4 a step, so the first 8 steps (epoch 1) and the last
8 (epoch 3) sample the same 32 questions: the two windows differ by what was learnt and by
sampling noise, not by which questions fell in them (on the whole train split, a run with no
update at all rose 0.055 → 0.141 by question order alone). The second test shows the first can
fail: the same run with the update disabled (every reward weight 0, so every advantage is 0)
falls short of the margin. Sampling is not seeded, so the figures differ run to run;
docs/results/2026-12-02-arithmetic.md has the measured runs behind the margin."""

import json
from pathlib import Path

import pytest

from grpo_math import recipe
from grpo_math.pipeline import Phases, run_pipeline
from shared.arithmetic import parse_task, task_records
from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.slow

QUESTIONS = 32  # GRPO's training questions: one epoch is WINDOW steps
WINDOW = 8  # steps averaged at each end: epoch 1 against epoch 3
MARGIN = 0.10  # the rise of the sampled right-answer fraction that counts as learning
SFT = dict(max_steps=recipe.EASY_SFT_STEPS, seed=1, report_to="none", dataset=recipe.EASY_DATASET)
GRPO = dict(
    max_steps=3 * WINDOW,
    seed=1,
    prompts_per_step=recipe.EASY_PROMPTS_PER_STEP,
    learning_rate=recipe.EASY_GRPO_LEARNING_RATE,
    max_completion_length=64,
    report_to="none",
)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    local = start_server(["--max-model-len", "1024"], tmp_path_factory.mktemp("learning") / "server.log")
    yield local.url
    stop_server(local)


@pytest.fixture(scope="module")
def sft_dir(server_url, tmp_path_factory) -> Path:
    """The warm-up both runs start from (one SFT, the same for both)."""
    run_dir = tmp_path_factory.mktemp("learning-sft")
    run_pipeline(run_dir, server_url, Phases(sft=SFT, grpo=None, evaluation=None))
    return run_dir / "sft"


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    """The first ``QUESTIONS`` train questions of the easy task, as a JSONL file ``--dataset`` reads."""
    path = tmp_path_factory.mktemp("learning-data") / "questions.jsonl"
    records = task_records(parse_task(recipe.EASY_DATASET), "train")[:QUESTIONS]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def rise(server_url: str, run_dir: Path, sft_dir: Path, questions: Path, **overrides) -> tuple[float, float]:
    """GRPO from the warm-up on ``questions``; the mean sampled right-answer fraction of the first
    and the last ``WINDOW`` steps (each window one epoch of the same questions)."""
    assert GRPO["prompts_per_step"] * WINDOW == QUESTIONS
    grpo = {**GRPO, "dataset": str(questions), "init_adapter": str(sft_dir), **overrides}
    run_pipeline(run_dir, server_url, Phases(sft=None, grpo=grpo, evaluation=None))
    rows = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [row["strict_accuracy"] for row in rows]
    assert len(accuracy) == GRPO["max_steps"]
    first, last = sum(accuracy[:WINDOW]) / WINDOW, sum(accuracy[-WINDOW:]) / WINDOW
    print(f"\nsampled right-answer fraction, steps 1-{WINDOW} → last {WINDOW}: {first:.3f} → {last:.3f}")
    return first, last


def test_grpo_raises_the_fraction_of_right_answers(server_url, sft_dir, questions, tmp_path):
    first, last = rise(server_url, tmp_path, sft_dir, questions)
    assert last >= first + MARGIN


def test_the_same_run_without_an_update_falls_short(server_url, sft_dir, questions, tmp_path):
    first, last = rise(server_url, tmp_path, sft_dir, questions, reward_weights=(0.0, 0.0, 0.0, 0.0))
    assert last < first + MARGIN
