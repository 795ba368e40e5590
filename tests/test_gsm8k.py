import json

import pytest

from shared.datasets import load_problems
from shared.gsm8k import load_gsm8k, normalise_answer
from shared.prompting import SYSTEM_PROMPT


@pytest.mark.parametrize("split, rows", [("train", 7473), ("test", 1319)])
def test_bundled_splits_have_every_row_and_integer_answers(split, rows):
    problems = load_gsm8k(split)
    assert len(problems) == rows
    for problem in problems:
        int(problem.answer)  # every normalised answer parses as an int
        assert "," not in problem.answer and problem.answer == problem.answer.strip()
        assert problem.prompt == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": problem.question},
        ]


@pytest.mark.parametrize("split, comma_rows", [("train", 79), ("test", 14)])
def test_thousands_commas_are_removed(split, comma_rows):
    problems = load_gsm8k(split)
    with_comma = [p for p in problems if "," in p.solution.split("####")[-1]]
    assert len(with_comma) == comma_rows
    for problem in with_comma:
        assert problem.answer == problem.solution.split("####")[-1].strip().replace(",", "")


def test_known_rows():
    train = load_gsm8k("train")
    assert train[0].answer == "72" and train[0].question.startswith("Natalia sold clips")
    test_answers = [p.answer for p in load_gsm8k("test")]
    assert "-10" in test_answers and "-3" in test_answers


def test_any_jsonl_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"question": "1+1?", "answer": "1+1=2\n#### 2"}, {"question": "big?", "answer": "#### 1,234,567"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = load_problems("train", str(path))  # through datasets.load_dataset: a file is one split, train
    assert [p.answer for p in problems] == ["2", "1234567"]


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown GSM8K split"):
        load_gsm8k("validation")
    with pytest.raises(ValueError, match="neither"):
        load_gsm8k(dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="no '####'"):
        normalise_answer("just text")
