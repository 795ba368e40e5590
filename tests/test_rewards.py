"""The four rewards against hand-derived values: one row per input, four expected scores.

Each expected value was worked out from the recipe's rules (see ``shared/rewards.py``), including
its quirks: MULTILINE lets text on a *later* line after ``</SOLUTION>`` (or before the first tag)
pass as exact format, "-3" extracts as 3, "1,080" extracts as 1.
"""

import pytest

from shared.rewards import (
    REWARD_FUNCTIONS,
    check_answer_correctness,
    check_numbers_extraction,
    match_format_approximately,
    match_format_exactly,
    score_completions,
)


def done(solution: str, reasoning: str = "48/2 = 24, 48 + 24 = 72") -> str:
    return f"<start_working_out>{reasoning}<end_working_out><SOLUTION>{solution}</SOLUTION>"


# (case, completion text, gold answer, exact, approximately, correctness, numbers)
CASES = [
    ("correct", done("72"), "72", 3.0, 2.0, 3.0, 1.5),
    ("comma in guess", done("1,080"), "1080", 3.0, 2.0, -0.5, 0.0),
    ("negative, equal", done("-3"), "-3", 3.0, 2.0, 3.0, 0.0),
    ("negative guess, positive answer", done("-3"), "3", 3.0, 2.0, -0.5, 1.5),
    ("decimal equal as float", done("72.0"), "72", 3.0, 2.0, 1.5, 1.5),
    ("trailing period", done("72."), "72", 3.0, 2.0, 1.5, 1.5),
    ("ratio 0.9 inclusive", done("90"), "100", 3.0, 2.0, 1.5, 0.0),
    ("ratio 1.1 inclusive", done("110"), "100", 3.0, 2.0, 1.5, 0.0),
    ("ratio 0.8 inclusive", done("80"), "100", 3.0, 2.0, 0.5, 0.0),
    ("ratio 1.2 inclusive", done("120"), "100", 3.0, 2.0, 0.5, 0.0),
    ("ratio 0.79", done("79"), "100", 3.0, 2.0, -0.5, 0.0),
    ("ratio 1.21", done("121"), "100", 3.0, 2.0, -0.5, 0.0),
    ("dollar sign", done("$72"), "72", 3.0, 2.0, -0.5, 1.5),
    ("spaces inside solution", done(" 72 "), "72", 3.0, 2.0, 3.0, 1.5),
    ("gold answer with whitespace", done("72"), " 72\n", 3.0, 2.0, 3.0, 1.5),
    ("scientific notation", done("1e3"), "1000", 3.0, 2.0, 1.5, 0.0),
    ("words, no number", done("seventy-two"), "72", 3.0, 2.0, -0.5, 0.0),
    ("zero gold answer", done("5"), "0", 3.0, 2.0, -0.5, 0.0),
    ("zero equals zero", done("0"), "0", 3.0, 2.0, 3.0, 1.5),
    ("empty solution", done(""), "72", 0.0, 2.0, 0.0, 0.0),
    ("repeated block", done("72") + done("72"), "72", 3.0, -2.0, -0.5, 1.5),
    ("missing </SOLUTION>", "<start_working_out>a<end_working_out><SOLUTION>72", "72", 0.0, 1.0, 0.0, 1.5),
    ("missing <end_working_out>", "<start_working_out>a<SOLUTION>72</SOLUTION>", "72", 0.0, 1.0, 0.0, 1.5),
    ("leading and trailing whitespace", "\n  " + done("72") + " \n\n", "72", 3.0, 2.0, 3.0, 1.5),
    ("text after, same line", done("72") + " Hope this helps.", "72", 0.0, 2.0, 0.0, 1.5),
    ("text after, next line", done("72") + "\nHope this helps.", "72", 3.0, 2.0, 3.0, 1.5),
    ("text before, same line", "Sure! " + done("72"), "72", 0.0, 2.0, 0.0, 1.5),
    ("text before, previous line", "Sure!\n" + done("72"), "72", 3.0, 2.0, 3.0, 1.5),
    ("multi-line working", done("18", reasoning="\nstep 1: 3*6\nstep 2: = 18\n"), "18", 3.0, 2.0, 3.0, 1.5),
    ("GSM8K style, no tags", "48/2 = 24\n#### 72", "72", 0.0, -2.0, 0.0, 0.0),
    ("empty string", "", "72", 0.0, -2.0, 0.0, 0.0),
    ("dots only after tag", "<SOLUTION>. 72</SOLUTION>", "72", 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(
    "text, answer, exact, approximately, correctness, numbers",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_reward_table(text, answer, exact, approximately, correctness, numbers):
    for completion in (text, [{"role": "assistant", "content": text}]):  # both of TRL's forms
        assert match_format_exactly([completion]) == [exact]
        assert match_format_approximately([completion]) == [approximately]
        assert check_answer_correctness([None], [completion], [answer]) == [correctness]
        assert check_numbers_extraction([None], [completion], [answer]) == [numbers]


def test_rewards_return_one_float_per_completion_in_order():
    texts = [case[1] for case in CASES]
    answers = [case[2] for case in CASES]
    scores = check_answer_correctness(prompts=[None] * len(texts), completions=texts, answer=answers)
    assert scores == [case[5] for case in CASES]
    assert all(type(score) is float for score in scores)


def test_weighted_total_uses_explicit_weights():
    from dataclasses import replace

    texts = [done("72"), "nothing"]
    default = score_completions(None, texts, ["72", "72"])
    assert default.total == [9.5, -2.0]
    only_correctness = [
        replace(reward, weight=2.0 if reward.name == "check_answer_correctness" else 0.0) for reward in REWARD_FUNCTIONS
    ]
    assert score_completions(None, texts, ["72", "72"], rewards=only_correctness).total == [6.0, 0.0]
    assert [reward.weight for reward in REWARD_FUNCTIONS] == [1.0, 1.0, 1.0, 1.0]


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        check_answer_correctness(None, [done("1"), done("2")], ["1"])
