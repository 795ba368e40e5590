"""``grpo-math study``: the table and the failure kinds (fast), and the whole study in its
``--quick`` size on the embedded model (slow)."""

import json
import math

import pytest

from grpo_math.study import StudySettings, main
from grpo_math.study_report import FAILURE_KINDS, failure_kind, results_table
from shared.settings import SettingsError


def rate(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci95": [low, high]}


def test_each_completion_gets_exactly_one_failure_kind():
    verdicts = [
        dict(strict_correct=True, truncated=False, strict_format=True, lenient_correct=True),
        dict(
            strict_correct=False, truncated=True, strict_format=False, lenient_correct=True, completion="7 = 7. " * 50
        ),
        dict(strict_correct=False, truncated=True, strict_format=False, lenient_correct=True, completion="7 = 7."),
        dict(
            strict_correct=False,
            truncated=False,
            strict_format=True,
            lenient_correct=False,
            question="A 5 B",
            strict_answer="5",
        ),
        dict(
            strict_correct=False,
            truncated=False,
            strict_format=True,
            lenient_correct=True,
            question="A 5 B",
            strict_answer="6",
        ),
        dict(strict_correct=False, truncated=False, strict_format=False, lenient_correct=True),
        dict(strict_correct=False, truncated=False, strict_format=False, lenient_correct=False),
    ]
    assert [failure_kind(row) for row in verdicts] == list(FAILURE_KINDS)


def test_the_table_names_what_each_study_changed_and_whether_the_goal_was_met():
    base = {metric: rate(0.05, 0.03, 0.09) for metric in ("strict_accuracy", "lenient_accuracy", "strict_format_rate")}
    after = {"strict_accuracy": rate(0.2, 0.15, 0.26), "lenient_accuracy": rate(0.2, 0.15, 0.26)}
    after["strict_format_rate"] = rate(0.9, 0.85, 0.93)
    settings = {"num_generations": 8, "base_max_completion_length": 1024, "output_dir": "a"}
    studies = {
        "a": {"settings": settings, "base": base, "seeds": {"1": after}},
        "g16": {"settings": {**settings, "num_generations": 16, "output_dir": "b"}, "base": base, "seeds": {"1": base}},
    }
    table = results_table(studies).splitlines()
    assert table[2] == ("| a | — | base (1024 tokens) | 5.0 % [3.0–9.0] | 5.0 % [3.0–9.0] | 5.0 % [3.0–9.0] | |")
    assert table[3].startswith("| a | — | seed 1 after GRPO | 20.0 % [15.0–26.0]") and table[3].endswith("| met |")
    assert table[5].startswith("| g16 | num_generations=16 | seed 1") and table[5].endswith("| missed |")


def test_compare_refuses_a_folder_that_is_not_a_study(tmp_path):
    with pytest.raises(SettingsError, match="--compare .*no study.json"):
        StudySettings(compare=(str(tmp_path),))


@pytest.mark.slow
def test_quick_study_writes_every_output_with_finite_figures(tmp_path, capsys):
    assert main(["--quick", "--output-dir", str(tmp_path)]) == 0
    for name in ("study.json", "results.md", "curves.png", "settings.json", "base/completions.jsonl"):
        assert (tmp_path / name).is_file(), name
    for name in ("sft/adapter_config.json", "grpo/metrics.jsonl", "grpo/final/adapter_config.json"):
        assert (tmp_path / "seed-1" / name).is_file(), name
    result = json.loads((tmp_path / "study.json").read_text())
    assert list(result["seeds"]) == ["1"] and result["settings"]["eval_limit"] == 8

    def numbers(value):
        if isinstance(value, dict):
            return [n for item in value.values() for n in numbers(item)]
        if isinstance(value, list):
            return [n for item in value for n in numbers(item)]
        return [value] if isinstance(value, float | int) and not isinstance(value, bool) else []

    figures = numbers({"base": result["base"], "seeds": result["seeds"]})
    assert figures and all(math.isfinite(n) for n in figures)
    for final in (result["base"], result["seeds"]["1"]):
        assert sum(final["failure_kinds"].values()) == 8
    rows = [json.loads(line) for line in (tmp_path / "seed-1" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert "eval/strict_accuracy" in rows[1] and all(math.isfinite(row["reward"]) for row in rows)
    assert "| seed 1 after GRPO |" in (tmp_path / "results.md").read_text()
