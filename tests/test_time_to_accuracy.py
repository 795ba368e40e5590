"""The time-to-accuracy scenario's arithmetic on hand-made curves (``benchmarks/time_to_accuracy.py``):
the accuracy difference at the last step, the training time to the SFT adapter's accuracy + 10
points, and what is said where a peer never reaches it or could not run."""

import json

import pytest

from benchmarks.time_to_accuracy import earlier_seeds, figures, reached, tables


def point(step: int, minutes: float, strict: float, lenient: float | None = None) -> dict:
    def rate(value):
        return {"value": value, "successes": round(200 * value), "ci95": [max(0.0, value - 0.05), value + 0.05]}

    lenient = strict if lenient is None else lenient
    return {"step": step, "seconds": 60 * minutes, "strict_accuracy": rate(strict),
            "lenient_accuracy": rate(lenient), "strict_format_rate": rate(0.9)}  # fmt: skip


def curve(points: list[dict], step_seconds: float) -> dict:
    return {"step_zero": point(0, 0, 0.25), "points": points, "step_seconds": [step_seconds] * 40,
            "sampled_strict_accuracy": [0.1] * 20 + [0.3] * 20}  # fmt: skip


CURVES = {
    "1": {  # SFT 25 %: the target is 35 %; ours reaches it at 10 min, the recipe at 150 min
        "sft": point(0, 0, 0.25),
        "merge": curve([point(20, 10, 0.36), point(40, 20, 0.41, lenient=0.5)], 30.0),
        "recipe": curve([point(20, 50, 0.30), point(40, 150, 0.40, lenient=0.45)], 225.0),
        "trl-colocate": {"error": "ValidationError: Unknown quantization method: bitsandbytes"},
    },
    "2": {  # ours reaches it at 20 min, the recipe never
        "sft": point(0, 0, 0.25),
        "merge": curve([point(20, 10, 0.30), point(40, 20, 0.37)], 30.0),
        "recipe": curve([point(20, 50, 0.28), point(40, 150, 0.33)], 225.0),
        "trl-colocate": {"error": "ValidationError: Unknown quantization method: bitsandbytes"},
    },
}


def test_the_figures_against_the_recipe_and_a_peer_that_could_not_run():
    by_name = {figure.name: figure for figure in figures(CURVES, ["merge", "recipe", "trl-colocate"], steps=40)}
    strict = by_name["held-out strict accuracy at step 40: ours − recipe"]
    assert (strict.value, strict.min, strict.max, strict.goal) == (pytest.approx(2.5), pytest.approx(1.0),
                                                                   pytest.approx(4.0), ">= -3")  # fmt: skip
    assert by_name["held-out lenient accuracy at step 40: ours − recipe"].value == pytest.approx(4.5)
    time = by_name["training time to SFT + 10 points: recipe ÷ ours"]
    assert (time.value, time.repetitions, time.goal) == (pytest.approx(15.0), 1, ">= 5")  # seed 1 only: 150 ÷ 10
    assert "seed 2: recipe never reached SFT + 10 points" in time.note
    assert by_name["seconds per training step: recipe ÷ ours"].value == pytest.approx(7.5)
    colocate = by_name["training time to SFT + 10 points: trl-colocate ÷ ours"]
    assert colocate.repetitions == 0 and "bitsandbytes" in colocate.note


def test_reached_takes_the_first_evaluation_at_the_target_and_the_tables_name_every_point():
    assert reached(CURVES["1"]["merge"], 0.35) == 600.0 and reached(CURVES["2"]["recipe"], 0.35) is None
    text = tables(CURVES, steps=40)
    assert "| 1 | recipe | 40 | 150.0 | 40.0 [35.0–45.0] |" in text
    assert "| 2 | trl-colocate | — | — | failed: ValidationError" in text
    assert "| 1 | merge | 10 | 10.0 % | 30.0 % |" in text  # the sampled right answers, first and last 10 steps
    short = {"1": {**CURVES["1"], "merge": {**CURVES["1"]["merge"], "sampled_strict_accuracy": [0.1] * 6 + [0.3] * 3}}}
    assert "| 1 | merge | 3 | 10.0 % | 30.0 % |" in tables(short, steps=40)  # 9 steps: a third each


def test_seeds_from_an_earlier_sitting_are_kept_and_each_names_its_cpu(tmp_path):
    """Seeds are run a sitting at a time: curves.json keeps the seeds not run now, the one run now
    replaces its own entry, and a seed whose sitting ran fewer peers leaves those peers' figures to
    the seeds that ran them."""
    curves_file = tmp_path / "curves.json"
    earlier = {"1": {"cpu": "AMD EPYC", **{k: v for k, v in CURVES["1"].items() if k != "trl-colocate"}},
               "2": CURVES["2"]}  # fmt: skip
    curves_file.write_text(json.dumps(earlier))
    assert earlier_seeds(curves_file, seeds=(2,)) == {"1": earlier["1"]}
    assert earlier_seeds(tmp_path / "absent.json", seeds=(1,)) == {}
    curves = {**earlier_seeds(curves_file, seeds=(2,)), "2": {"cpu": "Intel Xeon", **CURVES["2"]}}
    text = tables(curves, steps=40)
    assert text.startswith("Measured on seed 1: AMD EPYC, seed 2: Intel Xeon.")
    assert "| 1 | cpu |" not in text
    by_name = {figure.name: figure for figure in figures(curves, ["merge", "recipe", "trl-colocate"], steps=40)}
    assert by_name["held-out strict accuracy at step 40: ours − recipe"].repetitions == 2
    assert "bitsandbytes" in by_name["training time to SFT + 10 points: trl-colocate ÷ ours"].note  # seed 2's
