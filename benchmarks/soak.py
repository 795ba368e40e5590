"""A bounded soak of the generator server on loopback: client threads sending generate requests
while adapters are pushed (training-style, and evaluation-only ones) for a fixed time. At the end:
no request failed, the loaded versions stay within the keep-window, the adapter folder did not
grow, and the server's memory (RSS of it and its engine processes) at the start and the end.

    python -m benchmarks.soak --seconds 300        # make soak
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.random_adapter import save_random_adapter
from grpo_math.local_server import LocalServer
from shared.gsm8k import load_gsm8k
from shared.protocol import AdapterUpload, GenerateRequest
from trainer.generators import GeneratorError, GrpoMathServer


def tree_rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def adapter_folders() -> set[Path]:
    return set(Path("/dev/shm").glob("grpo-math-adapters-*")) if Path("/dev/shm").is_dir() else set()


def run_soak(seconds: float, clients: int = 4, push_every: float = 1.0, adapter_mode: str = "lora") -> dict:
    keep = 3
    folders_before = adapter_folders()
    with tempfile.TemporaryDirectory() as scratch:
        adapters = [
            AdapterUpload.from_folder(save_random_adapter(Path(scratch) / f"a{seed}", seed=seed)) for seed in (1, 2)
        ]
        flags = ["--adapter-mode", adapter_mode, "--max-model-len", "1024", "--adapter-keep", str(keep),
                 "--kv-cache-bytes", str(256 * 2**20)]  # fmt: skip
        with LocalServer(flags, Path(scratch) / "soak-server.log") as local:
            server = GrpoMathServer(local.url, retry_seconds=0)
            prompts = [problem.prompt for problem in load_gsm8k("test")[:2]]
            server.generate(GenerateRequest(prompts=prompts, n=2, max_tokens=16))  # warm-up
            server_folders = adapter_folders() - folders_before
            rss_start = tree_rss_mb(local.process.pid)
            counts = {"requests": 0, "pushes": 0, "evaluation_pushes": 0, "errors": 0}
            errors: list[str] = []
            stop = time.monotonic() + seconds
            lock = threading.Lock()

            def client() -> None:
                while time.monotonic() < stop:
                    try:
                        server.generate(GenerateRequest(prompts=prompts, n=2, max_tokens=16, temperature=1.0))
                        with lock:
                            counts["requests"] += 1
                    except GeneratorError as error:
                        with lock:
                            counts["errors"] += 1
                            errors.append(str(error)[:300])

            def pusher() -> None:
                while time.monotonic() < stop:
                    activate = counts["pushes"] % 5 != 4  # every fifth push is an evaluation-only one
                    try:
                        server.push_adapter(adapters[counts["pushes"] % 2].model_copy(update={"activate": activate}))
                        with lock:
                            counts["pushes"] += 1
                            counts["evaluation_pushes"] += 0 if activate else 1
                    except GeneratorError as error:
                        with lock:
                            counts["errors"] += 1
                            errors.append(str(error)[:300])
                    time.sleep(push_every)

            threads = [threading.Thread(target=client) for _ in range(clients)] + [threading.Thread(target=pusher)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            loaded = server.http.request("GET", "/v1/adapters").json()["loaded_versions"]
            files = [path for folder in server_folders for path in folder.rglob("*") if path.is_file()]
            result = {
                **counts,
                "seconds": seconds,
                "clients": clients,
                "adapter_mode": adapter_mode,
                "loaded_versions": loaded,
                "keep_window": 2 * keep,  # activated and evaluation-only versions, each up to --adapter-keep
                "adapter_files_at_end": len(files),
                "rss_start_mb": round(rss_start, 1),
                "rss_end_mb": round(tree_rss_mb(local.process.pid), 1),
                "first_errors": errors[:3],
            }
            server.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--push-every", type=float, default=1.0)
    parser.add_argument("--adapter-mode", choices=("lora", "merge"), default="lora")
    args = parser.parse_args()
    result = run_soak(args.seconds, args.clients, args.push_every, args.adapter_mode)
    print(json.dumps(result, indent=2))
    ok = result["errors"] == 0 and len(result["loaded_versions"]) <= result["keep_window"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
