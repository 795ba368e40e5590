"""``grpo-math eval``: test accuracy of the base model and of adapters, with intervals and a chart.

Against a running generator server: ``--base`` evaluates the base model, ``--adapter DIR [DIR ...]``
pushes each PEFT adapter as an evaluation-only version (it never becomes the server's active
adapter, so a training run on the same server is undisturbed) and evaluates it,
``--adapter-version N`` evaluates a version the server has loaded; ``--compare`` adds the base model
to whatever adapters are given, so all are measured on the same questions in one run. Decoding is
greedy unless ``--num-generations k --temperature t`` (then every completion counts, and pass@k /
maj@k are reported). The questions are the first ``--eval-limit`` of ``--dataset``'s ``--split``
(``--shuffle``: a seeded random choice of them). The metrics are described in
``trainer/evaluation.py``.

    grpo-math eval --compare --adapter runs/demo/sft runs/demo/grpo/final --eval-limit 64

Writes ``summary.json``, ``completions.jsonl`` and ``accuracy.png`` to ``--output-dir``.
"""

import json
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from shared.datasets import DATASET_HELP, SYSTEM_PROMPT_HELP, load_problems, require_dataset
from shared.gsm8k import BUNDLED
from shared.prompting import Problem
from shared.protocol import AdapterUpload
from shared.rewards import DEFAULT_REWARD_FUNCS, REWARD_FUNCS_HELP, load_rewards, reward_function_problem
from shared.settings import Check, SettingsError, at_least, check_fields, parse_settings, read_api_key, require, setting
from trainer.evaluation import bar_chart, evaluate, rate_metrics
from trainer.generators import GeneratorError, connect_generator, wait_until_healthy


class EvalError(RuntimeError):
    """The evaluation cannot run; the message names the flag."""


@dataclass(frozen=True)
class EvalSettings:
    server_url: tuple[str, ...] = setting(
        ("http://127.0.0.1:8000",), "generator server; several: each request's questions are split across them"
    )
    generator: Literal["grpo-math", "vllm"] = setting(
        "grpo-math", "grpo-math = grpo-math serve; vllm = vLLM's own server (see grpo-math train --help)"
    )
    vllm_adapter_dir: str | None = setting(None, "--generator vllm: a folder the vLLM server can read")
    api_key_file: str | None = setting(None, "file holding the server's API key; else $GRPO_MATH_API_KEY")
    ca_bundle: str | None = setting(
        None, "HTTPS: the CA certificate(s) that signed the server's (PEM); none = the system's"
    )
    base: bool = setting(False, "evaluate the base model")
    adapter: tuple[str, ...] = setting((), "PEFT adapter folders to push (evaluation-only) and evaluate")
    adapter_version: tuple[int, ...] = setting((), "adapter versions already loaded on the server")
    compare: bool = setting(False, "also evaluate the base model, on the same questions")
    dataset: str = setting(BUNDLED, f"the questions: {DATASET_HELP}")
    split: str = setting("test", "the dataset's split (a single file is one, train: slice it, train[1000:])")
    system_prompt: str | None = setting(None, SYSTEM_PROMPT_HELP)
    eval_limit: int | None = setting(None, "the first N questions (none = all)", check=at_least(1))
    shuffle: bool = setting(False, "take the questions in a random order seeded by --seed (with --eval-limit N)")
    seed: int = setting(0, "for --shuffle")
    num_generations: int = setting(1, "completions per question (pass@k, maj@k)", check=at_least(1))
    temperature: float = setting(0.0, "0 = greedy", check=Check(lambda v: v >= 0, "must be >= 0"))
    max_completion_length: int = setting(512, "most tokens per completion", check=at_least(1))
    output_dir: str | None = setting(None, "none = evals/<model-or-adapter>-<time>")
    reward_funcs: tuple[str, ...] = setting(DEFAULT_REWARD_FUNCS, REWARD_FUNCS_HELP + "; each one's mean is reported")

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self.base or self.compare or bool(self.adapter) or bool(self.adapter_version),
            "base",
            "or --adapter DIR, --adapter-version N or --compare: nothing to evaluate",
        )
        for folder in self.adapter:
            require(AdapterUpload.is_adapter_folder(folder), "adapter", f"{folder}: not a PEFT adapter folder")
        require_dataset("dataset", self.dataset)
        for spec in self.reward_funcs:
            require(reward_function_problem(spec) is None, "reward_funcs", reward_function_problem(spec) or "")
        require(self.num_generations == 1 or self.temperature > 0, "num_generations", "k > 1 needs --temperature > 0")


def load_questions(settings: EvalSettings) -> list[tuple[int, Problem]]:
    """(index in the split, question): the first ``--eval-limit``, or with ``--shuffle`` a seeded
    random choice of that many, in index order."""
    indexed = list(enumerate(load_problems(settings.split, settings.dataset, settings.system_prompt)))
    if settings.shuffle:
        indexed = random.Random(settings.seed).sample(indexed, len(indexed))
    return sorted(indexed[: settings.eval_limit]) if settings.shuffle else indexed[: settings.eval_limit]


def run_eval(settings: EvalSettings) -> Path:
    """Evaluate every model the settings name on the same questions; return the output folder."""
    api_key = read_api_key(settings.api_key_file)
    generator = connect_generator(
        settings.generator,
        settings.server_url,
        settings.vllm_adapter_dir,
        api_key=api_key,
        ca_bundle=settings.ca_bundle,
    )
    try:
        limits = wait_until_healthy(generator, timeout=30).limits
    except GeneratorError as error:
        raise EvalError(f"--server-url {' '.join(settings.server_url)}: {error}") from None
    for name, value, limit in (
        ("num_generations", settings.num_generations, limits.max_n),
        ("max_completion_length", settings.max_completion_length, limits.max_tokens),
    ):
        if value > limit:
            raise SettingsError(name, f"{value} is more than the server allows ({limit})")
    questions = load_questions(settings)
    models: list[tuple[str, int | str | None]] = []  # (name, a loaded version, an adapter folder, or None: base)
    if settings.base or settings.compare:
        models.append(("base", None))
    models += [(folder, folder) for folder in settings.adapter]
    models += [(f"v{version}", version) for version in settings.adapter_version]

    first_name = models[0][0].rstrip("/").replace("/", "_")
    output_dir = Path(settings.output_dir or f"evals/{first_name}-{datetime.now():%Y%m%d-%H%M%S}")
    output_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    with open(output_dir / "completions.jsonl", "w") as completions_file:
        for name, model in models:
            version = model
            if isinstance(model, str):  # an adapter folder: pushed just before it is evaluated
                version = generator.push_adapter(AdapterUpload.from_folder(model, activate=False)).version
            summary, rows = evaluate(
                generator,
                questions,
                version,
                settings.num_generations,
                settings.temperature,
                settings.max_completion_length,
                batch_size=min(32, limits.max_prompts),
                rewards=load_rewards(settings.reward_funcs),
            )
            summaries[name] = {"adapter_version": version, **summary}
            for row in rows:
                completions_file.write(json.dumps({"model": name, **row}) + "\n")
    generator.close()
    (output_dir / "summary.json").write_text(
        json.dumps({"questions": len(questions), "models": summaries}, indent=2) + "\n"
    )
    bar_chart(summaries, output_dir / "accuracy.png", title=f"{Path(settings.dataset).name} {settings.split}")

    metrics = rate_metrics(next(iter(summaries.values())))
    rewards = [key for key in next(iter(summaries.values())) if key.startswith("reward/")]
    print(f"\n{'model':<40} " + " ".join(f"{m:>20}" for m in (*metrics, *rewards)))
    for name, summary in summaries.items():
        cells = [
            f"{summary[m]['value']:6.1%} [{summary[m]['ci95'][0]:4.0%}-{summary[m]['ci95'][1]:4.0%}]" for m in metrics
        ] + [f"{summary[key]:.3f}" for key in rewards]
        print(f"{name[-40:]:<40} " + " ".join(f"{c:>20}" for c in cells))
    print(f"\n{output_dir}: summary.json, completions.jsonl, accuracy.png")
    return output_dir


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(EvalSettings, argv, prog="grpo-math eval", description=__doc__)
    try:
        run_eval(settings)
    except (EvalError, SettingsError, GeneratorError) as error:
        raise SystemExit(f"grpo-math eval: error: {error}") from None
    return 0
