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

>>> problem = generate_records(2, "test", 1)[0]
>>> problem["question"].endswith("?") and problem["answer"].split("#### ")[-1].isdigit()
True
>>> generate_records(3, "train", 5) == generate_records(3, "train", 5)  # fixed by its seed
True
"""

import random

PREFIX = "arithmetic:"
DIFFICULTIES = (1, 2, 3, 4)
SPLIT_SIZES = {"train": 2000, "test": 300}
NAMES = ("Lee", "Ana", "Sam", "Mia", "Omar", "Zoe", "Ken", "Ivy", "Raj", "Eva", "Tom", "Lia")
ITEMS = ("coins", "apples", "stickers", "marbles", "books", "pencils", "shells", "cards", "stamps", "cookies")


def parse_difficulty(dataset: str) -> int | None:
    """``"arithmetic:3"`` → 3; any other dataset name → None.

    >>> parse_difficulty("arithmetic:3"), parse_difficulty("gsm8k")
    (3, None)
    """
    if not dataset.startswith(PREFIX):
        return None
    text = dataset.removeprefix(PREFIX)
    if not text.isdigit() or int(text) not in DIFFICULTIES:
        raise ValueError(f"{dataset}: the difficulty must be one of {DIFFICULTIES}")
    return int(text)


def _gain_or_loss(rng: random.Random, name: str, item: str, total: int) -> tuple[str, str, int]:
    """One step on ``total``: (its sentence, its working line, the new total)."""
    if total > 2 and rng.random() < 0.5:
        amount = rng.randint(1, min(total - 1, 20))
        sentence = rng.choice(("{n} gives away {k} {i}.", "{n} loses {k} {i}.", "{n} gives {k} {i} to a friend."))
        return sentence.format(n=name, k=amount, i=item), f"{total} - {amount} = {total - amount}", total - amount
    amount = rng.randint(2, 20)
    sentence = rng.choice(("{n} gets {k} more {i}.", "{n} finds {k} more {i}.", "{n} buys {k} more {i}."))
    return sentence.format(n=name, k=amount, i=item), f"{total} + {amount} = {total + amount}", total + amount


def make_record(rng: random.Random, difficulty: int) -> dict:
    """One question of ``difficulty``, with its worked solution."""
    if difficulty == 1:
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        a, b, sign, result = (a, b, "+", a + b) if rng.random() < 0.5 else (max(a, b), min(a, b), "-", abs(a - b))
        return {"question": f"What is {a} {sign} {b}?", "answer": f"{a} {sign} {b} = {result}\n#### {result}"}
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if difficulty == 4:
        boxes, each = rng.randint(2, 5), rng.randint(2, 20)
        total = boxes * each
        sentences = [f"{name} has {boxes} boxes with {each} {item} in each box."]
        lines = [f"{name} starts with {boxes} x {each} = {total} {item}."]
        steps = 2
    else:
        total = rng.randint(2, 20)
        sentences, lines, steps = (
            [f"{name} has {total} {item}."],
            [f"{name} starts with {total} {item}."],
            difficulty - 1,
        )
    for _ in range(steps):
        sentence, line, total = _gain_or_loss(rng, name, item, total)
        sentences.append(sentence)
        lines.append(line)
    question = " ".join([*sentences, f"How many {item} does {name} have now?"])
    return {"question": question, "answer": "\n".join([*lines, f"#### {total}"])}


def generate_records(difficulty: int, split: str, size: int | None = None) -> list[dict]:
    """The first ``size`` records of a split (all of it by default), always the same ones."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_SIZES)}")
    size = SPLIT_SIZES[split] if size is None else size
    held_out = set() if split == "test" else {r["question"] for r in generate_records(difficulty, "test")}
    rng = random.Random(f"{PREFIX}{difficulty}:{split}")
    records, seen = [], set()
    while len(records) < size:
        record = make_record(rng, difficulty)
        if record["question"] not in seen and record["question"] not in held_out:
            seen.add(record["question"])
            records.append(record)
    return records
