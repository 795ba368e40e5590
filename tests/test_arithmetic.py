"""The generated task ``arithmetic:D``: fixed, disjoint splits; every worked solution's arithmetic
right; records GSM8K's loaders and rewards take as they are; a bad name refused naming the flag."""

import re

import pytest

from shared.arithmetic import DIFFICULTIES, LARGE_SCALE, SPLIT_SIZES, generate_records, parse_task, task_records
from shared.datasets import load_problems
from shared.rewards import score_completions
from shared.settings import SettingsError
from trainer.evaluate import EvalSettings
from trainer.settings import TrainSettings

STEP = re.compile(r"(\d+) ([-+x]) (\d+) = (\d+)")


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_splits_are_fixed_disjoint_and_their_arithmetic_is_right(difficulty):
    train, test = generate_records(difficulty, "train"), generate_records(difficulty, "test")
    assert (len(train), len(test)) == (SPLIT_SIZES["train"], SPLIT_SIZES["test"])
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert generate_records(difficulty, "test", 20) == test[:20]
    for record in train[:200] + test:
        steps = STEP.findall(record["answer"])
        assert len(steps) == {1: 1, 2: 1, 3: 2, 4: 3}[difficulty], record  # operations per question
        for left, sign, right, result in steps:
            expected = {"+": int(left) + int(right), "-": int(left) - int(right), "x": int(left) * int(right)}[sign]
            assert int(result) == expected >= 0, record
        assert record["answer"].endswith(f"#### {steps[-1][3]}")


def test_a_range_interleaves_its_difficulties_and_large_scales_the_operands_only():
    mixed = task_records(parse_task("arithmetic:1-2"), "test")
    assert mixed[0::2] == generate_records(1, "test") and mixed[1::2] == generate_records(2, "test")
    large_train, large_test = (task_records(parse_task("arithmetic:1-4:large"), split) for split in ("train", "test"))
    assert not {r["question"] for r in large_train} & {r["question"] for r in large_test}
    operands = [int(number) for record in large_test for number in STEP.findall(record["answer"])[-1][::2]]
    assert max(operands) > 50 * LARGE_SCALE // 2  # numbers past the small task's range (50) are common
    for record in large_test:  # the same shapes: operations per question by difficulty, each one right
        steps = STEP.findall(record["answer"])
        assert record["answer"].endswith(f"#### {steps[-1][3]}")
        for left, sign, right, result in steps:
            expected = {"+": int(left) + int(right), "-": int(left) - int(right), "x": int(left) * int(right)}[sign]
            assert int(result) == expected >= 0, record


def test_records_load_as_problems_and_a_right_tagged_answer_scores_full_marks():
    problem = load_problems("test", "arithmetic:2")[0]
    text = f"<start_working_out>x<end_working_out><SOLUTION>{problem.answer}</SOLUTION>"
    assert score_completions(None, [text], answer=[problem.answer]).total == [9.5]


def test_a_bad_dataset_is_refused_naming_the_flag():
    with pytest.raises(SettingsError, match="--dataset arithmetic:7: the difficulty must be one of"):
        TrainSettings(dataset="arithmetic:7")
    with pytest.raises(SettingsError, match="--dataset arithmetic:2-1: the difficulty must be one of"):
        TrainSettings(dataset="arithmetic:2-1")
    with pytest.raises(SettingsError, match="--dataset arithmetic:2:huge: after the difficulty only ':large'"):
        TrainSettings(dataset="arithmetic:2:huge")
    with pytest.raises(SettingsError, match="--dataset ./no.jsonl: no such file or folder"):
        EvalSettings(base=True, dataset="./no.jsonl")
