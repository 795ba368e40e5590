"""``grpo-math eval``: GSM8K test accuracy of the base model and of adapters, with intervals and a chart.

Against a running generator server: ``--base`` evaluates the base model, ``--adapter DIR [DIR ...]``
pushes each PEFT adapter under a fresh version and evaluates it, ``--adapter-version N`` evaluates a version the
server has loaded; ``--compare`` adds the base model to whatever adapters are given, so all are
measured on the same questions in one run. Decoding is greedy unless ``--samples k --temperature t``
(then every sample counts, and pass@k / maj@k are reported).

Metrics per model: strict format rate (the shared strict pattern), strict accuracy (format matched
and the ``<SOLUTION>`` text equals the answer once spaces, ``$``, commas and a trailing ``.`` are
stripped), lenient accuracy (the last number anywhere equals the answer), each reward's mean,
completion length and truncation rate; rates with 95 % Wilson intervals.

    grpo-math eval --compare --adapter runs/demo/warmup runs/demo/grpo/final --limit 64

Writes ``summary.json``, ``completions.jsonl`` and ``accuracy.png`` to ``--output-dir``.
"""

import argparse
import json
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from shared.flags import add_flags, settings_from_args
from shared.gsm8k import MathProblem, load_gsm8k
from shared.protocol import AdapterUpload, GenerateRequest
from shared.rewards import REWARD_FUNCTIONS, STRICT_FORMAT, score_completions
from trainer.client import GeneratorClient, ServerError

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
RATE_METRICS = ("strict_format_rate", "strict_accuracy", "lenient_accuracy", "truncation_rate")


def normalise_answer_text(text: str) -> str:
    """Spaces, ``$`` and commas removed, a trailing ``.`` dropped.

    >>> normalise_answer_text(" $1,080. ")
    '1080'
    """
    return text.strip().replace(" ", "").replace("$", "").replace(",", "").removesuffix(".")


def strict_answer(text: str) -> str | None:
    """The ``<SOLUTION>`` text when the whole strict format matches, normalised.

    >>> strict_answer("<start_working_out>2+2<end_working_out><SOLUTION> $4. </SOLUTION>")
    '4'
    >>> strict_answer("<SOLUTION>4</SOLUTION>") is None
    True
    """
    match = STRICT_FORMAT.search(text)
    return None if match is None else normalise_answer_text(match.group(1))


def last_number(text: str) -> str | None:
    """The last number anywhere in the text, normalised.

    >>> last_number("so 3 + 4 = 7, and the total is $1,080.")
    '1080'
    >>> last_number("no digits") is None
    True
    """
    numbers = NUMBER.findall(text)
    return normalise_answer_text(numbers[-1]) if numbers else None


def same_number(guess: str | None, answer: str) -> bool:
    """Equal as numbers.

    >>> same_number("72.0", "72"), same_number("7x2", "72"), same_number(None, "72")
    (True, False, False)
    """
    try:
        return guess is not None and float(guess) == float(answer)
    except ValueError:
        return False


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a rate.

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if total == 0:
        return (0.0, 1.0)
    rate = successes / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def verdicts(problem: MathProblem, text: str, token_count: int, finish_reason: str) -> dict:
    strict = strict_answer(text)
    lenient = last_number(text)
    return {
        "strict_format": strict is not None,
        "strict_correct": strict is not None and strict == normalise_answer_text(problem.answer),
        "lenient_correct": same_number(lenient, problem.answer),
        "strict_answer": strict,
        "last_number": lenient,
        "tokens": token_count,
        "truncated": finish_reason == "length",
    }


def summarise(rows: list[dict], samples: int) -> dict:
    """Rates with Wilson intervals, reward means, lengths; pass@k and maj@k when sampling."""
    total = len(rows)
    counts = {
        "strict_format_rate": sum(r["strict_format"] for r in rows),
        "strict_accuracy": sum(r["strict_correct"] for r in rows),
        "lenient_accuracy": sum(r["lenient_correct"] for r in rows),
        "truncation_rate": sum(r["truncated"] for r in rows),
    }
    summary = {"completions": total}
    for name, count in counts.items():
        low, high = wilson_interval(count, total)
        summary[name] = {"value": count / total, "successes": count, "ci95": [low, high]}
    for reward in REWARD_FUNCTIONS:
        summary[f"reward/{reward.name}"] = sum(r["rewards"][reward.name] for r in rows) / total
    summary["completion_length_mean"] = sum(r["tokens"] for r in rows) / total
    if samples > 1:
        by_question: dict[int, list[dict]] = {}
        for row in rows:
            by_question.setdefault(row["question_index"], []).append(row)
        questions = len(by_question)
        passed = sum(any(r["strict_correct"] for r in group) for group in by_question.values())
        majority = 0
        for group in by_question.values():
            answers = Counter(r["strict_answer"] for r in group if r["strict_answer"] is not None)
            majority += bool(answers) and answers.most_common(1)[0][0] == normalise_answer_text(group[0]["gold"])
        summary[f"pass@{samples}"] = {"value": passed / questions, "successes": passed, "ci95": list(wilson_interval(passed, questions))}
        summary[f"maj@{samples}"] = {"value": majority / questions, "successes": majority, "ci95": list(wilson_interval(majority, questions))}
    return summary


def evaluate(
    client: GeneratorClient, problems: list[tuple[int, MathProblem]], adapter_version: int | None,
    samples: int = 1, temperature: float = 0.0, max_tokens: int = 512, batch_size: int = 32, progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Sample every question ``samples`` times with one adapter version; return (summary, rows)."""
    rows = []
    batches = [problems[start : start + batch_size] for start in range(0, len(problems), batch_size)]
    for batch in tqdm(batches, desc=f"eval {'base' if adapter_version is None else f'v{adapter_version}'}", disable=not progress):
        reply = client.generate(GenerateRequest(
            prompts=[problem.prompt for _, problem in batch], n=samples, max_tokens=max_tokens,
            temperature=temperature, adapter_version=adapter_version,
        ))
        texts = [c.text for group in reply.groups for c in group.completions]
        answers = [problem.answer for _, problem in batch for _ in range(samples)]
        scores = score_completions(None, texts, answers).per_function
        for position, ((index, problem), group) in enumerate(zip(batch, reply.groups)):
            for sample, completion in enumerate(group.completions):
                flat = position * samples + sample
                rows.append({
                    "question_index": index, "question": problem.question, "gold": problem.answer,
                    "completion": completion.text,
                    **verdicts(problem, completion.text, len(completion.token_ids), completion.finish_reason),
                    "rewards": {name: values[flat] for name, values in scores.items()},
                })
    return summarise(rows, samples), rows


@dataclass(frozen=True)
class EvalSettings:
    server_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "generator server (its API key from GRPO_MATH_API_KEY)"})
    base: bool = field(default=False, metadata={"help": "evaluate the base model"})
    adapter: tuple[str, ...] = field(default=(), metadata={"help": "PEFT adapter folders to push and evaluate"})
    adapter_version: tuple[int, ...] = field(default=(), metadata={"help": "adapter versions already loaded on the server"})
    compare: bool = field(default=False, metadata={"help": "also evaluate the base model, on the same questions"})
    data: str = field(default="test", metadata={"help": "test or train (bundled GSM8K), or a JSONL file in GSM8K's format"})
    limit: int | None = field(default=None, metadata={"help": "the first N questions"})
    sample: int | None = field(default=None, metadata={"help": "N random questions (with --seed) instead of the first ones"})
    seed: int = field(default=0, metadata={"help": "for --sample"})
    samples: int = field(default=1, metadata={"help": "completions per question (pass@k, maj@k)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    max_tokens: int = field(default=512, metadata={"help": "completion tokens"})
    output_dir: str | None = field(default=None, metadata={"help": "none = evals/<model-or-adapter>-<time>"})


def load_questions(settings: EvalSettings) -> list[tuple[int, MathProblem]]:
    problems = load_gsm8k(settings.data) if settings.data in ("test", "train") else load_gsm8k(source=settings.data)
    indexed = list(enumerate(problems))
    if settings.sample is not None:
        indexed = sorted(random.Random(settings.seed).sample(indexed, min(settings.sample, len(indexed))))
    if settings.limit is not None:
        indexed = indexed[: settings.limit]
    return indexed


def bar_chart(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(summaries)
    for offset, (name, summary) in enumerate(summaries.items()):
        values = [summary[m]["value"] for m in RATE_METRICS]
        errors = [[v - summary[m]["ci95"][0] for v, m in zip(values, RATE_METRICS)],
                  [summary[m]["ci95"][1] - v for v, m in zip(values, RATE_METRICS)]]
        axis.bar([i + offset * width for i in range(len(RATE_METRICS))], values, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([i + width * (len(summaries) - 1) / 2 for i in range(len(RATE_METRICS))], RATE_METRICS, fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_title("GSM8K (95 % Wilson intervals)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo-math eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, EvalSettings)
    settings = settings_from_args(EvalSettings, parser.parse_args(argv))
    if not (settings.base or settings.compare or settings.adapter or settings.adapter_version):
        parser.error("nothing to evaluate: give --base, --adapter DIR, --adapter-version N or --compare")
    for folder in settings.adapter:
        if not (Path(folder) / "adapter_config.json").is_file():
            parser.error(f"--adapter {folder}: no adapter_config.json there (not a PEFT adapter)")
    if settings.samples < 1 or (settings.samples > 1 and settings.temperature == 0):
        parser.error("--samples k > 1 needs --temperature > 0")

    client = GeneratorClient(settings.server_url, api_key=os.environ.get("GRPO_MATH_API_KEY"))
    try:
        client.wait_until_healthy(timeout=30)
    except ServerError as error:
        raise SystemExit(f"grpo-math eval: error: --server-url: {error}") from None
    questions = load_questions(settings)
    models: dict[str, int | None] = {}
    if settings.base or settings.compare:
        models["base"] = None
    for folder in settings.adapter:
        version = (client.active_version() or 0) + 1  # a fresh version: never a stale cached one
        client.push_adapter(AdapterUpload(
            version=version, adapter_config=(Path(folder) / "adapter_config.json").read_text(),
            adapter_model=(Path(folder) / "adapter_model.safetensors").read_bytes(),
        ))
        models[folder] = version
    for version in settings.adapter_version:
        models[f"v{version}"] = version

    first_name = next(iter(models)).rstrip("/").replace("/", "_")
    output_dir = Path(settings.output_dir or f"evals/{first_name}-{datetime.now():%Y%m%d-%H%M%S}")
    output_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    with open(output_dir / "completions.jsonl", "w") as completions_file:
        for name, version in models.items():
            summary, rows = evaluate(client, questions, version, settings.samples, settings.temperature, settings.max_tokens)
            summaries[name] = {"adapter_version": version, **summary}
            for row in rows:
                completions_file.write(json.dumps({"model": name, **row}) + "\n")
    (output_dir / "summary.json").write_text(json.dumps({"questions": len(questions), "models": summaries}, indent=2) + "\n")
    bar_chart(summaries, output_dir / "accuracy.png")

    print(f"\n{'model':<40} " + " ".join(f"{m:>20}" for m in RATE_METRICS))
    for name, summary in summaries.items():
        cells = [f"{summary[m]['value']:6.1%} [{summary[m]['ci95'][0]:4.0%}-{summary[m]['ci95'][1]:4.0%}]" for m in RATE_METRICS]
        print(f"{name[-40:]:<40} " + " ".join(f"{c:>20}" for c in cells))
    print(f"\n{output_dir}: summary.json, completions.jsonl, accuracy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
