"""``AdapterSync``, the trainer's one owner of the adapter version, driven through a push, a
producer's publication and the restore after a server restart. The server here is an in-memory
stand-in that applies the real version rule of ``shared.versions`` and forgets its adapters on
``restart()``; ``tests/test_faults.py`` does the same against a real ``grpo-math serve`` killed
and restarted mid-run."""

import time

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from shared.protocol import AdapterLoadResponse, AdapterUpload, GenerateRequest, GenerateResponse
from shared.versions import next_version
from trainer import metrics as names
from trainer.adapter_sync import AdapterSync, GapWatch, SamplerMismatch
from trainer.generators import GeneratorError
from trainer.producer import Batches


class RestartingServer:
    """What ``AdapterSync`` and ``Batches`` use of a generator, in memory."""

    def __init__(self) -> None:
        self.highest, self.loaded, self.pushes, self.sampled = 0, set(), [], []

    def restart(self) -> None:
        self.highest, self.loaded = 0, set()

    def push_adapter(self, upload: AdapterUpload) -> AdapterLoadResponse:
        version = next_version(upload.version, self.highest)
        self.highest = version
        self.loaded.add(version)
        self.pushes.append((version, upload.adapter_sha256))
        return AdapterLoadResponse(version=version, active_version=version, load_ms=1.0)

    def generate(self, request: GenerateRequest) -> GenerateResponse:
        if request.adapter_version is not None and request.adapter_version not in self.loaded:
            raise GeneratorError(f"adapter version {request.adapter_version} is not loaded", status=404)
        self.sampled.append(request.adapter_version)
        return GenerateResponse(adapter_version=request.adapter_version, groups=[])


def tiny_policy():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(LlamaForCausalLM(config), lora)


def sampler(server: RestartingServer):
    def sample(step: int, adapter_version: int | None) -> GenerateResponse:
        return server.generate(GenerateRequest(prompts=[f"question of step {step}"], adapter_version=adapter_version))

    return sample


def test_a_push_records_the_servers_version_and_the_step_and_tells_the_subscribers():
    server, published = RestartingServer(), []
    sync = AdapterSync(server, tiny_policy())
    sync.subscribe(lambda version, policy_step: published.append((version, policy_step)))
    assert (sync.adapter_version, sync.policy_step) == (None, 0)  # the base model, before any push
    pushed = sync.push(policy_step=1)
    assert (pushed.adapter_version, sync.adapter_version, sync.policy_step) == (1, 1, 1)
    assert pushed.adapter_bytes > 0 and pushed.load_ms == 1.0
    sync.push(policy_step=2)
    assert published == [(1, 1), (2, 2)] and [version for version, _ in server.pushes] == [1, 2]


def test_a_restarted_server_gets_the_same_weights_again_before_the_step_samples():
    server = RestartingServer()
    sync = AdapterSync(server, tiny_policy())
    sync.push(policy_step=3)
    batches = Batches(sampler(server), sync, range(4, 6), max_staleness=0)
    server.restart()  # it lost version 1
    batch = batches.take(4)
    assert len(server.pushes) == 2 and server.pushes[0][1] == server.pushes[1][1]  # the same adapter bytes again
    assert (batch.adapter_version, batch.policy_step) == (sync.adapter_version, 3)  # the step that made them
    assert server.sampled == [sync.adapter_version]


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_producer_samples_with_each_published_version_and_a_lost_one_is_restored():
    server = RestartingServer()
    sync = AdapterSync(server, tiny_policy())
    sync.push(policy_step=0)
    batches = Batches(sampler(server), sync, range(1, 5), max_staleness=1)
    try:
        first = batches.take(1)
        assert (first.adapter_version, first.policy_step) == (1, 0)
        wait_until(lambda: batches.producer.batches.qsize() == 1)  # step 2, sampled ahead with version 1
        sync.push(policy_step=1)  # published: later batches sample with version 2
        assert batches.producer.newest == (2, 1)
        server.restart()  # it lost versions 1 and 2
        second = batches.take(2)  # sampled before the restart, one step stale: trained on
        assert (second.adapter_version, sync.policy_step - second.policy_step) == (1, 1)
        third = batches.take(3)  # version 2 got a 404; take() had the trainer push its weights again
        assert (third.adapter_version, third.policy_step) == (sync.adapter_version, 1) == (1, 1)
        assert server.pushes[-1][1] == server.pushes[-2][1]  # version 2's weights, pushed again
    finally:
        batches.close()


def gap_row(step: int, gap: float | None, sampled_with: int, staleness: int = 0) -> dict:
    row = {names.STEP: step, names.SAMPLED_WITH_ADAPTER: sampled_with, names.STALENESS: staleness}
    if gap is not None:
        row[names.SAMPLER_GAP] = gap
    return row


def pushed_once() -> tuple[RestartingServer, AdapterSync]:
    """A server holding version 1, pushed by the sync."""
    server = RestartingServer()
    sync = AdapterSync(server, tiny_policy())
    sync.push(policy_step=1)
    return server, sync


def test_a_gap_above_the_bound_pushes_again_once_and_a_healthy_batch_clears_it():
    server, sync = pushed_once()
    watch = GapWatch(bound=0.2)
    watch.check(gap_row(2, 0.05, sampled_with=1), sync, ("http://a",))
    assert len(server.pushes) == 1 and watch.repushed is None
    watch.check(gap_row(3, 0.9, sampled_with=1), sync, ("http://a",))
    assert len(server.pushes) == 2 and watch.repushed == sync.adapter_version == 2
    watch.check(gap_row(4, 0.9, sampled_with=1), sync, ("http://a",))  # sampled before the push again: wait
    assert len(server.pushes) == 2
    watch.check(gap_row(5, 0.03, sampled_with=2), sync, ("http://a",))
    assert watch.repushed is None


def test_a_gap_that_persists_after_pushing_again_stops_the_run_naming_server_and_version():
    _, sync = pushed_once()
    watch = GapWatch(bound=0.2)
    watch.check(gap_row(2, 0.9, sampled_with=1), sync, ("http://a",))
    with pytest.raises(SamplerMismatch, match=r"version 2 .*http://a"):
        watch.check(gap_row(3, 0.8, sampled_with=2), sync, ("http://a",))


def test_no_bound_or_no_gap_never_pushes():
    server, sync = pushed_once()
    GapWatch(bound=None).check(gap_row(2, 5.0, sampled_with=1), sync, ("http://a",))
    GapWatch(bound=0.2).check(gap_row(2, None, sampled_with=1), sync, ("http://a",))  # a skipped step
    assert len(server.pushes) == 1


def test_a_batch_sampled_before_the_last_update_is_not_judged():
    """--max-staleness: the gap of a stale batch holds the updates made since it was sampled."""
    server, sync = pushed_once()
    watch = GapWatch(bound=0.2)
    for step in (2, 3):
        watch.check(gap_row(step, 0.9, sampled_with=1, staleness=1), sync, ("http://a",))
    assert len(server.pushes) == 1 and watch.repushed is None
