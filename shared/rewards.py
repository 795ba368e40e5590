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

A user's own reward functions come in the same way, by import path (``--reward-funcs
module:function`` or ``path/to/file.py:function``, ``load_reward_function``), and are called as
TRL calls them: ``f(prompts=..., completions=..., completion_ids=..., **columns)``, every dataset
column but the prompt a keyword argument, one float per completion or ``None`` where the function
does not apply.
"""

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


DEFAULT_REWARD_FUNCS = tuple(f"{__name__}:{reward.name}" for reward in REWARD_FUNCTIONS)  # --reward-funcs
REWARD_FUNCS_HELP = (
    "reward functions, module:function or file.py:function, called as TRL calls them (prompts, completions, "
    "completion_ids and each dataset column as keywords; one float or None per completion)"
)


class RewardError(ValueError):
    """A reward function that cannot be loaded, that raised, or whose scores are not one finite
    number (or None) per completion; the message names the function."""


def load_reward_function(spec: str) -> RewardFunction:
    """The function ``spec`` names: ``module:function`` (an importable module) or
    ``path/to/file.py:function`` (a file, loaded as a module of its own), as TRL users pass
    reward functions by name.

    >>> load_reward_function("shared.rewards:match_format_exactly").__name__
    'match_format_exactly'
    >>> load_reward_function("shared.rewards")
    Traceback (most recent call last):
    shared.rewards.RewardError: shared.rewards: expected module:function or file.py:function
    >>> load_reward_function("shared.rewards:no_such_function")
    Traceback (most recent call last):
    shared.rewards.RewardError: shared.rewards:no_such_function: module shared.rewards has no function no_such_function
    """
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise RewardError(f"{spec}: expected module:function or file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise RewardError(f"{spec}: {path}: no such file")
        module_spec = importlib.util.spec_from_file_location(f"reward_module_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            raise RewardError(f"{spec}: importing {path} raised {type(error).__name__}: {error}") from error
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise RewardError(f"{spec}: cannot import {module_name}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise RewardError(f"{spec}: module {module_name} has no function {function_name}")
    return function


def load_rewards(specs: Sequence[str], weights: Sequence[float] | None = None) -> tuple[WeightedReward, ...]:
    """The functions ``specs`` name (``load_reward_function``), each with its weight (1.0 each
    without ``weights``, as TRL's ``reward_weights=None``).

    >>> [(reward.name, reward.weight) for reward in load_rewards(DEFAULT_REWARD_FUNCS[:2], (1.0, 0.5))]
    [('match_format_exactly', 1.0), ('match_format_approximately', 0.5)]
    """
    weights = (1.0,) * len(specs) if weights is None else weights
    return tuple(
        WeightedReward(load_reward_function(spec), weight) for spec, weight in zip(specs, weights, strict=True)
    )


def reward_function_problem(spec: str) -> str | None:
    """What is wrong with one ``--reward-funcs`` entry, or None (settings check it before anything
    loads).

    >>> reward_function_problem("shared.rewards:match_format_exactly") is None
    True
    >>> reward_function_problem("no_such_module:f")
    "no_such_module:f: cannot import no_such_module: No module named 'no_such_module'"
    """
    try:
        load_reward_function(spec)
    except RewardError as error:
        return str(error)
    return None


def checked_scores(name: str, values, count: int) -> list[float]:
    """``values`` as one float per completion, ``None`` (does not apply) as NaN; a wrong length, a
    value that is no number, or a NaN or infinite number is a ``RewardError`` naming the function.

    >>> checked_scores("f", [1, None, 0.5], 3)
    [1.0, nan, 0.5]
    >>> checked_scores("f", [1.0], 2)
    Traceback (most recent call last):
    shared.rewards.RewardError: reward function f returned 1 scores for 2 completions
    >>> checked_scores("f", [float("nan")], 1)
    Traceback (most recent call last):
    shared.rewards.RewardError: reward function f returned nan for completion 0 (None means "does not apply")
    """
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward function {name} returned {type(values).__name__}, not a list of scores") from None
    if len(values) != count:
        raise RewardError(f"reward function {name} returned {len(values)} scores for {count} completions")
    scores = []
    for index, value in enumerate(values):
        if value is None:
            scores.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RewardError(f"reward function {name} returned {value!r} for completion {index}, not a number")
        if not math.isfinite(value):
            raise RewardError(
                f'reward function {name} returned {value} for completion {index} (None means "does not apply")'
            )
        scores.append(float(value))
    return scores


@dataclass(frozen=True)
class RewardScores:
    per_function: dict[str, list[float]]  # reward name -> one score per completion (unweighted; NaN: None)
    total: list[float]  # weighted sum per completion of the scores that apply; NaN where none applies


def score_completions(
    prompts: Sequence,
    completions: Sequence[Completion],
    rewards: Sequence[WeightedReward] = REWARD_FUNCTIONS,
    completion_ids: Sequence[Sequence[int]] | None = None,
    **columns: Sequence,
) -> RewardScores:
    """Every reward's scores and their weighted total, one entry per completion, each function
    called as TRL calls it: ``prompts``, ``completions``, ``completion_ids`` and every other
    dataset column (``answer`` ...) as keyword arguments, one entry per completion. A score of
    ``None`` leaves that function out of the completion's total (TRL's ``nansum``).

    >>> done = "<start_working_out>1+1<end_working_out><SOLUTION>2</SOLUTION>"
    >>> scores = score_completions(None, [done], answer=["2"])
    >>> scores.per_function  # doctest: +NORMALIZE_WHITESPACE
    {'match_format_exactly': [3.0], 'match_format_approximately': [2.0],
     'check_answer_correctness': [3.0], 'check_numbers_extraction': [1.5]}
    >>> scores.total
    [9.5]
    """
    per_function = {}
    for reward in rewards:
        try:
            values = reward.function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except Exception as error:
            raise RewardError(f"reward function {reward.name} raised {type(error).__name__}: {error}") from error
        per_function[reward.name] = checked_scores(reward.name, values, len(completions))
    total = []
    for index in range(len(completions)):
        applied = [
            reward.weight * per_function[reward.name][index]
            for reward in rewards
            if not math.isnan(per_function[reward.name][index])
        ]
        total.append(sum(applied) if applied else math.nan)
    return RewardScores(per_function=per_function, total=total)
