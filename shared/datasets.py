"""Every dataset ``--dataset`` can name, loaded the same way: a list of ``Problem`` (the prompt as
chat messages, and every other column, which reaches the reward functions as keyword arguments).

- ``gsm8k``: the bundled GSM8K copy; ``gsm8k-hub``: ``openai/gsm8k`` through ``datasets``
  (``shared/gsm8k.py``);
- ``arithmetic:D``: generated problems of difficulty D; ``arithmetic:D-E``: difficulties D to E
  interleaved; ``...:large``: with operands ten times larger (``shared/arithmetic.py``);
- anything else goes to ``datasets.load_dataset``, as TRL's scripts take a dataset: a local file
  (``.json``/``.jsonl``/``.csv``/``.parquet``, read by its suffix; a single file is one split,
  ``train``), a local folder (its files' names give the splits: ``train.jsonl``,
  ``test.jsonl``, ...), or a hub name, ``name`` or ``name:config``. A split may be a slice,
  ``train[:90%]`` (the bundled and generated datasets take counts only: ``test[200:]``).

Rows follow TRL's conventions: a ``prompt`` column, plain text (sent as the user's turn after
``--system-prompt``) or conversational (a list of ``{"role", "content"}`` messages, sent as they
are); every other column reaches the reward functions. Rows without ``prompt`` but in GSM8K's
shape (``question``, and ``answer`` ending ``#### N``) are read as GSM8K.

>>> problems = load_problems("test", "arithmetic:2")
>>> len(problems), problems[0].prompt[1]["content"] == problems[0].question
(300, True)
>>> dataset_problem("arithmetic:9")
'arithmetic:9: the difficulty must be one of (1, 2, 3, 4), or a range of them such as 1-2'
>>> dataset_problem("gsm8k"), dataset_problem("./no/such.jsonl")
(None, './no/such.jsonl: no such file or folder')
"""

import re
from pathlib import Path

from shared.arithmetic import PREFIX, parse_task, task_records
from shared.gsm8k import BUNDLED, HUB, load_gsm8k, problem_from_row
from shared.prompting import Problem, build_prompt
from shared.settings import SettingsError, require

SPLIT_SLICE = re.compile(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?")
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}  # datasets' builders
DATASET_HELP = (
    "gsm8k (bundled), gsm8k-hub (openai/gsm8k), arithmetic:D (generated, difficulty D = 1..4; "
    "arithmetic:1-2 mixes difficulties, arithmetic:D:large has 10x larger numbers), or what "
    "datasets.load_dataset loads: a .json/.jsonl/.csv/.parquet file, a folder, a hub name[:config]; rows with "
    "TRL's 'prompt' column (or GSM8K's question/answer), the other columns passed to the reward functions"
)
WORKED_SOLUTIONS_HELP = f"prompts with worked solutions (TRL's 'completion' column, or GSM8K's answers): {DATASET_HELP}"
SYSTEM_PROMPT_HELP = "system message before each plain-text prompt; none = the notebook's (its four tags), '' = none"


def load_problems(split: str, dataset: str, system_prompt: str | None = None) -> list[Problem]:
    """All rows of ``dataset``'s ``split`` as problems, in order. ``system_prompt`` goes before
    plain prompts (None: the notebook's; "": none). A dataset without the columns needed, a split
    it lacks or an empty split raise ``SettingsError`` naming ``--dataset``."""
    task = parse_task(dataset)
    if task is not None or dataset in (BUNDLED, HUB):
        name, rows = split_slice(dataset, split)
        if task is not None:
            return [problem_from_row(record, system_prompt) for record in task_records(task, name)[rows]]
        return load_gsm8k(name, dataset=dataset, system_prompt=system_prompt)[rows]
    rows = load_rows(dataset, split)
    if not rows:
        raise SettingsError("dataset", f"{dataset}: the split {split!r} has no rows")
    return [problem_of(row, dataset, system_prompt) for row in rows]


def split_slice(dataset: str, split: str) -> tuple[str, slice]:
    """A split name with an optional slice of counts, as ``datasets`` writes one, for the bundled
    and generated datasets.

    >>> [split_slice("gsm8k", split) for split in ("test", "test[200:]", "train[:-10]")]
    [('test', slice(None, None, None)), ('test', slice(200, None, None)), ('train', slice(None, -10, None))]
    """
    match = SPLIT_SLICE.fullmatch(split)
    if match is None:
        raise SettingsError(
            "dataset", f"{dataset}: the split {split!r} must be a name, or one and a slice of counts: test[200:]"
        )
    name, start, stop = match.groups()
    return name, slice(int(start) if start else None, int(stop) if stop else None)


def load_rows(dataset: str, split: str) -> list[dict]:
    """One split of a file, folder or hub dataset, through ``datasets.load_dataset``."""
    import datasets  # imported here: slow, and the bundled datasets do not need it

    path = Path(dataset).expanduser()
    if path.is_file():
        if path.stat().st_size == 0:  # datasets' json builder fails on one with StopIteration
            raise SettingsError("dataset", f"{dataset}: the file is empty")
        if path.suffix not in FILE_BUILDERS:
            raise SettingsError("dataset", f"{dataset}: a file must end in one of {', '.join(FILE_BUILDERS)}")
        positional, keywords = (FILE_BUILDERS[path.suffix],), {"data_files": str(path)}
    elif path.is_dir():
        positional, keywords = (str(path),), {}
    else:
        name, _, config = dataset.partition(":")
        positional, keywords = (name, config or None), {}
    try:
        return list(datasets.load_dataset(*positional, **keywords, split=split))
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        # ValueError names a split the dataset lacks: 'Unknown split "test". Should be one of ['train'].'
        raise SettingsError(
            "dataset", f"{dataset}, split {split!r}: {error} (choose the splits with --dataset-train-split and "
            "--dataset-test-split, eval's with --split; a single file is one split, train: slice it, train[:90%])",
        ) from None  # fmt: skip


def problem_of(row: dict, dataset: str, system_prompt: str | None) -> Problem:
    """One row by TRL's conventions (``prompt``, plain or conversational), or in GSM8K's shape."""
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            messages = build_prompt(prompt, system_prompt)
        elif isinstance(prompt, list) and prompt and all(is_message(m) for m in prompt):
            messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            shown = repr(prompt)[:80]
            raise SettingsError("dataset", f"{dataset}: a prompt must be text or role/content messages, got {shown}")
        return Problem(messages, {name: value for name, value in row.items() if name != "prompt"})
    if "question" in row and "####" in str(row.get("answer", "")):
        return problem_from_row(row, system_prompt)
    raise SettingsError(
        "dataset", f"{dataset}: no 'prompt' column (TRL's convention) and not GSM8K's question/answer; "
        f"its columns: {', '.join(row)}",
    )  # fmt: skip


def is_message(message: object) -> bool:
    return (
        isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)
    )


def longest_prompt_tokens(problems: list[Problem], tokenizer, candidates: int = 16) -> tuple[int, Problem]:
    """The most tokens a problem's prompt takes through ``tokenizer``'s chat template, and that
    problem. Only the ``candidates`` longest by characters are tokenised (tokens grow with
    characters; a whole GSM8K split would take seconds)."""
    by_length = sorted(problems, key=lambda p: sum(len(m["content"]) for m in p.prompt), reverse=True)
    counted = [
        (len(tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, return_dict=False)), p)
        for p in by_length[:candidates]
    ]
    return max(counted, key=lambda pair: pair[0])


def dataset_problem(dataset: str) -> str | None:
    """What is wrong with a ``--dataset`` value that shows before loading it, or None: an
    ``arithmetic:D`` out of range, or a local path (``/``, ``.``, ``~``) that does not exist. A
    hub name is checked when it loads."""
    try:
        parse_task(dataset)
    except ValueError as error:
        return str(error)
    if dataset in (BUNDLED, HUB) or dataset.startswith(PREFIX):
        return None
    looks_local = dataset.startswith(("/", ".", "~")) or Path(dataset).suffix in FILE_BUILDERS
    if looks_local and not Path(dataset).expanduser().exists():
        return f"{dataset}: no such file or folder"
    return None


def require_dataset(flag: str, dataset: str | None) -> None:
    """In a settings class's ``__post_init__``: refuse ``dataset`` (None: no dataset, nothing to
    check) naming ``flag`` when ``dataset_problem`` finds something wrong with it."""
    problem = None if dataset is None else dataset_problem(dataset)
    require(problem is None, flag, problem or "")
