"""Every dataset ``--dataset`` can name, loaded the same way: a list of ``MathProblem`` (the system
prompt and question as chat messages, the normalised answer, the worked solution).

- ``gsm8k``: the bundled GSM8K copy; ``gsm8k-hub``: ``openai/gsm8k`` through ``datasets``
  (``shared/gsm8k.py``);
- ``arithmetic:D``: generated problems of difficulty D (``shared/arithmetic.py``);
- a path to a JSONL file of GSM8K-shaped rows (``{"question", "answer": "... #### N"}``; the split
  is then ignored).

>>> problems = load_problems("test", "arithmetic:2")
>>> len(problems), problems[0].prompt[1]["content"] == problems[0].question
(300, True)
>>> dataset_problem("arithmetic:9"), dataset_problem("gsm8k")
('arithmetic:9: the difficulty must be one of (1, 2, 3, 4)', None)
"""

from pathlib import Path

from shared.arithmetic import PREFIX, generate_records, parse_difficulty
from shared.gsm8k import BUNDLED, HUB, MathProblem, load_gsm8k, problem_from_row


def load_problems(split: str, dataset: str) -> list[MathProblem]:
    difficulty = parse_difficulty(dataset)
    if difficulty is not None:
        return [problem_from_row(record) for record in generate_records(difficulty, split)]
    return load_gsm8k(split, dataset=dataset)


def dataset_problem(dataset: str) -> str | None:
    """What is wrong with a ``--dataset`` value, or None (settings check it before anything loads)."""
    try:
        parse_difficulty(dataset)
    except ValueError as error:
        return str(error)
    if dataset in (BUNDLED, HUB) or dataset.startswith(PREFIX) or Path(dataset).is_file():
        return None
    return f"{dataset}: neither {BUNDLED}, {HUB}, {PREFIX}D nor a JSONL file"
