"""Evaluation metrics on hand-written completions."""

import pytest

from shared.prompting import Problem
from trainer.evaluation import summarise, verdicts, wilson_interval

PROBLEM = Problem([{"role": "user", "content": "q"}], {"answer": "1080", "solution": "#### 1,080"})


def done(solution: str) -> str:
    return f"<start_working_out>work<end_working_out><SOLUTION>{solution}</SOLUTION>"


@pytest.mark.parametrize(
    "text, strict_format, strict_correct, lenient_correct",
    [
        (done("1080"), True, True, True),
        (done("1,080"), True, True, True),  # commas stripped
        (done("$1080"), True, True, True),  # $ stripped
        (done("1080."), True, True, True),  # trailing period stripped
        (done(" 1 080 "), True, True, False),  # spaces stripped; the last number alone is "080"
        (done("1080 apples"), True, False, True),  # not only the number: strict fails, last number matches
        (done("1081"), True, False, False),
        ("<SOLUTION>1080</SOLUTION>", False, False, True),  # wrong tags: no strict format
        ("so the answer is 1,080.", False, False, True),
        ("no number here", False, False, False),
        (done("seven"), True, False, False),
        ("", False, False, False),
    ],
)
def test_verdicts(text, strict_format, strict_correct, lenient_correct):
    verdict = verdicts(PROBLEM, text, token_count=10, finish_reason="stop")
    assert (verdict["strict_format"], verdict["strict_correct"], verdict["lenient_correct"]) == (
        strict_format,
        strict_correct,
        lenient_correct,
    )


def test_summary_counts_rates_with_wilson_intervals_and_pass_and_majority_at_k():
    rows = []
    for question, answers in enumerate([["1080", "1080", "5"], ["5", "6", "1080"]]):
        for answer in answers:
            row = verdicts(PROBLEM, done(answer), token_count=4, finish_reason="length" if answer == "6" else "stop")
            rows.append(
                {
                    **row,
                    "question_index": question,
                    "gold": "1080",
                    "logprob_sum": -2.0 if answer == "1080" else -0.5,  # the sampler's log π of the 4 tokens
                    "rewards": {
                        "match_format_exactly": 3.0,
                        "match_format_approximately": 2.0,
                        "check_answer_correctness": 3.0 if answer == "1080" else -0.5,
                        "check_numbers_extraction": 0.0,
                    },
                }
            )
    summary = summarise(rows, num_generations=3, temperature=1.0)
    assert summary["strict_accuracy"]["successes"] == 3 and summary["strict_accuracy"]["value"] == 0.5
    # equal, not close: the same float64 operations on both sides, and halves are exact in binary
    assert summary["strict_accuracy"]["ci95"] == list(wilson_interval(3, 6))
    assert summary["truncation_rate"]["value"] == 1 / 6
    assert summary["pass@3"]["value"] == 1.0  # both questions have a right sample
    assert summary["maj@3"]["value"] == 0.5  # only the first question's majority is right
    assert summary["reward/check_answer_correctness"] == (3 + 3 - 0.5 - 0.5 - 0.5 + 3) / 6
    assert summary["entropy_per_token"] == (3 * 2.0 + 3 * 0.5) / (6 * 4)  # −Σ log π / tokens; exact in binary
    assert "entropy_per_token" not in summarise(rows, num_generations=3)  # greedy: no distribution sampled


def test_wilson_interval_edges():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(0, 10)
    # 0 of n: the upper bound is z²/(n + z²) in closed form (0.2775 for n = 10), a few float64 roundings away
    assert high == pytest.approx(1.96**2 / (10 + 1.96**2), rel=1e-12)
