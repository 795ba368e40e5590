"""Control rewards: what a gain has to beat before it is credited to the correctness reward.

Three of the four notebook rewards score the format, and random rewards alone have moved small
models' accuracy (arXiv 2506.10947). An experiment that credits a gain to correctness runs two
controls from the same start:

- **format only**: the four rewards with the two correctness weights at 0
  (``--reward-weights 1 1 0 0``);
- **random correctness**: the two format rewards plus ``shuffled_correctness`` below, a reward with
  exactly the mean and spread of the two correctness rewards on the batch, but tied to no answer::

      --reward-funcs shared.rewards:match_format_exactly shared.rewards:match_format_approximately \\
        shared.control_rewards:shuffled_correctness

Pure, with TRL's reward signature, like the rewards in ``shared.rewards``.
"""

import random
import zlib
from collections.abc import Sequence

from shared.rewards import Completion, check_answer_correctness, check_numbers_extraction, completion_text


def shuffled_correctness(
    prompts: Sequence, completions: Sequence[Completion], answer: Sequence[str], **kwargs
) -> list[float]:
    """The batch's correctness scores (``check_answer_correctness`` + ``check_numbers_extraction``,
    per completion), permuted across the batch: the same values, so the same mean and spread, given
    to other completions. The permutation is seeded by the completions' text, so the same batch
    always gets the same scores.

    >>> done = "<start_working_out>...<end_working_out><SOLUTION>{}</SOLUTION>"
    >>> completions = [done.format(n) for n in ("72", "100", "60", "72")] + ["72"]
    >>> right = [s + n for s, n in zip(check_answer_correctness(None, completions, ["72"] * 5),
    ...                                check_numbers_extraction(None, completions, ["72"] * 5))]
    >>> right
    [4.5, -0.5, 0.5, 4.5, 0.0]
    >>> shuffled = shuffled_correctness(None, completions, ["72"] * 5)
    >>> sorted(shuffled) == sorted(right), shuffled == shuffled_correctness(None, completions, ["72"] * 5)
    (True, True)
    """
    scores = [
        correct + extracted
        for correct, extracted in zip(
            check_answer_correctness(prompts, completions, answer),
            check_numbers_extraction(prompts, completions, answer),
            strict=True,
        )
    ]
    seed = zlib.crc32("\x00".join(completion_text(completion) for completion in completions).encode())
    random.Random(seed).shuffle(scores)
    return scores
