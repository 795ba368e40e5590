"""The sampling side's scenarios of ``grpo-math bench``: server overhead, the decode roofline,
scaling with n and prompts, the LoRA overhead of ``lora`` and ``merge`` mode, and one server
against a pool of two. Every figure is a ratio of two rates measured in turns in this run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.measure import (
    LORA_SERVER,
    SHARED_SERVER,
    Figure,
    Interleaved,
    ratio_figure,
    sampling_rate,
    value_figure,
)
from benchmarks.random_adapter import save_random_adapter
from grpo_math.local_server import die_with_parent
from shared.gsm8k import load_gsm8k
from shared.models import nf4_dequantized_dir, resolve_model
from shared.protocol import AdapterUpload, GenerateRequest
from trainer.generators import GrpoMathServer, ServerPool


def request(prompts: int, n: int, max_tokens: int, seed: int | None = 1, adapter_version=None) -> GenerateRequest:
    """The first ``prompts`` GSM8K test questions; the base model unless ``adapter_version`` says
    otherwise (the shared server may hold another scenario's adapter as "latest")."""
    questions = [problem.prompt for problem in load_gsm8k("test")[:prompts]]
    return GenerateRequest(
        prompts=questions, n=n, max_tokens=max_tokens, temperature=1.0, seed=seed, adapter_version=adapter_version
    )


def server_overhead(context) -> list[Figure]:
    """``/v1/generate`` against vLLM's offline ``LLM.generate`` on the same model and engine
    settings, in a process of its own; the same prompts, n, max_tokens and seeds."""
    size = context.sizes
    body = request(size["prompts"], size["n"], size["max_tokens"])
    model = str(nf4_dequantized_dir(resolve_model("auto")))
    with open(context.output_dir / "offline_worker.log", "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.offline_worker", "--model", model, "--max-model-len", "2048"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=die_with_parent,  # the offline engine ends with the bench, however it ends
        )

    def answer() -> dict:
        while not (line := worker.stdout.readline()).startswith("@@ "):
            if not line:
                raise RuntimeError(f"the offline worker stopped; see {context.output_dir / 'offline_worker.log'}")
        return json.loads(line[3:])

    try:
        server = GrpoMathServer(context.server(*SHARED_SERVER).url)  # starts while the offline engine does
        assert answer().get("ready")
        prompt_ids = [group.prompt_token_ids for group in server.generate(body).groups]  # also a warm-up

        def offline() -> float:
            worker.stdin.write(
                json.dumps(
                    {
                        "prompt_token_ids": prompt_ids,
                        "n": body.n,
                        "max_tokens": body.max_tokens,
                        "temperature": body.temperature,
                        "seed": body.seed,
                    }
                )
                + "\n"
            )
            worker.stdin.flush()
            result = answer()
            return result["tokens"] / result["seconds"]

        offline()  # warm-up
        rates = Interleaved().run(
            {"server": lambda: sampling_rate(server, body), "offline": offline}, context.repetitions
        )
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    context.raw["server_overhead"] = {"tokens_per_s": rates, "request": body.model_dump(exclude={"prompts"})}
    context.bar_chart("server_overhead", {name: values for name, values in rates.items()}, "completion tokens / s")
    return [ratio_figure("server ÷ offline LLM.generate (tok/s)", rates["server"], rates["offline"], ">= 0.95")]


def memory_bandwidth_gb_s(size_mb: int = 512, repeats: int = 5) -> float:
    """Bytes read + written per second by a large tensor copy on this machine."""
    source = torch.ones(size_mb * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - started) / 1e9


def decode_roofline(context) -> list[Figure]:
    """Single-sequence decode tok/s ÷ the memory-bandwidth bound: each token reads every weight
    once, so the bound is (copy bandwidth) ÷ (bytes of the served weights)."""
    model = Path(nf4_dequantized_dir(resolve_model("auto")))
    weight_bytes = sum(path.stat().st_size for path in model.glob("*.safetensors"))
    body = request(1, 1, context.sizes["decode_tokens"], seed=None)
    body = body.model_copy(update={"temperature": 0.0})
    server = GrpoMathServer(context.server(*SHARED_SERVER).url)
    sampling_rate(server, body)  # warm-up
    measured = Interleaved().run(
        {"decode": lambda: sampling_rate(server, body), "bandwidth": memory_bandwidth_gb_s}, context.repetitions
    )
    bounds = [bandwidth * 1e9 / weight_bytes for bandwidth in measured["bandwidth"]]
    context.raw["decode_roofline"] = {**measured, "weight_bytes": weight_bytes, "bound_tokens_per_s": bounds}
    context.bar_chart("decode_roofline", {"decode": measured["decode"], "bandwidth bound": bounds}, "tokens / s")
    note = (
        f"copy bandwidth {sorted(measured['bandwidth'])[len(bounds) // 2]:.1f} GB/s, "
        f"{weight_bytes / 1e6:.0f} MB of weights read per token"
    )
    return [ratio_figure("decode tok/s ÷ memory-bandwidth bound", measured["decode"], bounds, ">= 0.5", note=note)]


def scaling(context) -> list[Figure]:
    """Generation tok/s as n (one prompt) and the prompts per request (n = 8) grow."""
    size = context.sizes
    points = {f"n={n}": request(1, n, size["max_tokens"]) for n in size["scaling_n"]}
    points.update({f"prompts={p}, n=8": request(p, 8, size["max_tokens"]) for p in size["scaling_prompts"]})
    server = GrpoMathServer(context.server(*SHARED_SERVER).url)
    sampling_rate(server, points["n=1"])  # warm-up
    rates = Interleaved().run(
        {name: (lambda body=body: sampling_rate(server, body)) for name, body in points.items()},
        context.repetitions,
    )
    context.raw["scaling"] = rates
    context.line_chart("scaling", rates, "completion tokens / s")
    largest_n, largest_p = f"n={size['scaling_n'][-1]}", f"prompts={size['scaling_prompts'][-1]}, n=8"
    return [
        ratio_figure(f"tok/s at {largest_n} ÷ n=1", rates[largest_n], rates["n=1"], None),
        ratio_figure(f"tok/s at {largest_p} ÷ prompts=1, n=8", rates[largest_p], rates["prompts=1, n=8"], None),
    ]


def lora_overhead(context) -> list[Figure]:
    """tok/s through an adapter ÷ the base model, same batch: in lora mode (vLLM's LoRA path) and
    in merge mode (the adapter merged into the weights). Both servers up, requests in turns."""
    body = request(context.sizes["prompts"], context.sizes["n"], context.sizes["max_tokens"])
    adapter = AdapterUpload.from_folder(save_random_adapter(context.output_dir / "random-adapter", seed=1))
    lora = GrpoMathServer(context.server(*LORA_SERVER).url)
    merge = GrpoMathServer(context.server(*SHARED_SERVER).url)
    base_rates = {"lora base": lambda: sampling_rate(lora, body.model_copy(update={"adapter_version": None}))}
    lora_version = lora.push_adapter(adapter).version
    reload_ms = [merge.push_adapter(adapter).load_ms for _ in range(max(2, context.repetitions))]
    merged_version = merge.active_version()

    def merge_at(version):
        def measure() -> float:
            merge.generate(request(1, 1, 4, adapter_version=version))  # switch the weights outside the timing
            return sampling_rate(merge, body.model_copy(update={"adapter_version": version}))

        return measure

    rates = Interleaved().run(
        {
            **base_rates,
            "lora adapter": lambda: sampling_rate(lora, body.model_copy(update={"adapter_version": lora_version})),
            "merge base": merge_at(None),
            "merge adapter": merge_at(merged_version),
        },
        context.repetitions,
    )
    context.raw["lora_overhead"] = {"tokens_per_s": rates, "merge_reload_ms": reload_ms}
    context.bar_chart("lora_overhead", rates, "completion tokens / s")
    context.cache["merge_reload_ms"] = reload_ms
    return [
        ratio_figure("lora mode: adapter ÷ base (tok/s)", rates["lora adapter"], rates["lora base"], None),
        ratio_figure("merge mode: adapter ÷ base (tok/s)", rates["merge adapter"], rates["merge base"], ">= 0.95"),
        ratio_figure("merge ÷ lora, through the adapter (tok/s)", rates["merge adapter"], rates["lora adapter"], None),
        value_figure("merge mode: merge + reload", reload_ms, "ms"),
    ]


def pool(context) -> list[Figure]:
    """Sampling throughput of one server on every core ÷ two servers on one core each, behind
    one ``ServerPool``; the same request, whole groups split between the two."""
    body = request(context.sizes["prompts"], context.sizes["n"], context.sizes["max_tokens"])
    cores = sorted(os.sched_getaffinity(0))
    halves = [cores[: len(cores) // 2] or cores, cores[len(cores) // 2 :] or cores]
    first, second = context.servers_side_by_side(
        *((*SHARED_SERVER, "--cpu-threads", ",".join(map(str, half))) for half in halves)
    )
    single = GrpoMathServer(context.server(*SHARED_SERVER).url)
    pair = ServerPool([GrpoMathServer(first.url), GrpoMathServer(second.url)])
    sampling_rate(single, body), sampling_rate(pair, body)  # warm-up
    rates = Interleaved().run(
        {"one server": lambda: sampling_rate(single, body), "two servers": lambda: sampling_rate(pair, body)},
        context.repetitions,
    )
    pair.close()
    context.raw["pool"] = rates
    context.bar_chart("pool", rates, "completion tokens / s")
    note = f"{len(cores)} cores: one server on all of them, or two servers on {len(halves[0])} each"
    return [
        ratio_figure("two servers ÷ one server (tok/s)", rates["two servers"], rates["one server"], None, note=note)
    ]
