"""The trainer's side of the wire: the ``Generator`` interface and one client per module.

- ``interface.py``: ``Generator`` (generate, push_adapter, active_version, health) and
  ``wait_until_healthy``
- ``http.py``: ``RetryingHttp`` (bearer key, CA bundle, retries with backoff) and ``GeneratorError``
- ``grpo_math_server.py``: ``GrpoMathServer``, the client for ``grpo-math serve``
- ``vllm_server.py``: ``VllmServer``, the client for ``vllm serve`` / ``trl vllm-serve``
- ``pool.py``: ``ServerPool``, several servers of one kind behind the same interface
"""

from shared.versions import DEFAULT_ADAPTER_KEEP
from trainer.generators.grpo_math_server import GrpoMathServer
from trainer.generators.http import GeneratorError, RetryingHttp
from trainer.generators.interface import Generator, wait_until_healthy
from trainer.generators.pool import ServerPool
from trainer.generators.vllm_server import VllmServer

__all__ = [
    "Generator",
    "GeneratorError",
    "GrpoMathServer",
    "RetryingHttp",
    "ServerPool",
    "VllmServer",
    "connect_generator",
    "wait_until_healthy",
]


def connect_generator(
    kind: str,
    urls: tuple[str, ...],
    vllm_adapter_dir: str | None = None,
    vllm_adapter_keep: int = DEFAULT_ADAPTER_KEEP,
    **http,
) -> Generator:
    """The generator the settings name: one server, or a pool of several. ``http``: the api_key,
    ca_bundle and retry_seconds of ``RetryingHttp``; ``vllm_adapter_keep``: the versions a vLLM
    server keeps loaded."""
    if kind == "vllm":
        members = [
            VllmServer(url, adapter_dir=vllm_adapter_dir, adapter_keep=vllm_adapter_keep, **http) for url in urls
        ]
    else:
        members = [GrpoMathServer(url, **http) for url in urls]
    return members[0] if len(members) == 1 else ServerPool(members)
