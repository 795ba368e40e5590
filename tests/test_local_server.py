"""No server outlives the process that started it: a parent holding a ``LocalServer`` is ended by
SIGTERM, SIGINT, SIGKILL or its own crash, and the server with every process of its vLLM engine
is gone soon after; the same for ``grpo-math demo`` ended by SIGTERM while it trains. Servers
started side by side are all stopped when one of them fails to start."""

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from grpo_math.local_server import LocalServer, start_side_by_side

FLAGS = ["--enforce-eager", "--kv-cache-bytes", str(128 * 2**20), "--max-model-len", "512"]
# The parent as a terminal's foreground process has it: SIGINT raises KeyboardInterrupt. A shell
# that starts pytest in the background without job control (`bash -c 'make test-slow &'`) hands
# every child SIGINT ignored, and Python then leaves it ignored: the parent would sleep on.
PARENT = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from grpo_math.local_server import LocalServer, exit_on_termination

    signal.signal(signal.SIGINT, signal.default_int_handler)
    exit_on_termination()
    with LocalServer({flags!r}, Path(sys.argv[1])) as server:
        print(server.process.pid, flush=True)
        if sys.argv[2] == "crash":
            raise RuntimeError("a crash while the server runs")
        time.sleep(600)
    """
).format(flags=FLAGS)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def wait_until_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive(processes)


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["SIGTERM", "SIGINT", "SIGKILL", "crash"])
def test_the_server_and_its_engine_end_with_the_process_that_started_them(ending, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "server.log"), ending], stdout=subprocess.PIPE, text=True
    )
    try:
        server = psutil.Process(int(parent.stdout.readline()))
        family = [server, *server.children(recursive=True)]  # grpo-math serve and vLLM's engine processes
        assert len(family) >= 2, "the engine runs in processes of its own"
        if ending != "crash":
            parent.send_signal(getattr(signal, ending))
        try:
            parent.wait(timeout=120)
        except subprocess.TimeoutExpired:
            log = (tmp_path / "server.log").read_text()[-3000:]
            pytest.fail(f"the parent did not exit within 120 s of {ending}; the server's log:\n{log}")
        left = wait_until_gone(family, timeout=90)
        assert not left, [p.cmdline() for p in left]
    finally:
        parent.kill()


@pytest.mark.slow
def test_grpo_math_demo_ended_by_sigterm_leaves_no_server(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "grpo_math", "demo", "--output-dir", str(tmp_path), "--sft-steps", "50"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, log = time.monotonic() + 300, tmp_path / "server.log"
        while not (log.exists() and "ready: model" in log.read_text()):
            assert time.monotonic() < deadline and demo.poll() is None
            time.sleep(1)
        family = psutil.Process(demo.pid).children(recursive=True)  # the server and its engine
        assert any("serve" in p.cmdline() for p in family)
        demo.send_signal(signal.SIGTERM)  # while SFT runs
        assert demo.wait(timeout=120) != 0
        left = wait_until_gone(family, timeout=90)
        assert not left, [p.cmdline() for p in left]
    finally:
        demo.kill()


HEALTHY = textwrap.dedent(
    """
    import http.server, sys
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
    port = int(sys.argv[sys.argv.index("--port") + 1])
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


def test_servers_start_side_by_side_and_all_stop_when_one_fails(tmp_path):
    healthy = [LocalServer([], tmp_path / f"{name}.log", program=[sys.executable, "-c", HEALTHY]) for name in "ab"]
    assert start_side_by_side(healthy) == healthy
    for server in healthy:
        assert server.process.poll() is None
        with server:  # started already: the with block only stops it
            pass
        assert server.process.poll() is not None

    failing = LocalServer([], tmp_path / "failing.log", program=[sys.executable, "-c", "raise SystemExit(3)"])
    other = LocalServer([], tmp_path / "other.log", program=[sys.executable, "-c", HEALTHY])
    with pytest.raises(RuntimeError, match="server exited with 3"):
        start_side_by_side([failing, other])
    assert other.process.poll() is not None, "the healthy server launched beside the failing one was stopped"
