"""Writes this example's dataset: ``train.jsonl`` and ``test.jsonl``, one word to reverse a row.

The words are the distinct lowercase words of 4 to 7 letters in the bundled GSM8K questions
(MIT), shuffled with a fixed seed; the first 100 are the test split, the next 1,000 the train
split, so no test word is trained on. Each row follows TRL's conventions: a conversational
``prompt`` (the task's own system message, then the word) and a ``target`` column, which reaches
the reward functions as ``target=``.

    python examples/reverse_text/make_data.py     # rewrites the two files, the same every time
"""

import json
import random
import re
from pathlib import Path

from shared.gsm8k import load_gsm8k

SYSTEM = "Reverse the letters of the word you are given. Reply with the reversed word only."
TEST_WORDS, TRAIN_WORDS = 100, 1000


def row(word: str) -> dict:
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": word}]
    return {"prompt": prompt, "target": word[::-1]}


def main() -> None:
    text = " ".join(problem.question for problem in load_gsm8k("train"))
    words = sorted(set(re.findall(r"\b[a-z]{4,7}\b", text)))
    random.Random(0).shuffle(words)
    folder = Path(__file__).parent
    for split, chosen in (("test", words[:TEST_WORDS]), ("train", words[TEST_WORDS : TEST_WORDS + TRAIN_WORDS])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row(word)) + "\n" for word in chosen))
        print(f"{split}.jsonl: {len(chosen)} words")


if __name__ == "__main__":
    main()
