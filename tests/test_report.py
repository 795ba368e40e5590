"""``grpo-math report`` on a hand-written metrics.jsonl: every PNG is written, valid, sized and not blank."""

import json

from PIL import Image, ImageStat

from trainer.report import main as report_main


def test_report_writes_valid_non_blank_pngs(tmp_path, capsys):
    rows = []
    for step in range(1, 13):
        rows.append(
            {
                "step": step,
                "reward": -2 + step * 0.5,
                "rewards/match_format_exactly/mean": 3.0 * (step > 6),
                "rewards/match_format_approximately/mean": -2 + step * 0.3,
                "rewards/check_answer_correctness/mean": 0.0,
                "rewards/check_numbers_extraction/mean": 0.1 * step,
                "format_exact_rate": step / 12,
                "completion_length_mean": 200 - step,
                "completion_length_max": 256,
                "truncated_fraction": 0.5,
                "time/sample_s": 20.0,
                "time/score_s": 0.01,
                "time/train_s": 12.0,
                "time/optimizer_s": 0.01,
                "time/push_s": 0.1,
                "time/step_s": 32.1,
                **({"eval/strict_accuracy": 0.1 * step / 12} if step % 4 == 0 else {}),
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert report_main([str(tmp_path)]) == 0
    names = sorted(path.rsplit("/", 1)[-1] for path in capsys.readouterr().out.split())
    assert names == ["eval.png", "format.png", "length.png", "overview.png", "rewards.png", "timing.png"]
    for name in names:
        with Image.open(tmp_path / "report" / name) as image:
            image.verify()
        with Image.open(tmp_path / "report" / name) as image:
            width, height = image.size
            assert height == 420 and width in (650, 1300)
            assert max(ImageStat.Stat(image.convert("L")).stddev) > 10  # lines and text, not a blank page
