"""The four rewards against hand-derived values: one row per input, four expected scores.

Each expected value was worked out from the recipe's rules (see ``shared/rewards.py``), including
its quirks: MULTILINE lets text on a *later* line after ``</SOLUTION>`` (or before the first tag)
pass as exact format, "-3" extracts as 3, "1,080" extracts as 1.
"""

import math

import pytest

from shared.rewards import (
    DEFAULT_REWARD_FUNCS,
    REWARD_FUNCTIONS,
    RewardError,
    WeightedReward,
    check_answer_correctness,
    check_numbers_extraction,
    load_rewards,
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
    default = score_completions(None, texts, answer=["72", "72"])
    assert default.total == [9.5, -2.0]
    only_correctness = [
        replace(reward, weight=2.0 if reward.name == "check_answer_correctness" else 0.0) for reward in REWARD_FUNCTIONS
    ]
    assert score_completions(None, texts, only_correctness, answer=["72", "72"]).total == [6.0, 0.0]
    assert [reward.weight for reward in REWARD_FUNCTIONS] == [1.0, 1.0, 1.0, 1.0]


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        check_answer_correctness(None, [done("1"), done("2")], ["1"])


def test_the_four_rewards_by_import_path_score_bit_for_bit_as_the_built_in_ones():
    """``--reward-funcs``' default names the same four functions: every case of the table gives the
    same per-function scores and totals through the import path as through ``REWARD_FUNCTIONS``."""
    texts, answers = [case[1] for case in CASES], [case[2] for case in CASES]
    by_path = load_rewards(DEFAULT_REWARD_FUNCS)
    assert [reward.function for reward in by_path] == [reward.function for reward in REWARD_FUNCTIONS]
    built_in = score_completions([None] * len(texts), texts, REWARD_FUNCTIONS, answer=answers)
    loaded = score_completions([None] * len(texts), texts, by_path, answer=answers)
    assert loaded == built_in
    assert loaded.per_function == {
        "match_format_exactly": [case[3] for case in CASES],
        "match_format_approximately": [case[4] for case in CASES],
        "check_answer_correctness": [case[5] for case in CASES],
        "check_numbers_extraction": [case[6] for case in CASES],
    }


def test_a_reward_function_gets_trls_arguments_and_may_not_apply(tmp_path):
    """A user's function in a file, called as TRL calls it: prompts, completions, completion_ids and
    each extra column by keyword; None leaves it out of that completion's total."""
    module = tmp_path / "my_rewards.py"
    module.write_text(
        "seen = {}\n"
        "def length_if_tagged(prompts, completions, completion_ids, difficulty, **kwargs):\n"
        "    seen.update(prompts=prompts, completion_ids=completion_ids, difficulty=difficulty, rest=sorted(kwargs))\n"
        "    pairs = zip(completions, completion_ids)\n"
        "    return [float(len(ids)) if text.startswith('<') else None for text, ids in pairs]\n"
    )
    (reward,) = load_rewards([f"{module}:length_if_tagged"], [0.5])
    texts = [done("72"), "no tags"]
    scores = score_completions(
        ["p1", "p2"], texts, (reward, *REWARD_FUNCTIONS[:1]), completion_ids=[[1, 2, 3], [4]],
        answer=["72", "72"], difficulty=[1, 2],
    )  # fmt: skip
    seen = reward.function.__globals__["seen"]
    assert seen == {
        "prompts": ["p1", "p2"],
        "completion_ids": [[1, 2, 3], [4]],
        "difficulty": [1, 2],
        "rest": ["answer"],
    }
    assert scores.per_function["length_if_tagged"][0] == 3.0 and math.isnan(scores.per_function["length_if_tagged"][1])
    assert scores.total == [0.5 * 3.0 + 3.0, 0.0]  # the second: only match_format_exactly applied (0.0)
    alone = score_completions(["p"], ["x"], (reward,), completion_ids=[[1]], answer=["1"], difficulty=[1])
    assert math.isnan(alone.total[0])  # no function applied: unscorable (its advantage is 0)


@pytest.mark.parametrize(
    "returns, message",
    [
        ("[1.0]", "reward function bad returned 1 scores for 2 completions"),
        ("[1.0, float('nan')]", 'reward function bad returned nan for completion 1 \\(None means "does not apply"\\)'),
        ("[1.0, float('inf')]", "reward function bad returned inf for completion 1"),
        ("[1.0, 'high']", "reward function bad returned 'high' for completion 1, not a number"),
        ("None", "reward function bad returned NoneType, not a list of scores"),
        ("1 / 0", "reward function bad raised ZeroDivisionError: division by zero"),
    ],
)
def test_a_bad_reward_output_is_an_error_naming_the_function(tmp_path, returns, message):
    (tmp_path / "bad_rewards.py").write_text(f"def bad(completions, **kwargs):\n    return {returns}\n")
    rewards = load_rewards([f"{tmp_path / 'bad_rewards.py'}:bad"])
    with pytest.raises(RewardError, match=message):
        score_completions([None, None], ["a", "b"], rewards)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("shared.rewards", "expected module:function or file.py:function"),
        ("no_such_module:f", "cannot import no_such_module"),
        ("shared.rewards:REWARD_FUNCTIONS", "module shared.rewards has no function REWARD_FUNCTIONS"),
        ("missing.py:f", "missing.py: no such file"),
    ],
)
def test_a_reward_function_that_cannot_be_loaded_names_the_flag(spec, message):
    from shared.settings import SettingsError
    from trainer.settings import TrainSettings

    with pytest.raises(SettingsError, match=f"--reward-funcs.*{message}"):
        TrainSettings(reward_funcs=(spec,))


def test_weights_are_one_each_without_reward_weights_and_one_per_function_with_them():
    from shared.settings import SettingsError
    from trainer.settings import TrainSettings

    assert [reward.weight for reward in TrainSettings().rewards()] == [1.0, 1.0, 1.0, 1.0]
    custom = TrainSettings(reward_funcs=DEFAULT_REWARD_FUNCS[2:], reward_weights=(2.0, 0.5)).rewards()
    assert [(reward.name, reward.weight) for reward in custom] == [
        ("check_answer_correctness", 2.0),
        ("check_numbers_extraction", 0.5),
    ]
    with pytest.raises(SettingsError, match="--reward-weights needs one weight per --reward-funcs function \\(2\\)"):
        TrainSettings(reward_funcs=DEFAULT_REWARD_FUNCS[2:], reward_weights=(1.0, 1.0, 1.0))
    with pytest.raises(SettingsError, match="--reward-funcs two functions share a name"):
        TrainSettings(reward_funcs=(DEFAULT_REWARD_FUNCS[0], DEFAULT_REWARD_FUNCS[0]))
    assert isinstance(custom[0], WeightedReward)


def test_the_control_arms_keep_the_formats_score_and_the_correctness_scores_spread_but_not_their_owners():
    """The two controls of a correctness claim, as flags give them: format only (the correctness
    weights 0) scores every completion by its format alone; random correctness gives the batch the
    same correctness values (same mean and spread) in another order. Conversational completions,
    as the trainer passes them."""
    texts, answers = [case[1] for case in CASES], [case[2] for case in CASES]
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    correctness = [case[5] + case[6] for case in CASES]
    formats = [case[3] + case[4] for case in CASES]

    format_only = load_rewards(DEFAULT_REWARD_FUNCS, weights=[1, 1, 0, 0])
    assert score_completions(None, completions, format_only, answer=answers).total == pytest.approx(formats)

    random_arm = load_rewards([*DEFAULT_REWARD_FUNCS[:2], "shared.control_rewards:shuffled_correctness"])
    shuffled = score_completions(None, completions, random_arm, answer=answers).per_function["shuffled_correctness"]
    assert sorted(shuffled) == sorted(correctness) and shuffled != correctness  # CASES holds distinct values
