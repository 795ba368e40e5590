"""A bounded soak of the generator server on loopback: client threads sending generate requests
while adapters are pushed (training-style, and evaluation-only ones) for a fixed time. At the end:
no request failed, the loaded versions stay within the keep-window, the adapter folder did not
grow. Every ``--sample-every`` seconds the server's resident memory (it and its engine
processes, in all and by process) and its adapter folder's size are recorded; the memory slope
in MB per hour is fitted (least squares) to the samples after the first ``--settle-seconds``, so
allocator warm-up is not read as a leak, and the median of each 10-minute window is reported.

    python -m benchmarks.soak --seconds 300                                   # make soak
    python -m benchmarks.soak --seconds 3600 --adapter-mode merge --output runs/soak-merge.json
    python -m benchmarks.soak --plot runs/soak-lora-3600s.json runs/soak-merge-3600s.json --output soak.png
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.random_adapter import save_random_adapter
from grpo_math.local_server import LocalServer
from shared.gsm8k import load_gsm8k
from shared.protocol import AdapterUpload, GenerateRequest
from trainer.generators import GeneratorError, GrpoMathServer


def rss_by_process_mb(pid: int) -> dict[str, float]:
    """Resident MB of process ``pid`` ("server") and of each process under it, by name (vLLM's
    engine core and worker name themselves ``VLLM::EngineCore``, ``VLLM::Worker``)."""
    process = psutil.Process(pid)
    by_name = {"server": process.memory_info().rss / 2**20}
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            name = child.name()
            by_name[name] = by_name.get(name, 0.0) + child.memory_info().rss / 2**20
    return by_name


def tree_rss_mb(pid: int) -> float:
    return sum(rss_by_process_mb(pid).values())


def adapter_folders() -> set[Path]:
    return set(Path("/dev/shm").glob("grpo-math-adapters-*")) if Path("/dev/shm").is_dir() else set()


def folder_bytes(folders: set[Path]) -> int:
    """The bytes of the files under ``folders`` now (a file removed while counted counts 0)."""
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):  # os.walk skips a folder removed under it
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.path.getsize(os.path.join(root, name))
    return total


def slope_per_hour(samples: list[dict], key: str, after_seconds: float) -> float | None:
    """Least-squares slope of ``key`` per hour over the samples taken after ``after_seconds``
    (None with fewer than 3 such samples).

    >>> samples = [{"seconds": t, "rss_mb": 100 + (50 if t < 60 else t / 36)} for t in range(0, 400, 20)]
    >>> round(slope_per_hour(samples, "rss_mb", after_seconds=60), 3)
    100.0
    """
    later = [sample for sample in samples if sample["seconds"] >= after_seconds]
    if len(later) < 3:
        return None
    hours = np.array([sample["seconds"] for sample in later]) / 3600
    return float(np.polyfit(hours, np.array([sample[key] for sample in later]), 1)[0])


MEDIAN_WINDOW_SECONDS = 600.0  # the result's ``rss_10_minute_medians_mb`` and the plot's dots


def window_medians(samples: list[dict], key: str, window_seconds: float = MEDIAN_WINDOW_SECONDS) -> list[float]:
    """The median of ``key`` in each window of ``window_seconds`` (the first from 0 s), a window
    without samples left out: a leak rises window after window, warm-up levels off.

    >>> window_medians([{"seconds": t, "rss_mb": 100 + t // 10} for t in range(0, 30, 5)], "rss_mb", 10)
    [100.0, 101.0, 102.0]
    """
    windows: dict[int, list[float]] = {}
    for sample in samples:
        windows.setdefault(int(sample["seconds"] // window_seconds), []).append(sample[key])
    return [float(np.median(values)) for _, values in sorted(windows.items())]


def run_soak(
    seconds: float,
    clients: int = 4,
    push_every: float = 1.0,
    adapter_mode: str = "lora",
    sample_every: float = 10.0,
    settle_seconds: float = 600.0,
    server_log: Path | None = None,
) -> dict:
    """The soak's result (see the module docstring); ``server_log``: where the server's output is
    kept (a temporary file unless given). A server whose engine died ends the soak at once."""
    keep = 3
    folders_before = adapter_folders()
    with tempfile.TemporaryDirectory() as scratch:
        adapters = [
            AdapterUpload.from_folder(save_random_adapter(Path(scratch) / f"a{seed}", seed=seed)) for seed in (1, 2)
        ]
        flags = ["--adapter-mode", adapter_mode, "--max-model-len", "1024", "--adapter-keep", str(keep),
                 "--kv-cache-bytes", str(256 * 2**20)]  # fmt: skip
        with LocalServer(flags, server_log or Path(scratch) / "soak-server.log") as local:
            server = GrpoMathServer(local.url, retry_seconds=0)
            prompts = [problem.prompt for problem in load_gsm8k("test")[:2]]
            server.generate(GenerateRequest(prompts=prompts, n=2, max_tokens=16))  # warm-up
            server_folders = adapter_folders() - folders_before
            rss_start = tree_rss_mb(local.process.pid)
            counts = {"requests": 0, "pushes": 0, "evaluation_pushes": 0, "errors": 0}
            errors: list[str] = []  # the first few; ``counts`` has them all
            started = time.monotonic()
            stop = started + seconds
            engine_died = threading.Event()
            lock = threading.Lock()

            def running() -> bool:
                return time.monotonic() < stop and not engine_died.is_set()

            def failed(error: GeneratorError) -> None:
                with lock:
                    counts["errors"] += 1
                    if len(errors) < 3:
                        errors.append(str(error)[:300])
                if error.status == 503:  # the engine died: every later request would fail at once
                    engine_died.set()

            def client() -> None:
                while running():
                    try:
                        server.generate(GenerateRequest(prompts=prompts, n=2, max_tokens=16, temperature=1.0))
                        with lock:
                            counts["requests"] += 1
                    except GeneratorError as error:
                        failed(error)

            def pusher() -> None:
                while running():
                    activate = counts["pushes"] % 5 != 4  # every fifth push is an evaluation-only one
                    try:
                        server.push_adapter(adapters[counts["pushes"] % 2].model_copy(update={"activate": activate}))
                        with lock:
                            counts["pushes"] += 1
                            counts["evaluation_pushes"] += 0 if activate else 1
                    except GeneratorError as error:
                        failed(error)
                    time.sleep(push_every)

            samples: list[dict] = []

            def sampler() -> None:
                while running():
                    by_process = rss_by_process_mb(local.process.pid)
                    samples.append(
                        {
                            "seconds": round(time.monotonic() - started, 1),
                            "rss_mb": round(sum(by_process.values()), 1),
                            "rss_by_process_mb": {name: round(mb, 1) for name, mb in by_process.items()},
                            "adapter_folder_bytes": folder_bytes(server_folders),
                        }
                    )
                    engine_died.wait(min(sample_every, max(stop - time.monotonic(), 0)))

            threads = [threading.Thread(target=client) for _ in range(clients)]
            threads += [threading.Thread(target=pusher), threading.Thread(target=sampler)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ended = time.monotonic() - started
            loaded = (
                None if engine_died.is_set() else server.http.request("GET", "/v1/adapters").json()["loaded_versions"]
            )
            files = [path for folder in server_folders for path in folder.rglob("*") if path.is_file()]
            result = {
                **counts,
                "seconds": seconds,
                "engine_died_after_seconds": round(ended, 1) if engine_died.is_set() else None,
                "clients": clients,
                "adapter_mode": adapter_mode,
                "loaded_versions": loaded,
                "adapter_keep": keep,
                "keep_window": 2 * keep,  # activated and evaluation-only versions, each up to --adapter-keep
                "adapter_files_at_end": len(files),
                "rss_start_mb": round(rss_start, 1),
                "rss_end_mb": round(tree_rss_mb(local.process.pid), 1),
                "settle_seconds": settle_seconds,
                "rss_slope_mb_per_hour": slope_per_hour(samples, "rss_mb", settle_seconds),
                "rss_10_minute_medians_mb": window_medians(samples, "rss_mb"),
                "adapter_folder_bytes_max": max(sample["adapter_folder_bytes"] for sample in samples),
                "adapter_folder_bytes_end": folder_bytes(server_folders),
                "first_errors": errors[:3],
                "samples": samples,
            }
            server.close()
    return result


def plot(results: list[Path], output: Path) -> None:
    """Each soak result's resident memory (with each 10-minute window's median as a dot) and
    adapter folder size over time, one line per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, folder) = plt.subplots(1, 2, figsize=(11, 4))
    for path in results:
        result = json.loads(path.read_text())
        minutes = [sample["seconds"] / 60 for sample in result["samples"]]
        label = f"{result['adapter_mode']} mode"
        if result["rss_slope_mb_per_hour"] is not None:
            label += f" ({result['rss_slope_mb_per_hour']:+.1f} MB/h after {result['settle_seconds']:.0f} s)"
        (line,) = memory.plot(minutes, [sample["rss_mb"] for sample in result["samples"]], label=label, alpha=0.6)
        medians = window_medians(result["samples"], "rss_mb")
        centres = [(index + 0.5) * MEDIAN_WINDOW_SECONDS / 60 for index in range(len(medians))]  # minutes
        memory.plot(centres, medians, "o--", color=line.get_color())
        folder.plot(minutes, [sample["adapter_folder_bytes"] / 2**20 for sample in result["samples"]], label=label)
    memory.set(xlabel="minutes", ylabel="server + engine resident memory (MB)", title="memory")
    folder.set(xlabel="minutes", ylabel="adapter folder (MB)", title="adapter files on disk")
    memory.legend()
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--push-every", type=float, default=1.0)
    parser.add_argument("--adapter-mode", choices=("lora", "merge"), default="lora")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument(
        "--settle-seconds", type=float, default=600.0, help="memory samples before this are left out of the slope"
    )
    parser.add_argument(
        "--output", type=Path, help="also write the result, with every sample, to this JSON file (and the server's "
        "output beside it, as FILE.server.log)"
    )  # fmt: skip
    parser.add_argument(
        "--plot", nargs="+", type=Path, help="instead of a soak: draw these results' memory over time into --output"
    )
    args = parser.parse_args()
    if args.plot:
        if args.output is None or args.output.suffix != ".png":
            parser.error("--plot needs --output FILE.png")
        plot(args.plot, args.output)
        return 0
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    result = run_soak(
        args.seconds, args.clients, args.push_every, args.adapter_mode, args.sample_every, args.settle_seconds,
        server_log=args.output.with_suffix(".server.log") if args.output else None,
    )  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps({key: value for key, value in result.items() if key != "samples"}, indent=2))
    ok = result["errors"] == 0 and len(result["loaded_versions"]) <= result["keep_window"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
