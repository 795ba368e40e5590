"""This example's reward functions, in TRL's signature: ``(prompts, completions, **columns)`` → one
float per completion (``None`` where a function does not apply). ``target`` is the dataset's
column of that name; ``completions`` come as text or, for chat prompts, as TRL's conversational
``[{"role": "assistant", "content": ...}]``.

    grpo-math train --dataset examples/reverse_text \\
        --reward-funcs examples/reverse_text/rewards.py:score examples/reverse_text/rewards.py:exact_match \\
        --reward-weights 1 0      # train on score; exact_match is reported (rewards/exact_match/mean)
"""

from difflib import SequenceMatcher


def text_of(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def score(prompts, completions, target, **kwargs) -> list[float]:
    """How close the reply is to the reversed word: difflib's similarity ratio (1.0 when exact;
    a reply that says more than the word scores less), so a group's completions differ and
    GRPO has something to compare.

    >>> score(None, ["olleh", "The word reversed is olleh.", [{"role": "assistant", "content": "hello"}]],
    ...       target=["olleh"] * 3)
    [1.0, 0.3125, 0.4]
    """
    return [SequenceMatcher(None, text_of(c).strip(), t).ratio() for c, t in zip(completions, target, strict=True)]


def exact_match(prompts, completions, target, **kwargs) -> list[float]:
    """1.0 where the reply, stripped, is exactly the reversed word; this task's accuracy.

    >>> exact_match(None, ["olleh\\n", "olleh."], target=["olleh", "olleh"])
    [1.0, 0.0]
    """
    return [float(text_of(c).strip() == t) for c, t in zip(completions, target, strict=True)]
