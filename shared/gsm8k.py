"""GSM8K: grade-school math word problems, loaded as prompt messages plus a normalised answer.

Datasets, chosen by ``load_gsm8k(split, dataset=...)``:

- ``"gsm8k"`` (default): the copy shipped in this package (``shared/data``, MIT, see its
  ``SOURCE.md``); needs nothing else.
- ``"gsm8k-hub"``: ``openai/gsm8k`` (config ``main``) through ``datasets``, when online.

Any other file or dataset in GSM8K's shape (``{"question", "answer": "... #### N"}`` rows) is
read by ``shared.datasets`` with ``problem_from_row``.

The answer is the text after ``####``, stripped, with thousands commas removed: the recipe kept
``"1,080"`` and so scored every correct ``1080`` at -0.5.
"""

import gzip
import json
import re
from pathlib import Path

from shared.prompting import Problem, build_prompt

BUNDLED_DIR = Path(__file__).parent / "data"
HUB_ID = "openai/gsm8k"
SPLITS = ("train", "test")


def normalise_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: after ``####``, stripped, thousands commas removed.

    >>> normalise_answer("48/2 = <<48/2=24>>24\\n#### 1,080")
    '1080'
    >>> normalise_answer("#### -7 ")
    '-7'
    """
    if "####" not in solution:
        raise ValueError(f"GSM8K solution has no '####' answer line: {solution[-80:]!r}")
    return solution.split("####")[-1].strip().replace(",", "")


def solution_reasoning(solution: str) -> str:
    """The worked solution without its ``<<calculator>>`` annotations and ``#### N`` line.

    >>> solution_reasoning("Natalia sold 48/2 = <<48/2=24>>24 clips.\\n#### 72")
    'Natalia sold 48/2 = 24 clips.'
    """
    return re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()


def problem_from_row(row: dict, system_prompt: str | None = None) -> Problem:
    """A GSM8K-shaped row as a ``Problem``: its columns are the ``question``, the normalised
    ``answer`` (what the rewards compare with) and the whole worked ``solution`` (GSM8K's
    ``answer`` text, with ``<<calculator>>`` annotations and the ``#### N`` line).

    >>> problem_from_row({"question": "1+1?", "answer": "1+1=2\\n#### 2"}).columns["answer"]
    '2'
    """
    columns = {"question": row["question"], "answer": normalise_answer(row["answer"]), "solution": row["answer"]}
    return Problem(build_prompt(row["question"], system_prompt), columns)


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


BUNDLED, HUB = "gsm8k", "gsm8k-hub"


def load_gsm8k(split: str = "train", dataset: str = BUNDLED, system_prompt: str | None = None) -> list[Problem]:
    """All rows of one split, in file order."""
    if dataset == BUNDLED:
        if split not in SPLITS:
            raise ValueError(f"unknown GSM8K split {split!r}; expected one of {SPLITS}")
        rows = _read_jsonl(BUNDLED_DIR / f"gsm8k_{split}.jsonl.gz")
    elif dataset == HUB:
        import datasets  # imported here: slow, and only this source needs it

        rows = list(datasets.load_dataset(HUB_ID, "main", split=split))
    else:
        raise ValueError(f"dataset {dataset!r} is neither {BUNDLED!r} nor {HUB!r}")
    return [problem_from_row(row, system_prompt) for row in rows]
