"""Datasets as TRL users bring them (``shared/datasets.py``): a ``prompt`` column, plain or
conversational, every other column reaching the reward functions; GSM8K-shaped files; splits;
and the errors, each naming ``--dataset`` and what was found."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from shared.datasets import load_problems
from shared.models import resolve_model
from shared.prompting import SYSTEM_PROMPT
from shared.protocol import GenerateResponse
from shared.rewards import WeightedReward
from shared.settings import SettingsError
from trainer.settings import TrainSettings, check_prompt_lengths


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


ROWS = [
    {"prompt": "Reverse: abc", "target": "cba", "level": 1},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: xy"}],
     "target": "yx", "level": 2},
]  # fmt: skip


def test_plain_prompts_get_the_system_prompt_and_conversational_ones_go_as_they_are(tmp_path):
    path = write_jsonl(tmp_path / "task.jsonl", ROWS)
    plain, conversational = load_problems("train", path)
    assert plain.prompt == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Reverse: abc"}]
    assert conversational.prompt == ROWS[1]["prompt"] and conversational.question == "Reverse: xy"
    assert plain.columns == {"target": "cba", "level": 1} and plain.answer is None
    own, none = (
        load_problems("train", path, system_prompt="Reverse it."),
        load_problems("train", path, system_prompt=""),
    )
    assert own[0].prompt[0] == {"role": "system", "content": "Reverse it."}
    assert none[0].prompt == [{"role": "user", "content": "Reverse: abc"}]


def test_a_folder_gives_its_splits_and_a_split_may_be_a_slice(tmp_path):
    write_jsonl(tmp_path / "task" / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "task" / "test.jsonl", ROWS[:1])
    assert len(load_problems("train", str(tmp_path / "task"))) == 2
    assert [p.columns["target"] for p in load_problems("test", str(tmp_path / "task"))] == ["cba"]
    assert [p.columns["target"] for p in load_problems("train[1:]", str(tmp_path / "task"))] == ["yx"]
    csv = tmp_path / "task.csv"
    csv.write_text("prompt,target\nReverse: ab,ba\n")
    assert load_problems("train", str(csv))[0].columns == {"target": "ba"}


def test_every_column_but_the_prompt_reaches_the_reward_functions_once_per_completion(tmp_path):
    """``trainer.evaluation.score_reply`` (the step's scoring) calls a reward as TRL does: prompts,
    completions, completion_ids and each column repeated for each completion of its question."""
    from trainer.evaluation import score_reply

    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(kwargs, prompts=prompts, completions=completions)
        return [float(c[0]["content"] == t) for c, t in zip(completions, kwargs["target"], strict=True)]

    problems = load_problems("train", write_jsonl(tmp_path / "task.jsonl", ROWS))
    groups = [
        {"prompt_token_ids": [1], "completions": [{"text": t, "token_ids": [5], "logprobs": [-1.0],
                                                    "finish_reason": "stop"} for t in texts]}
        for texts in (("cba", "abc"), ("yx", "xy"))
    ]  # fmt: skip
    reply = GenerateResponse.model_validate({"adapter_version": None, "groups": groups})
    scores = score_reply(problems, reply, (WeightedReward(spy, 1.0),))
    assert scores.total == [1.0, 0.0, 1.0, 0.0]
    assert seen["target"] == ["cba", "cba", "yx", "yx"] and seen["level"] == [1, 1, 2, 2]
    assert seen["completion_ids"] == [[5]] * 4 and seen["prompts"][2] == ROWS[1]["prompt"]
    assert seen["completions"][0] == [{"role": "assistant", "content": "cba"}]  # TRL's conversational form


def test_a_dataset_the_run_cannot_use_is_refused_naming_the_flag_and_what_it_found(tmp_path):
    cases = [
        (write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 1}]), "train",
         "no 'prompt' column (TRL's convention) and not GSM8K's question/answer; its columns: text, label"),
        (write_jsonl(tmp_path / "b.jsonl", ROWS), "test", "split 'test': Unknown split \"test\""),
        (write_jsonl(tmp_path / "c.jsonl", [{"prompt": 3}]), "train", "a prompt must be text or role/content"),
        (write_jsonl(tmp_path / "d.jsonl", ROWS), "train[5:]", 'Instruction "train[5:]" corresponds to no data'),
        (write_jsonl(tmp_path / "e.jsonl", []), "train", "the file is empty"),
    ]  # fmt: skip
    for path, split, message in cases:
        with pytest.raises(SettingsError, match="^--dataset ") as error:
            load_problems(split, path)
        assert message in str(error.value)
    (tmp_path / "f.txt").write_text("prompt\n")
    with pytest.raises(SettingsError, match="a file must end in one of .json, .jsonl, .csv, .parquet"):
        load_problems("train", str(tmp_path / "f.txt"))


def test_a_prompt_that_leaves_no_room_for_a_completion_is_refused_before_the_run(tmp_path):
    """The embedded model's own tokenizer: a prompt of ~600 words against a 512-token context."""
    long_row = {"prompt": "word " * 600, "target": "x"}
    problems = load_problems("train", write_jsonl(tmp_path / "long.jsonl", [*ROWS, long_row]))
    settings = TrainSettings(dataset=str(tmp_path / "long.jsonl"), max_completion_length=256)
    model = resolve_model("embedded")
    check_prompt_lengths(problems[:2], model, SimpleNamespace(max_model_len=512), settings)  # short ones fit
    with pytest.raises(SettingsError, match=r"long.jsonl: a prompt takes \d+ tokens"):
        check_prompt_lengths(problems, model, SimpleNamespace(max_model_len=512), settings)
