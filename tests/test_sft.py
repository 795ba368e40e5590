"""The format warm-up on the embedded model: from no tags at all to the strict format."""

import pytest
import torch

from shared.gsm8k import load_gsm8k
from shared.models import embedded_model_dir
from shared.rewards import match_format_exactly
from trainer.sft import main as sft_main
from trainer.sft import sft_example

pytestmark = pytest.mark.slow


def test_sft_examples_are_prompt_completion_pairs_in_the_tag_format():
    example = sft_example(load_gsm8k("train")[0])
    assert example["prompt"][0]["role"] == "system" and example["prompt"][1]["content"].startswith("Natalia")
    completion = example["completion"][0]["content"]
    assert "<<" not in completion and completion.endswith("<SOLUTION>72</SOLUTION>")
    assert match_format_exactly([completion]) == [3.0]


def greedy_format_rate(adapter_dir, questions) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir(), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.bfloat16)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    prompts = [tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=False) for p in questions]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=200, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(score > 0 for score in match_format_exactly(texts)) / len(texts)


def test_a_few_dozen_warm_up_steps_teach_the_format(tmp_path):
    questions = load_gsm8k("test")[:16]
    assert greedy_format_rate(None, questions) == 0.0  # measured: 0 of 64 greedy, 0 of 256 sampled
    sft_main(
        [
            "--output-dir",
            str(tmp_path / "sft"),
            "--max-steps",
            "40",
            "--per-device-train-batch-size",
            "4",
            "--learning-rate",
            "1e-3",
            "--report-to",
            "none",
        ]
    )
    rate = greedy_format_rate(tmp_path / "sft", questions)
    print(f"\nstrict-format rate after 40 warm-up steps: {rate:.2f}")
    assert rate >= 0.25  # measured 0.53 (17 of 32) with these settings
