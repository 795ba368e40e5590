"""The bench's regression guard (``benchmarks/baseline.py``) on reports written here: a baseline
made from runs, a run inside it, a run that regressed on one figure."""

import json

from benchmarks.baseline import baseline_from, check_against

MACHINE = {"cpu": "test cpu", "cores": 2, "gpu": None}


def report(step_ratio: float, memory_ratio: float, machine=MACHINE) -> dict:
    def figure(name, value, goal):
        return {"scenario": "s", "name": name, "value": value, "min": value * 0.95, "max": value * 1.05,
                "goal": goal, "repetitions": 3}  # fmt: skip

    return {
        "machine": machine,
        "figures": [
            figure("recipe ÷ ours", step_ratio, ">= 3"),
            figure("peak memory ÷ bf16", memory_ratio, "<= 0.45"),
            figure("tok/s at n=8", 120.0, None),
            {
                "scenario": "s",
                "name": "a peer that could not run",
                "value": float("nan"),
                "min": float("nan"),
                "max": float("nan"),
                "goal": ">= 2",
                "repetitions": 0,
            },  # fmt: skip
        ],
    }


def test_a_run_inside_the_baseline_passes_and_one_regressed_figure_fails(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(baseline_from([report(4.0, 0.30), report(4.4, 0.32)])))
    kept = set(json.loads(path.read_text())["figures"])
    assert kept == {"s: recipe ÷ ours", "s: peak memory ÷ bf16", "s: tok/s at n=8"}  # not the peer that failed

    assert check_against(report(4.1, 0.31), path)
    assert check_against(report(9.0, 0.10), path)  # better on both sides: reported, not failed
    assert "better" in capsys.readouterr().out

    assert not check_against(report(2.0, 0.31), path)  # the step-time ratio halved
    out = capsys.readouterr().out
    assert "REGRESSED s: recipe ÷ ours" in out and "ok        s: peak memory" in out

    assert not check_against(report(4.1, 0.60, machine={**MACHINE, "cores": 16}), path)  # memory grew
    assert "another machine" in capsys.readouterr().out


def test_a_baseline_file_from_several_reports_on_the_command_line(tmp_path):
    from benchmarks.baseline import main

    paths = []
    for index, ratio in enumerate((4.0, 4.4)):
        paths.append(tmp_path / f"bench-{index}.json")
        paths[-1].write_text(json.dumps(report(ratio, 0.30)))
    main([*map(str, paths), "--output", str(tmp_path / "baselines" / "cpu.json")])
    baseline = json.loads((tmp_path / "baselines" / "cpu.json").read_text())
    assert baseline["figures"]["s: recipe ÷ ours"]["runs"] == 2
    assert baseline["figures"]["s: recipe ÷ ours"]["min"] == 4.0 * 0.95
    assert baseline["figures"]["s: recipe ÷ ours"]["max"] == 4.4 * 1.05
