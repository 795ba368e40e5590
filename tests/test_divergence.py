"""KL to a reference adapter (``trainer.divergence``), the forgetting measure of ``grpo-math arms``,
on the embedded model with nf4 base and random adapters: zero from itself, exactly; growing with
how far the adapter moved; rows without tokens left out."""

from transformers import AutoTokenizer

from benchmarks.random_adapter import save_random_adapter
from shared.gsm8k import load_gsm8k
from shared.models import embedded_model_dir
from trainer.divergence import kl_per_token


def eval_rows(count: int) -> list[dict]:
    """Rows as ``grpo-math eval`` writes them: a GSM8K question and its worked solution's tokens."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    rows = []
    for problem in load_gsm8k("test")[:count]:
        prompt = tokenizer.apply_chat_template(problem.prompt, add_generation_prompt=True, return_dict=False)
        completion = tokenizer(problem.solution, add_special_tokens=False)["input_ids"][:40]
        rows.append({"prompt_token_ids": prompt, "completion_token_ids": completion})
    return rows + [{"prompt_token_ids": rows[0]["prompt_token_ids"], "completion_token_ids": []}]


def test_kl_is_zero_from_itself_and_grows_with_the_adapters_distance(tmp_path):
    rows = eval_rows(3)
    start = str(save_random_adapter(tmp_path / "start", seed=1, scale=0.02))
    near = str(save_random_adapter(tmp_path / "near", seed=1, scale=0.03))  # B 1.5× the start's
    far = str(save_random_adapter(tmp_path / "far", seed=1, scale=0.2))
    model = str(embedded_model_dir())
    itself = kl_per_token(model, start, start, rows)
    # the same weights under two adapter names: the same computation, so not a rounding error apart
    assert itself == {"kl_per_token": 0.0, "tokens": 120, "completions": 3}
    moved = [kl_per_token(model, adapter, start, rows)["kl_per_token"] for adapter in (near, far)]
    print(f"\nKL per token from the start: near {moved[0]:.2e}, far {moved[1]:.2e}")
    assert 0 < moved[0] < moved[1]
