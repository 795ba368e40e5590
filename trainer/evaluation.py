"""GSM8K evaluation as a library: verdicts on one completion, summaries with Wilson intervals,
sampling a set of questions from a generator with one adapter version, and the bar chart.
``grpo-math eval`` (``trainer/evaluate.py``) and the trainer's periodic evaluation use it.

Metrics per model: strict format rate (the shared strict pattern), strict accuracy (format matched
and the ``<SOLUTION>`` text equals the answer once spaces, ``$``, commas and a trailing ``.`` are
stripped), lenient accuracy (the last number anywhere equals the answer), each reward's mean,
completion length and truncation rate; rates with 95 % Wilson intervals; pass@k and maj@k when
each question is sampled k times (``num_generations`` = k); when sampled (temperature > 0), the
sampled tokens' mean −log π, an unbiased estimate of the per-token entropy of the distribution
sampled from (the policy's own at temperature 1).
"""

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from shared.prompting import Problem
from shared.protocol import GenerateRequest, GenerateResponse
from shared.rewards import REWARD_FUNCTIONS, STRICT_FORMAT, RewardScores, WeightedReward, score_completions
from trainer.generators import Generator, GeneratorError

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
    >>> wilson_interval(100, 100)[1], wilson_interval(0, 100)[0]  # exact at the ends, not 1 − 1e-16
    (1.0, 0.0)
    """
    if total == 0:
        return (0.0, 1.0)
    rate = successes / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return (low, high)


def percent(metric: dict, unit: str = "") -> str:
    """A rate with its 95 % interval, in percent, for the results tables.

    >>> percent({"value": 0.25, "ci95": [0.2, 0.31]}), percent({"value": 0.25, "ci95": [0.2, 0.31]}, " %")
    ('25.0 [20.0–31.0]', '25.0 % [20.0–31.0]')
    """
    low, high = metric["ci95"]
    return f"{100 * metric['value']:.1f}{unit} [{100 * low:.1f}–{100 * high:.1f}]"


def strictly_correct(text: str, answer: str) -> bool:
    """The strict format, with the right answer in ``<SOLUTION>`` (strict accuracy's rule).

    >>> strictly_correct("<start_working_out>7<end_working_out><SOLUTION> 1,080 </SOLUTION>", "1080")
    True
    """
    strict = strict_answer(text)
    return strict is not None and strict == normalise_answer_text(answer)


def verdicts(problem: Problem, text: str, token_count: int, finish_reason: str) -> dict:
    """The maths verdicts where the problem has an ``answer`` (None each where it has not), the
    length and whether the completion was cut off."""
    lengths = {"tokens": token_count, "truncated": finish_reason == "length"}
    if problem.answer is None:
        return (
            dict.fromkeys(("strict_format", "strict_correct", "lenient_correct", "strict_answer", "last_number"))
            | lengths
        )
    strict = strict_answer(text)
    lenient = last_number(text)
    return {
        "strict_format": strict is not None,
        "strict_correct": strict is not None and strict == normalise_answer_text(problem.answer),
        "lenient_correct": same_number(lenient, problem.answer),
        "strict_answer": strict,
        "last_number": lenient,
        **lengths,
    }


def rate_metrics(summary: dict) -> list[str]:
    """The ``RATE_METRICS`` a summary has: the maths rates only where the questions have answers."""
    return [name for name in RATE_METRICS if name in summary]


def summarise(rows: list[dict], num_generations: int, temperature: float = 0.0) -> dict:
    """Rates with Wilson intervals, reward means, lengths; pass@k and maj@k when sampling k per
    question; the entropy per token when sampled (``temperature`` > 0)."""
    total = len(rows)
    answered = all(r["strict_correct"] is not None for r in rows)  # a task without answers: rewards only
    counts = {
        "strict_format_rate": sum(r["strict_format"] for r in rows) if answered else None,
        "strict_accuracy": sum(r["strict_correct"] for r in rows) if answered else None,
        "lenient_accuracy": sum(r["lenient_correct"] for r in rows) if answered else None,
        "truncation_rate": sum(r["truncated"] for r in rows),
    }
    counts = {name: count for name, count in counts.items() if count is not None}
    summary = {"completions": total}
    for name, count in counts.items():
        low, high = wilson_interval(count, total)
        summary[name] = {"value": count / total, "successes": count, "ci95": [low, high]}
    for name in rows[0]["rewards"]:  # each reward's mean over the completions it applied to (NaN: None)
        applied = [r["rewards"][name] for r in rows if not math.isnan(r["rewards"][name])]
        if applied:
            summary[f"reward/{name}"] = sum(applied) / len(applied)
    summary["completion_length_mean"] = sum(r["tokens"] for r in rows) / total
    if temperature > 0:  # the sampled tokens' mean −log π estimates the entropy of what they came from
        summary["entropy_per_token"] = -sum(r["logprob_sum"] for r in rows) / max(1, sum(r["tokens"] for r in rows))
    if num_generations > 1 and answered:
        by_question: dict[int, list[dict]] = {}
        for row in rows:
            by_question.setdefault(row["question_index"], []).append(row)
        questions = len(by_question)
        passed = sum(any(r["strict_correct"] for r in group) for group in by_question.values())
        majority = 0
        for group in by_question.values():
            answers = Counter(r["strict_answer"] for r in group if r["strict_answer"] is not None)
            majority += bool(answers) and answers.most_common(1)[0][0] == normalise_answer_text(group[0]["gold"])
        summary[f"pass@{num_generations}"] = {
            "value": passed / questions,
            "successes": passed,
            "ci95": list(wilson_interval(passed, questions)),
        }
        summary[f"maj@{num_generations}"] = {
            "value": majority / questions,
            "successes": majority,
            "ci95": list(wilson_interval(majority, questions)),
        }
    return summary


def score_reply(problems: list[Problem], reply: GenerateResponse, rewards: Sequence[WeightedReward]) -> RewardScores:
    """Every reward on every completion of ``reply`` (one group per problem), called as TRL calls
    reward functions (``shared.rewards.score_completions``): each dataset column one keyword
    argument, repeated for each completion of its question. The prompts are chat messages, so each
    completion comes in TRL's conversational form, ``[{"role": "assistant", "content": ...}]``."""
    sizes = [len(group.completions) for group in reply.groups]
    completions = [completion for group in reply.groups for completion in group.completions]

    def repeated(values: list) -> list:  # one entry per completion
        return [value for value, size in zip(values, sizes, strict=True) for _ in range(size)]

    return score_completions(
        prompts=repeated([problem.prompt for problem in problems]),
        completions=[[{"role": "assistant", "content": completion.text}] for completion in completions],
        rewards=rewards,
        completion_ids=[completion.token_ids for completion in completions],
        **{column: repeated([problem.columns[column] for problem in problems]) for column in problems[0].columns},
    )


def evaluate(
    generator: Generator,
    problems: list[tuple[int, Problem]],
    adapter_version: int | None,
    num_generations: int = 1,
    temperature: float = 0.0,
    max_completion_length: int = 512,
    batch_size: int = 32,
    progress: bool = True,
    rewards: tuple[WeightedReward, ...] = REWARD_FUNCTIONS,
) -> tuple[dict, list[dict]]:
    """Sample every question ``num_generations`` times with one adapter version (None: the base
    model); return (summary, one row per completion), ``rewards`` scored on each. A reply from
    another version is an error."""
    rows = []
    batches = [problems[start : start + batch_size] for start in range(0, len(problems), batch_size)]
    for batch in tqdm(
        batches, desc=f"eval {'base' if adapter_version is None else f'v{adapter_version}'}", disable=not progress
    ):
        reply = generator.generate(
            GenerateRequest(
                prompts=[problem.prompt for _, problem in batch],
                n=num_generations,
                max_tokens=max_completion_length,
                temperature=temperature,
                adapter_version=adapter_version,
            )
        )
        if reply.adapter_version != adapter_version:
            raise GeneratorError(f"asked for adapter version {adapter_version}, got {reply.adapter_version}")
        scores = score_reply([problem for _, problem in batch], reply, rewards).per_function
        for position, ((index, problem), group) in enumerate(zip(batch, reply.groups)):
            for sample, completion in enumerate(group.completions):
                flat = position * num_generations + sample
                rows.append(
                    {
                        "question_index": index,
                        "question": problem.question,
                        "gold": problem.answer,
                        "completion": completion.text,
                        **verdicts(problem, completion.text, len(completion.token_ids), completion.finish_reason),
                        "rewards": {name: values[flat] for name, values in scores.items()},
                        "prompt_token_ids": group.prompt_token_ids,
                        "completion_token_ids": completion.token_ids,
                        "logprob_sum": sum(completion.logprobs),  # the sampler's log π of the completion
                    }
                )
    return summarise(rows, num_generations, temperature), rows


def bar_chart(summaries: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(summaries)
    for offset, (name, summary) in enumerate(summaries.items()):
        metrics = rate_metrics(summary)
        values = [summary[m]["value"] for m in metrics]
        errors = [
            [v - summary[m]["ci95"][0] for v, m in zip(values, metrics)],
            [summary[m]["ci95"][1] - v for v, m in zip(values, metrics)],
        ]
        axis.bar([i + offset * width for i in range(len(metrics))], values, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([i + width * (len(summaries) - 1) / 2 for i in range(len(metrics))], metrics, fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_title(f"{title} (95 % Wilson intervals)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
