"""The four rewards of the original recipe, as pure functions with TRL's reward signature.

Each function takes ``(prompts, completions, answer, **kwargs)`` the way TRL's ``GRPOTrainer`` calls
reward functions, and returns one float per completion. A completion is either the text itself or
TRL's conversational form, a list of messages whose first element's ``content`` is the text.

The rules are the recipe's, bit for bit, quirks included: the strict pattern is *searched* with
MULTILINE, so ``$`` also matches at the end of any line and text on a later line after
``</SOLUTION>`` still counts as "exact format"; answers are compared with Python's own ``float()``
and ``str.strip()``. ``score_completions`` combines them with explicit weights.

Scale of the rewards (per completion): format exactly 0 or 3; format approximately -2 .. 2;
answer correctness -0.5 .. 3; number extraction 0 or 1.5.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.prompting import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START, TAGS

Completion = str | list[dict[str, str]]
RewardFunction = Callable[..., list[float]]

STRICT_FORMAT = re.compile(
    rf"^[\s]{{0,}}{REASONING_START}.+?{REASONING_END}.*?{SOLUTION_START}(.+?){SOLUTION_END}[\s]{{0,}}$",
    flags=re.MULTILINE | re.DOTALL,
)
FIRST_NUMBER_IN_SOLUTION = re.compile(rf"{SOLUTION_START}.*?([\d\.]{{1,}})", flags=re.MULTILINE | re.DOTALL)


def completion_text(completion: Completion) -> str:
    """The text of a completion in either of TRL's forms.

    >>> completion_text("42")
    '42'
    >>> completion_text([{"role": "assistant", "content": "42"}])
    '42'
    """
    if isinstance(completion, str):
        return completion
    return completion[0]["content"]


def match_format_exactly(completions: Sequence[Completion], **kwargs) -> list[float]:
    """3.0 where the whole strict layout is found, else 0.0.

    >>> match_format_exactly(["<start_working_out>2+3=5<end_working_out><SOLUTION>5</SOLUTION>"])
    [3.0]
    >>> match_format_exactly(["<start_working_out>2+3=5<end_working_out>5"])
    [0.0]
    >>> conversational = " <start_working_out>a<end_working_out><SOLUTION>1</SOLUTION>\\n"
    >>> match_format_exactly([[{"role": "assistant", "content": conversational}]])
    [3.0]
    """
    return [3.0 if STRICT_FORMAT.search(completion_text(c)) is not None else 0.0 for c in completions]


def match_format_approximately(completions: Sequence[Completion], **kwargs) -> list[float]:
    """For each of the four tags: +0.5 if it occurs exactly once, else -0.5.

    >>> match_format_approximately(["<start_working_out>a<end_working_out><SOLUTION>1</SOLUTION>"])
    [2.0]
    >>> match_format_approximately(["no tags at all"])
    [-2.0]
    >>> match_format_approximately(["<SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>"])
    [-2.0]
    """
    scores = []
    for completion in completions:
        text = completion_text(completion)
        scores.append(sum(0.5 if text.count(tag) == 1 else -0.5 for tag in TAGS))
    return scores


def check_answer_correctness(
    prompts: Sequence, completions: Sequence[Completion], answer: Sequence[str], **kwargs
) -> list[float]:
    """Compare the strict pattern's ``<SOLUTION>`` text with the gold answer.

    No strict match: 0. Equal after ``strip()``: 3.0. Otherwise by the ratio guess / answer:
    0.9..1.1 → 1.5, 0.8..1.2 → 0.5, else -0.5; text that is no number (or a zero answer) → -0.5.

    >>> done = "<start_working_out>...<end_working_out><SOLUTION>{}</SOLUTION>"
    >>> check_answer_correctness(None, [done.format(" 72 "), done.format("75"), done.format("60")], ["72"] * 3)
    [3.0, 1.5, 0.5]
    >>> check_answer_correctness(None, [done.format("$72"), done.format("100"), "72"], ["72"] * 3)
    [-0.5, -0.5, 0.0]
    """
    scores = []
    for completion, true_answer in zip(completions, answer, strict=True):
        match = STRICT_FORMAT.search(completion_text(completion))
        if match is None:
            scores.append(0.0)
            continue
        guess = match.group(1)
        if guess.strip() == true_answer.strip():
            scores.append(3.0)
            continue
        try:
            ratio = float(guess) / float(true_answer)
        except (ValueError, ZeroDivisionError):
            scores.append(-0.5)
            continue
        if 0.9 <= ratio <= 1.1:
            scores.append(1.5)
        elif 0.8 <= ratio <= 1.2:
            scores.append(0.5)
        else:
            scores.append(-0.5)
    return scores


def check_numbers_extraction(
    prompts: Sequence, completions: Sequence[Completion], answer: Sequence[str], **kwargs
) -> list[float]:
    """1.5 where the first number after ``<SOLUTION>`` equals the answer as a float, else 0.0.

    The number is the first run of digits and dots after the tag (so "-3" reads as 3 and "1,080"
    as 1); a run that is no float, such as "1.2.3", scores 0.

    >>> check_numbers_extraction(None, ["<SOLUTION> about 72.0 apples", "<SOLUTION>1,080", "72"], ["72", "1080", "72"])
    [1.5, 0.0, 0.0]
    """
    scores = []
    for completion, true_answer in zip(completions, answer, strict=True):
        match = FIRST_NUMBER_IN_SOLUTION.search(completion_text(completion))
        if match is None:
            scores.append(0.0)
            continue
        try:
            scores.append(1.5 if float(true_answer.strip()) == float(match.group(1).strip()) else 0.0)
        except (ValueError, TypeError):
            scores.append(0.0)
    return scores


@dataclass(frozen=True)
class WeightedReward:
    function: RewardFunction
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.function.__name__


REWARD_FUNCTIONS: tuple[WeightedReward, ...] = (
    WeightedReward(match_format_exactly, weight=1.0),
    WeightedReward(match_format_approximately, weight=1.0),
    WeightedReward(check_answer_correctness, weight=1.0),
    WeightedReward(check_numbers_extraction, weight=1.0),
)


@dataclass(frozen=True)
class RewardScores:
    per_function: dict[str, list[float]]  # reward name -> one score per completion (unweighted)
    total: list[float]  # weighted sum per completion


def score_completions(
    prompts: Sequence,
    completions: Sequence[Completion],
    answer: Sequence[str],
    rewards: Sequence[WeightedReward] = REWARD_FUNCTIONS,
) -> RewardScores:
    """Every reward's scores and their weighted total, one entry per completion.

    >>> scores = score_completions(None, ["<start_working_out>1+1<end_working_out><SOLUTION>2</SOLUTION>"], ["2"])
    >>> scores.per_function  # doctest: +NORMALIZE_WHITESPACE
    {'match_format_exactly': [3.0], 'match_format_approximately': [2.0],
     'check_answer_correctness': [3.0], 'check_numbers_extraction': [1.5]}
    >>> scores.total
    [9.5]
    """
    per_function = {
        reward.name: reward.function(prompts=prompts, completions=completions, answer=answer) for reward in rewards
    }
    total = [
        sum(reward.weight * per_function[reward.name][index] for reward in rewards) for index in range(len(completions))
    ]
    return RewardScores(per_function=per_function, total=total)
