"""Generated maths tasks with a difficulty knob, as GSM8K-shaped records: ``--dataset arithmetic:D``.

The same prompt, the same four rewards and the same answer checks as GSM8K; only the questions are
easier, so that a small model can partly solve them and GRPO has right and wrong answers to
compare within a group. Difficulty D grows with the operations and the words around them:

- 1: one operation written out: "What is 14 + 5?"
- 2: a one-step word problem: "Lee has 14 coins. Lee gets 5 more coins. How many coins does Lee
  have now?"
- 3: a two-step word problem (two gains or losses)
- 4: a three-step word problem: boxes of equal size (a product), then two gains or losses

Numbers stay small (operands up to 20, 50 for D = 1, products up to 100); no answer is negative. Each record is
``{"question", "answer"}`` with GSM8K's worked-solution layout (steps, then ``#### N``), so the
SFT warm-up learns from it as from GSM8K. The train and test splits are fixed: each is generated
from its own seed, and no test question occurs in the train split.

Two variants, for training on some difficulties and testing past them (out of distribution):

- ``arithmetic:D-E``: difficulties D to E interleaved (record i of difficulty D + i mod (E − D + 1));
- ``arithmetic:D:large`` (or ``arithmetic:D-E:large``): the same questions' shapes with operands
  ten times larger (up to 200, 500 for D = 1; the number of boxes stays 2–5), from seeds of their own.

>>> problem = generate_records(2, "test", 1)[0]
>>> problem["question"].endswith("?") and problem["answer"].split("#### ")[-1].isdigit()
True
>>> generate_records(3, "train", 5) == generate_records(3, "train", 5)  # fixed by its seed
True
>>> first, second = task_records(parse_task("arithmetic:1-2:large"), "test")[:2]  # D = 1, then 2
>>> first["question"], second["question"]
('What is 76 + 245?', 'Tom has 136 books. Tom loses 12 books. How many books does Tom have now?')
"""

import random
from dataclasses import dataclass

PREFIX = "arithmetic:"
DIFFICULTIES = (1, 2, 3, 4)
SPLIT_SIZES = {"train": 2000, "test": 300}
NAMES = ("Lee", "Ana", "Sam", "Mia", "Omar", "Zoe", "Ken", "Ivy", "Raj", "Eva", "Tom", "Lia")
ITEMS = ("coins", "apples", "stickers", "marbles", "books", "pencils", "shells", "cards", "stamps", "cookies")


LARGE = "large"
LARGE_SCALE = 10  # arithmetic:D:large: operand ranges times this


@dataclass(frozen=True)
class Task:
    """What an ``arithmetic:`` name asks for: its difficulties, interleaved, and the operands' scale."""

    difficulties: tuple[int, ...]
    scale: int = 1


def parse_task(dataset: str) -> Task | None:
    """``"arithmetic:D"``, ``"arithmetic:D-E"``, either with ``":large"`` → its ``Task``; any other
    dataset name → None; a bad difficulty or suffix → ValueError.

    >>> parse_task("arithmetic:3"), parse_task("gsm8k")
    (Task(difficulties=(3,), scale=1), None)
    >>> parse_task("arithmetic:1-2:large")
    Task(difficulties=(1, 2), scale=10)
    """
    if not dataset.startswith(PREFIX):
        return None
    text, _, suffix = dataset.removeprefix(PREFIX).partition(":")
    if suffix not in ("", LARGE):
        raise ValueError(f"{dataset}: after the difficulty only ':{LARGE}' may follow")
    first, _, last = text.partition("-")
    bounds = (first, last or first)
    if not all(bound.isdigit() and int(bound) in DIFFICULTIES for bound in bounds) or int(bounds[0]) > int(bounds[1]):
        raise ValueError(f"{dataset}: the difficulty must be one of {DIFFICULTIES}, or a range of them such as 1-2")
    return Task(tuple(range(int(bounds[0]), int(bounds[1]) + 1)), LARGE_SCALE if suffix else 1)


def _gain_or_loss(rng: random.Random, name: str, item: str, total: int, scale: int) -> tuple[str, str, int]:
    """One step on ``total``: (its sentence, its working line, the new total)."""
    if total > 2 and rng.random() < 0.5:
        amount = rng.randint(1, min(total - 1, 20 * scale))
        sentence = rng.choice(("{n} gives away {k} {i}.", "{n} loses {k} {i}.", "{n} gives {k} {i} to a friend."))
        return sentence.format(n=name, k=amount, i=item), f"{total} - {amount} = {total - amount}", total - amount
    amount = rng.randint(2, 20 * scale)
    sentence = rng.choice(("{n} gets {k} more {i}.", "{n} finds {k} more {i}.", "{n} buys {k} more {i}."))
    return sentence.format(n=name, k=amount, i=item), f"{total} + {amount} = {total + amount}", total + amount


def make_record(rng: random.Random, difficulty: int, scale: int = 1) -> dict:
    """One question of ``difficulty``, with its worked solution; ``scale`` multiplies the operands' range."""
    if difficulty == 1:
        a, b = rng.randint(2, 50 * scale), rng.randint(2, 50 * scale)
        a, b, sign, result = (a, b, "+", a + b) if rng.random() < 0.5 else (max(a, b), min(a, b), "-", abs(a - b))
        return {"question": f"What is {a} {sign} {b}?", "answer": f"{a} {sign} {b} = {result}\n#### {result}"}
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if difficulty == 4:
        boxes, each = rng.randint(2, 5), rng.randint(2, 20 * scale)
        total = boxes * each
        sentences = [f"{name} has {boxes} boxes with {each} {item} in each box."]
        lines = [f"{name} starts with {boxes} x {each} = {total} {item}."]
        steps = 2
    else:
        total = rng.randint(2, 20 * scale)
        sentences, lines, steps = (
            [f"{name} has {total} {item}."],
            [f"{name} starts with {total} {item}."],
            difficulty - 1,
        )
    for _ in range(steps):
        sentence, line, total = _gain_or_loss(rng, name, item, total, scale)
        sentences.append(sentence)
        lines.append(line)
    question = " ".join([*sentences, f"How many {item} does {name} have now?"])
    return {"question": question, "answer": "\n".join([*lines, f"#### {total}"])}


def generate_records(difficulty: int, split: str, size: int | None = None, scale: int = 1) -> list[dict]:
    """The first ``size`` records of a split (all of it by default), always the same ones."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_SIZES)}")
    size = SPLIT_SIZES[split] if size is None else size
    held_out = set() if split == "test" else {r["question"] for r in generate_records(difficulty, "test", scale=scale)}
    rng = random.Random(f"{PREFIX}{difficulty}:{split}" if scale == 1 else f"{PREFIX}{difficulty}:{LARGE}:{split}")
    records, seen = [], set()
    while len(records) < size:
        record = make_record(rng, difficulty, scale)
        if record["question"] not in seen and record["question"] not in held_out:
            seen.add(record["question"])
            records.append(record)
    return records


def task_records(task: Task, split: str) -> list[dict]:
    """A split of ``task``: its difficulties' splits interleaved, one record of each in turn."""
    splits = [generate_records(difficulty, split, scale=task.scale) for difficulty in task.difficulties]
    return [record for records in zip(*splits, strict=True) for record in records]
