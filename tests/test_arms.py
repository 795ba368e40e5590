"""``grpo-math arms``: the verdicts and the table (fast), and the whole matrix in its ``--quick`` size on
the embedded model (slow): every arm trained from the right start, every evaluation written."""

import json

import pytest

from grpo_math.arms import ArmsSettings, main, report, verdicts
from shared.settings import SettingsError


def rate(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci95": [low, high]}


def arm(in_distribution: dict, ood: dict, kl: float | None) -> dict:
    measured = {
        "training_minutes": 12.0,
        "in_distribution": {"strict_accuracy": in_distribution, "lenient_accuracy": in_distribution},
        "ood:arithmetic:3": {"strict_accuracy": ood, "lenient_accuracy": ood},
        "sampled": {"pass@8": rate(0.7, 0.6, 0.78), "entropy_per_token": 0.31},
    }
    return measured | ({"kl_to_start": {"kl_per_token": kl}} if kl is not None else {})


def test_the_goals_need_the_intervals_apart_and_five_points_on_a_seed():
    low, high = rate(0.30, 0.24, 0.37), rate(0.45, 0.38, 0.52)
    seed = {
        "cpu": "a CPU",
        "sft": {"validation_lenient_accuracy": {30: 0.2, 60: 0.3, 90: 0.3}, "converged_step": 60},
        "arms": {
            "sft": arm(low, low, None),
            "sft-grpo": arm(low, high, 0.02),  # out of distribution only: the first goal counts it
            "random-reward": arm(low, low, 0.01),
            "format-only": arm(rate(0.1, 0.06, 0.15), low, 0.01),
        },
    }
    assert verdicts({"1": seed}) == {"grpo_beats_converged_sft": [True], "correctness_beats_controls": [False]}
    settings = ArmsSettings(ood_datasets=("arithmetic:3",), pass_k=8)
    table = report({"1": seed}, settings).splitlines()
    assert table[0] == "Measured on a CPU."
    assert table[5] == (
        "| 1 | sft-grpo | 12.0 | 30.0 [24.0–37.0] | 30.0 [24.0–37.0] | 45.0 [38.0–52.0] | — | 70.0 [60.0–78.0] "
        "| 0.310 | 0.0200 |"
    )
    assert "- seed 1: 30: 20 %, 60: 30 %, 90: 30 %; converged at step 60" in table
    assert "- grpo beats converged sft: met on 1 of 1 seeds" in table
    assert "- correctness beats controls: met on 0 of 1 seeds" in table


def test_bad_settings_are_refused_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SettingsError, match="--sft-short-steps must be a multiple of --sft-save-every"):
        ArmsSettings(sft_short_steps=15)
    with pytest.raises(SettingsError, match="--ood-datasets arithmetic:5: the difficulty"):
        ArmsSettings(ood_datasets=("arithmetic:5",))
    config = tmp_path / "levers.yaml"
    config.write_text("num_iterations: 2\nlearning_rate: 3.0e-4\n")
    with pytest.raises(SettingsError, match="--train-config sets learning_rate, which the arms set themselves"):
        ArmsSettings(train_config=str(config))
    with pytest.raises(SystemExit):
        main(["--arms", "more-sft"])
    assert "--arms: invalid choice: 'more-sft'" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_arms_train_each_arm_from_its_start_and_write_every_measure(tmp_path):
    assert main(["--quick", "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "arms.json").read_text())
    seed = result["seeds"]["1"]
    assert set(seed["arms"]) == {"sft", "sft-grpo", "sft10-grpo", "random-reward", "format-only"}
    assert seed["sft"]["converged_step"] in (2, 4)
    converged = seed["sft"]["converged_step"]
    for name, measured in seed["arms"].items():
        assert set(measured) >= {"in_distribution", "ood:arithmetic:3", "ood:arithmetic:4",
                                 "ood:arithmetic:1-2:large", "transfer", "sampled"}, name  # fmt: skip
        assert measured["sampled"]["entropy_per_token"] >= 0 and measured["training_minutes"] > 0
        if name == "sft":
            assert "kl_to_start" not in measured
            continue
        settings = json.loads((tmp_path / "seed-1" / f"arm-{name}" / "grpo" / "settings.json").read_text())
        start = "checkpoint-2" if name == "sft10-grpo" else ("sft" if converged == 4 else "checkpoint-2")
        assert settings["init_adapter"].endswith(start) and measured["kl_to_start"]["start"].endswith(start)
        assert measured["kl_to_start"]["kl_per_token"] >= 0 and measured["kl_to_start"]["completions"] > 0
        expected = {"random-reward": "shuffled_correctness", "format-only": "[1.0, 1.0, 0.0, 0.0]"}.get(name)
        assert expected is None or expected in json.dumps(settings)
    for name in ("results.md", "arms.png", "settings.json", "seed-1/sft/trainer/checkpoint-2/adapter_config.json"):
        assert (tmp_path / name).is_file(), name
