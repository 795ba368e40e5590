"""A generator server as a child process on this machine: what the demo, the study, the
benchmark and the tests start and stop. It runs ``grpo-math serve`` (or another server program,
such as ``vllm serve``) on a free loopback port and waits until ``/health`` answers 200.

No server outlives the process that started it: ``with LocalServer(...)`` stops it on the way out
(an exception included), ``exit_on_termination`` turns SIGTERM into that same way out, and the
child is told by the kernel to stop (SIGTERM) when its parent dies any other way, SIGKILL included
(``die_with_parent``, Linux's ``PR_SET_PDEATHSIG``).
"""

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: SIGTERM to it when the thread that started it ends.
    Linux only; elsewhere a no-op."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def exit_on_termination() -> None:
    """SIGTERM raises ``SystemExit`` (as Ctrl-C raises ``KeyboardInterrupt``), so ``with`` blocks and
    ``finally`` clauses run, and the servers they started are stopped, before the process ends."""

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


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
        return self.launch().wait_until_healthy(timeout)

    def launch(self) -> "LocalServer":
        """Start the process and return at once (``wait_until_healthy`` next): servers launched
        one after another start side by side."""
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(  # a session of its own: kill() ends the engine's processes too
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def wait_until_healthy(self, timeout: float = 600) -> "LocalServer":
        """Wait until ``/health`` answers 200; if the process exits, does not become healthy within
        ``timeout`` seconds or the wait is interrupted, stop it and raise (with the log's tail)."""
        try:
            self._wait_until_healthy(timeout)
        except BaseException:  # not healthy, or interrupted while waiting: nothing is left running
            self.stop()
            raise
        return self

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2, verify=self.ca_bundle or True).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not healthy after {timeout} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a graceful shutdown), SIGKILL if it does not end within ``timeout``; returns the
        exit code (``-SIGTERM`` when uvicorn re-raised the signal after a clean shutdown)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()
        with contextlib.suppress(ProcessLookupError):  # anything of the engine's still in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        return code

    def kill(self) -> int:
        """SIGKILL to the server and every process it started (a crash, as the fault tests make one)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text()[-characters:] if self.log_path.exists() else ""

    def __enter__(self) -> "LocalServer":
        """Start the server, unless it was started already (``start_side_by_side``): either way the
        ``with`` block stops it on the way out."""
        return self if self.process is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_side_by_side(servers: list[LocalServer], timeout: float = 600) -> list[LocalServer]:
    """Launch every server, then wait for each to be healthy: the engines start side by side
    rather than one after another. If one fails, every one of them is stopped before the error
    goes on."""
    try:
        for server in servers:
            server.launch()
        return [server.wait_until_healthy(timeout) for server in servers]
    except BaseException:
        for server in servers:
            server.stop()
        raise
