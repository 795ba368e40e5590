"""A generator server as a child process on this machine: what the demo, the tests and the
benchmark start and stop. It runs ``grpo-math serve`` (or another server program, such as
``vllm serve``) on a free loopback port and waits until ``/health`` answers 200."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """``PROGRAM --port PORT FLAGS`` on a free port (``PROGRAM`` = ``grpo-math serve`` unless
    given), its output in ``log_path``.

    >>> LocalServer(["--dtype", "float32"], Path("server.log"), port=8123).command[-5:]
    ['serve', '--port', '8123', '--dtype', 'float32']
    """

    def __init__(
        self,
        flags: list[str],
        log_path: Path,
        environment: dict[str, str] | None = None,
        port: int | None = None,
        program: list[str] | None = None,
        ca_bundle: str | None = None,
    ):
        """``ca_bundle``: the server serves HTTPS with a certificate this CA signed."""
        self.port = port or free_port()
        self.ca_bundle = ca_bundle
        self.url = f"{'https' if ca_bundle else 'http'}://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.environment = {**os.environ, **(environment or {})}
        program = program or [sys.executable, "-m", "grpo_math", "serve"]
        self.command = [*program, "--port", str(self.port), *flags]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> "LocalServer":
        """Start the process and wait until it is healthy; raise with the log's tail if it exits or
        does not become healthy within ``timeout`` seconds."""
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(  # a session of its own: kill() ends the engine's processes too
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.environment, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2, verify=self.ca_bundle or True).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a graceful shutdown), SIGKILL if it does not end within ``timeout``; returns the
        exit code (``-SIGTERM`` when uvicorn re-raised the signal after a clean shutdown)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL to the server and every process it started (a crash, as the fault tests make one)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text()[-characters:] if self.log_path.exists() else ""

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
