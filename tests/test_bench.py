"""``grpo-math bench --all --quick``: every scenario runs, bench.json has the promised shape, and
no figure with a goal regressed past the committed baseline (``benchmarks/baselines/cpu.json``,
its spread widened by its tolerance). No timing thresholds of its own: each figure must be a
positive finite ratio, or a peer that cannot run here reported with the error it raised."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

BASELINE = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines" / "cpu.json"

FIGURE_FIELDS = {
    "scenario",
    "name",
    "value",
    "goal",
    "unit",
    "median",
    "min",
    "max",
    "repetitions",
    "note",
    "meets_goal",
}


def test_bench_all_quick_writes_the_json_the_plots_and_finite_ratios(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "grpo_math", "bench", "--all", "--quick", "--output-dir", str(tmp_path),
         "--baseline", str(BASELINE)],
        capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    print(result.stdout[-6000:])  # the table, the seconds and the verdicts against the baseline
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "against " in result.stdout and "REGRESSED" not in result.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report) == {"machine", "settings", "figures", "raw"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["packages"]["vllm"]
    scenarios = {figure["scenario"] for figure in report["figures"]}
    assert scenarios == {"server-overhead", "step-time", "adapter-sync", "trainer-memory", "update", "decode-roofline",
                         "scaling", "lora-overhead", "pool", "async"}  # fmt: skip
    for figure in report["figures"]:
        assert set(figure) == FIGURE_FIELDS, figure
        if figure["repetitions"] == 0 and "not runnable" in figure["note"]:
            continue  # a peer reported with the exact error it raised
        assert math.isfinite(figure["value"]) and figure["value"] > 0, figure
        assert figure["min"] <= figure["median"] <= figure["max"], figure
    for name in (
        "server_overhead",
        "step_time",
        "trainer_memory",
        "update",
        "decode_roofline",
        "scaling",
        "lora_overhead",
        "pool",
        "async",
    ):
        with Image.open(tmp_path / f"{name}.png") as image:
            image.verify()
    assert "figure" in result.stdout and "goal" in result.stdout  # the table


def test_time_to_accuracy_quick_runs_every_peer_from_one_adapter_and_a_second_run_resumes(tmp_path):
    """``--scenario time-to-accuracy --quick``: one seed, 2 steps, 8 questions, for ours and TRL's
    recipe (trl-colocate reported with the error it raises here); run again on the same folder,
    nothing trains or evaluates again: the runs' files are as the first run left them."""
    command = [sys.executable, "-m", "grpo_math", "bench", "--scenario", "time-to-accuracy", "--quick",
               "--peers", "merge", "recipe", "trl-colocate", "--output-dir", str(tmp_path)]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    seed_dir = tmp_path / "time-to-accuracy" / "seed-1"
    kept = [seed_dir / "merge" / "grpo" / "metrics.jsonl", seed_dir / "recipe" / "steps.jsonl",
            seed_dir / "recipe" / "eval" / "summary.json", seed_dir / "eval-sft" / "summary.json"]  # fmt: skip
    before = [path.read_text() for path in kept]
    curves = json.loads((seed_dir.parent / "curves.json").read_text())["1"]
    assert [point["step"] for point in curves["merge"]["points"]] == [1, 2]
    assert [point["step"] for point in curves["recipe"]["points"]] == [1, 2]
    assert curves["merge"]["step_zero"] == curves["recipe"]["step_zero"]  # one SFT adapter, evaluated once
    assert "bitsandbytes" in curves["trl-colocate"]["error"]  # vLLM refuses the 4-bit policy
    names = {figure["name"] for figure in json.loads((tmp_path / "bench.json").read_text())["figures"]}
    assert "training time to SFT + 10 points: recipe ÷ ours" in names

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert [path.read_text() for path in kept] == before
    with Image.open(tmp_path / "time_to_accuracy.png") as image:
        image.verify()
