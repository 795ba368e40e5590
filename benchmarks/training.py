"""The training side's scenarios of ``grpo-math bench``: GRPO step time against the peers, the
adapter sync's cost, the 4-bit trainer's memory, and the update on one fixed batch.

Step time: every peer trains the same policy (4-bit nf4 + LoRA r16 q,v, from the same warm-up
adapter) on the same questions in the same order, 2 prompts × 8 completions per step, at each
completion length; each run is a process of its own that trains one warm-up step and then
``--steps`` measured ones; runs of the peers alternate, ``--repetitions`` times. Peers:

- ``recipe``: TRL ``GRPOTrainer`` generating with transformers inside the trainer (the original notebook)
- ``trl-colocate``: TRL ``GRPOTrainer`` with ``use_vllm=True, vllm_mode="colocate"``
- ``trl-async``: TRL's experimental ``AsyncGRPOTrainer`` against ``trl vllm-serve --enable-lora``
- ``lora`` and ``merge``: this project's server (in that adapter mode) and trainer
- ``merge-fp32-head``, ``merge-whole-sequences``, ``merge-no-importance-correction``: ours in merge
  mode with one of its departures from the recipe turned off (``OURS_VARIANTS``)

A peer that cannot run here as it ships is run once and reported with the exact error it raised.
"""

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.measure import LORA_SERVER, SHARED_SERVER, Figure, Interleaved, ratio_figure, value_figure
from grpo_math.local_server import LocalServer, die_with_parent
from shared.models import nf4_dequantized_dir, resolve_model
from shared.settings import write_config
from trainer import metrics as names
from trainer.settings import TrainSettings

GOALS = {"recipe": ">= 3", "trl-colocate": ">= 2", "trl-async": ">= 1.5"}
# Ours in merge mode with one departure from the recipe's computation turned off: the LM head in
# float32 rather than the compute dtype, every sequence run whole rather than its group's prompt once,
# no weighting by π_trainer/π_sampler (TRL generating in the trainer has no sampler to correct for)
OURS_VARIANTS = {
    "merge-fp32-head": dict(lm_head_dtype="float32"),
    "merge-whole-sequences": dict(shared_prompt_forward="off"),
    "merge-no-importance-correction": dict(vllm_importance_sampling_correction=False),
}
# The recipe's goal from this many completion tokens on, longest first: its generation is what
# grows with the length.
RECIPE_GOALS = {1024: ">= 10", 256: ">= 5"}


def goal_of(peer: str, length: int) -> str:
    """The step-time goal against ``peer`` at ``length`` completion tokens.

    >>> goal_of("recipe", 32), goal_of("recipe", 256), goal_of("recipe", 1024), goal_of("trl-async", 1024)
    ('>= 3', '>= 5', '>= 10', '>= 1.5')
    """
    if peer == "recipe":
        return next((goal for tokens, goal in RECIPE_GOALS.items() if length >= tokens), GOALS[peer])
    return GOALS[peer]


def run_process(command: list[str], log_path: Path, timeout: float) -> str:
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=die_with_parent,
        )
    return result.stdout


def json_lines(text: str) -> list[dict]:
    """The ``@@ {json}`` lines a runner printed (libraries print to stdout too)."""
    return [json.loads(line[3:]) for line in text.splitlines() if line.startswith("@@ ")]


def train_metrics(context, settings: TrainSettings, log_name: str, cores: list[int] | None = None) -> list[dict] | None:
    """``grpo-math train --config FILE`` with ``settings`` (written to FILE), into a temporary run
    folder, without trackio or checkpoints (on ``cores`` only, where given); its metrics rows, or
    None where it wrote none (its output is in ``log_name`` under the bench's folder)."""
    with tempfile.TemporaryDirectory() as run_dir:
        settings = replace(settings, output_dir=run_dir, report_to="none", save_every=0)
        config = write_config(settings, Path(run_dir) / "config.json")
        command = [sys.executable, "-m", "grpo_math", "train", "--config", str(config)]
        if cores is not None:
            command = ["taskset", "-c", ",".join(map(str, cores)), *command]
        run_process(command, context.output_dir / log_name, timeout=context.timeout)
        path = Path(run_dir) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else None


def ours(context, url: str, length: int, adapter: str | None, **overrides) -> dict:
    """``grpo-math train`` (the recipe's defaults, but ``overrides``) against ``url`` for an untimed
    first step and the measured ones."""
    settings = TrainSettings(
        server_url=(url,),
        max_steps=1 + context.measured_steps,
        max_completion_length=length,
        server_timeout=120,
        init_adapter=adapter,
        **overrides,
    )
    rows = train_metrics(context, settings, "ours.log")
    if rows is None:
        return {"error": f"grpo-math train wrote no metrics; see {context.output_dir / 'ours.log'}"}
    rows = rows[1:]  # after the untimed first step
    return {
        "steps": [row[names.STEP_SECONDS] for row in rows],
        "split": {
            "sample": [row[names.time_key("sample")] for row in rows],
            "score": [row[names.time_key("score")] for row in rows],
            "train": [row[names.time_key("train")] + row[names.time_key("optimizer")] for row in rows],
            "push": [row[names.time_key("push")] for row in rows],
        },
        "push_bytes": rows[-1][names.PUSH_BYTES],
        "completion_length_mean": statistics.mean(row[names.COMPLETION_LENGTH_MEAN] for row in rows),
        # a group whose completions all score alike is not run through the update: its seconds follow this
        "sequences_trained": [row[names.SEQUENCES_TRAINED] for row in rows],
    }


def trl_recipe(context, mode: str, length: int, adapter: str | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.peers.trl_recipe",
        "--mode",
        mode,
        "--steps",
        str(1 + context.measured_steps),
        "--max-completion-length",
        str(length),
    ]
    if adapter is not None:
        command += ["--init-adapter", adapter]
    lines = json_lines(run_process(command, context.output_dir / f"trl-{mode}.log", timeout=context.timeout))
    if not lines or "error" in lines[-1]:
        return {"error": lines[-1]["error"] if lines else "no output; see the log"}
    steps = lines[1:]
    return {
        "steps": [line["seconds"] for line in steps],
        "split": {
            "sample": [line["generate_s"] for line in steps],
            "score": [line["rewards_s"] for line in steps],
            "train": [line["seconds"] - line["generate_s"] - line["rewards_s"] for line in steps],
        },
    }


def trl_async(context, length: int) -> dict:
    """``AsyncGRPOTrainer`` against ``trl vllm-serve`` with LoRA (adapter-only sync)."""
    model = str(nf4_dequantized_dir(resolve_model("auto")))
    bin_dir = Path(sys.executable).parent
    flags = [
        "--host",
        "127.0.0.1",
        "--max-model-len",
        "2048",
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--max-loras",
        "6",
        "--kv-cache-memory-bytes",
        str(2**30),
    ]
    environment = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    server = LocalServer(
        flags,
        context.output_dir / "trl-vllm-serve.log",
        environment=environment,
        program=[str(bin_dir / "trl"), "vllm-serve", "--model", model],
    )
    with server:
        command = [
            sys.executable,
            "-m",
            "benchmarks.peers.trl_async",
            "--server-url",
            server.url,
            "--model",
            model,
            "--steps",
            str(1 + context.measured_steps),
            "--max-completion-length",
            str(length),
        ]
        lines = json_lines(run_process(command, context.output_dir / "trl-async.log", timeout=context.timeout))
    if not lines or "error" in lines[-1]:
        return {"error": lines[-1]["error"] if lines else "no output; see the log"}
    return {"steps": [line["seconds"] for line in lines[1:]], "split": {}}


def step_time(context) -> list[Figure]:
    """Every peer's step time at each completion length, from each starting policy (``--start-from``:
    the warm-up adapter, or the bare base model)."""
    figures = []
    lora_url = context.server(*LORA_SERVER).url if "lora" in context.peers else ""
    merge_url = context.server(*SHARED_SERVER).url
    for start in context.settings.start_from:
        adapter = context.sft_adapter() if start == "warm-up" else None
        for length in context.max_completion_lengths:
            label = f"{length} tokens" if start == "warm-up" else f"{length} tokens from the base model"
            runs, medians = compare_at_length(context, length, adapter, lora_url, merge_url)
            context.raw.setdefault("step_time", {})[label] = runs
            context.cache.setdefault("ours_runs", []).extend(runs.get("merge", []) + runs.get("lora", []))
            figures += step_figures(label, length, runs, medians)
    context.step_chart(context.raw["step_time"])
    return figures


def compare_at_length(context, length: int, adapter: str | None, lora_url: str, merge_url: str):
    """Every peer's runs at one completion length, in turns: (runs by peer, median step by run)."""
    peers = {
        "recipe": lambda: trl_recipe(context, "transformers", length, adapter),
        "trl-colocate": lambda: trl_recipe(context, "colocate", length, adapter),
        "trl-async": lambda: trl_async(context, length),
        "lora": lambda: ours(context, lora_url, length, adapter),
        "merge": lambda: ours(context, merge_url, length, adapter),
        **{
            name: lambda overrides=overrides: ours(context, merge_url, length, adapter, **overrides)
            for name, overrides in OURS_VARIANTS.items()
        },
    }
    runs: dict[str, list[dict]] = {name: [] for name in context.peers}

    def measured(name):
        def run() -> float | None:
            if runs[name] and "error" in runs[name][-1]:
                return None  # not runnable here: tried once
            runs[name].append(peers[name]())
            result = runs[name][-1]
            return None if "error" in result else statistics.median(result["steps"])

        return run

    medians = Interleaved().run({name: measured(name) for name in context.peers}, context.repetitions)
    return runs, medians


def step_figures(label: str, length: int, runs: dict[str, list[dict]], medians: dict[str, list]) -> list[Figure]:
    """``label``: "256 tokens", with the starting policy where it is not the warm-up."""
    figures = []
    for ours_mode in ("merge", "lora"):
        if ours_mode not in medians or None in medians[ours_mode]:
            continue
        for peer in GOALS:
            if peer not in runs:
                continue
            goal = goal_of(peer, length)
            name = f"step time at {label}: {peer} ÷ ours ({ours_mode})"
            if runs[peer] and "error" in runs[peer][-1]:
                figures.append(
                    Figure(
                        name,
                        float("nan"),
                        goal,
                        "×",
                        float("nan"),
                        float("nan"),
                        float("nan"),
                        0,
                        note=f"not runnable here as it ships: {runs[peer][-1]['error'][:300]}",
                    )
                )
                continue
            figures.append(ratio_figure(name, medians[peer], medians[ours_mode], goal))
    if "merge" in medians and "lora" in medians and None not in medians["merge"] + medians["lora"]:
        figures.append(
            ratio_figure(f"step time at {label}: ours lora ÷ ours merge", medians["lora"], medians["merge"], None)
        )
    for variant in OURS_VARIANTS:
        if "merge" in medians and variant in medians and None not in medians["merge"] + medians[variant]:
            name = f"step time at {label}: ours {variant} ÷ ours merge"
            figures.append(ratio_figure(name, medians[variant], medians["merge"], None))
    for mode in ("merge", "lora"):
        for run in runs.get(mode, []):
            if "error" in run:
                continue
            shares = [push / step for push, step in zip(run["split"]["push"], run["steps"])]
            figures.append(
                value_figure(f"{mode} mode at {label}: push + load ÷ step time", shares, "×", goal="<= 0.02")
            )
            break
    return figures


# ---- adapter sync ---------------------------------------------------------------------------------

QWEN_3B = {"hidden": 2048, "layers": 36, "kv_heads": 2, "head_dim": 128, "parameters": 3_085_938_688}


def lora_bytes(hidden: int, layers: int, kv_heads: int, head_dim: int, rank: int = 16) -> int:
    """fp32 bytes of a LoRA r on q_proj (hidden → hidden) and v_proj (hidden → kv_heads·head_dim).

    >>> lora_bytes(576, 30, 3, 64)  # the embedded model: the pushed safetensors hold these plus a header
    3686400
    """
    per_layer = rank * hidden + hidden * rank + rank * hidden + kv_heads * head_dim * rank
    return 4 * layers * per_layer


def adapter_sync(context) -> list[Figure]:
    """Bytes pushed per step ÷ a full-weight sync, and push + load time ÷ the step time."""
    model = Path(resolve_model("auto"))
    full_bytes = sum(path.stat().st_size for path in model.glob("*.safetensors"))
    runs = [run for run in context.cache.get("ours_runs", []) if "error" not in run]
    if not runs:  # step_time did not run: one short run of our own, merge mode
        url = context.server(*SHARED_SERVER).url
        runs = [ours(context, url, context.max_completion_lengths[0], context.sft_adapter())]
    pushed = runs[0]["push_bytes"]
    shares = [push / step for run in runs for push, step in zip(run["split"]["push"], run["steps"])]
    qwen = lora_bytes(QWEN_3B["hidden"], QWEN_3B["layers"], QWEN_3B["kv_heads"], QWEN_3B["head_dim"])
    context.raw["adapter_sync"] = {
        "pushed_bytes": pushed,
        "full_bytes": full_bytes,
        "push_share_of_step": shares,
        "qwen_lora_bytes": qwen,
        "qwen_full_bytes": QWEN_3B["parameters"] * 2,
    }
    return [
        Figure(
            "bytes pushed per step ÷ full-weight sync (embedded, measured)",
            pushed / full_bytes,
            "<= 0.01",
            "×",
            pushed / full_bytes,
            pushed / full_bytes,
            pushed / full_bytes,
            1,
            note=f"{pushed:,} of {full_bytes:,} bytes",
        ),
        Figure(
            "bytes pushed per step ÷ full-weight sync (Qwen2.5-3B, computed)",
            qwen / (QWEN_3B["parameters"] * 2),
            "<= 0.01",
            "×",
            qwen / (QWEN_3B["parameters"] * 2),
            qwen / (QWEN_3B["parameters"] * 2),
            qwen / (QWEN_3B["parameters"] * 2),
            0,
            note="computed from the config, not measured",
        ),
        value_figure("push + load ÷ step time", shares, "×", goal="<= 0.02"),
    ]


# ---- trainer memory --------------------------------------------------------------------------------


def trainer_memory(context) -> list[Figure]:
    """Peak memory of the 4-bit LoRA trainer ÷ the same trainer on an unquantised base in the compute
    dtype (bf16 on a CPU with native bf16, where the figure got its name; float32 on one without;
    fp16 on GPU), same batch (16 sequences × 400 tokens, micro-batch 2), each in a process of its own."""
    sizes = ["--sequences", str(context.sizes["memory_sequences"]), "--tokens", "400", "--micro-batch", "2"]

    def probe(four_bit: bool):
        def run() -> dict:
            flag = "--load-in-4bit" if four_bit else "--no-load-in-4bit"
            output = run_process(
                [sys.executable, "-m", "benchmarks.memory_probe", flag, *sizes],
                context.output_dir / "memory.log",
                timeout=context.timeout,
            )
            return json_lines(output)[-1]

        return run

    results = Interleaved().run({"nf4": probe(True), "bf16": probe(False)}, context.repetitions)
    key = "peak_gpu_allocated_mb" if results["nf4"][0]["peak_gpu_allocated_mb"] is not None else "peak_rss_mb"
    peaks = {name: [result[key] for result in values] for name, values in results.items()}
    context.raw["trainer_memory"] = results
    context.bar_chart("trainer_memory", peaks, f"{key.replace('_', ' ')}")
    weights = results["nf4"][0]["weights_mb"], results["bf16"][0]["weights_mb"]
    note = (
        f"weights {weights[0]:.0f} MB (nf4) vs {weights[1]:.0f} MB ({results['bf16'][0]['compute_dtype']}: the "
        "compute dtype, float32 on a CPU without native bf16) of a "
        f"{statistics.median(peaks['bf16']):.0f} MB peak: at 135M parameters activations and the LM head's "
        "fp32 logits dominate, not weights"
    )
    return [ratio_figure(f"trainer memory ({key}): nf4 ÷ bf16 base", peaks["nf4"], peaks["bf16"], "<= 0.45", note=note)]


# ---- the update --------------------------------------------------------------------------------------


def update(context) -> list[Figure]:
    """The update (forward + backward of a step's micro-batches) on one batch the merge-mode server
    sampled, in a process of its own, variant by variant (``benchmarks/update_probe.py``): each
    variant's seconds ÷ the trainer before them, the sampler–trainer gap of each, and the model
    FLOP/s the update reaches ÷ the bf16 matmul FLOP/s measured in the same process."""
    sizes = context.sizes
    command = [
        sys.executable,
        "-m",
        "benchmarks.update_probe",
        "--server-url",
        context.server(*SHARED_SERVER).url,
        "--sequences",
        str(sizes["update_sequences"]),
        "--completion-tokens",
        str(sizes["update_completion_tokens"]),
        "--repetitions",
        str(context.repetitions),
    ]
    lines = json_lines(run_process(command, context.output_dir / "update.log", timeout=context.timeout))
    if not lines:
        raise RuntimeError(f"the update probe printed nothing; see {context.output_dir / 'update.log'}")
    result = lines[-1]
    context.raw["update"] = result
    seconds = result["seconds"]
    context.bar_chart("update", seconds, "seconds per update")
    batch = (
        f"{sizes['update_sequences']} sampled sequences, {result['tokens']:,} tokens, padding "
        f"{result['padding_share']:.1%} of the micro-batches' tokens"
    )
    before = seconds["per-micro-batch"]
    figures = [
        ratio_figure(f"update seconds, same batch: {name} ÷ per-micro-batch", values, before, "<= 0.6", note=batch)
        for name, values in seconds.items()
        if name != "per-micro-batch"
    ]
    figures += [
        value_figure(f"sampler–trainer gap, nats per token: {name}", [gap], "nats")
        for name, gap in result["sampler_gap"].items()
    ]
    by_dtype = result["matmul_flops_per_second_by_dtype"]
    rates = ", ".join(f"{name} {value / 1e9:.1f} GFLOP/s" for name, value in by_dtype.items())
    figures.append(
        value_figure(
            "matmul FLOP/s (512 × 512): the compute dtype ÷ the fastest of it, bf16 and float32",
            [by_dtype[result["compute_dtype"]] / max(by_dtype.values())],
            "×",
            goal=">= 0.5",
            note=f"compute dtype {result['compute_dtype']} (shared.models.cpu_compute_dtype on CPU); {rates}",
        )
    )
    rate = result["matmul_flops_per_second"] / 1e9
    matmul = f"matmul {rate:.0f} GFLOP/s in the compute dtype, {result['threads']} threads"
    for name in ("per-micro-batch", "head gradient in the forward", "shared prompt forward"):
        flops = result["update_flops"][name]
        utilisation = [flops / value / result["matmul_flops_per_second"] for value in seconds[name]]
        figures.append(value_figure(f"update model FLOP/s ÷ matmul FLOP/s: {name}", utilisation, "×", note=matmul))
    return figures
