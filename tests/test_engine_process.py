import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.engines import EngineUnavailable, get_adapter
from pytest_llmperf.engines.base import Launch, free_port
from pytest_llmperf.engines.lifecycle import EngineProcess, EngineStartError, wait_ready
from pytest_llmperf.http import ControlClient, HttpOptions
from pytest_llmperf.secrets import Redactor
from pytest_llmperf.suite import EngineConfig

FAKE = str(Path(__file__).with_name("fake_engine.py"))


def engine(tmp_path, *extra, redactor=None):
    port = free_port()
    argv = [sys.executable, FAKE, str(port), *extra]
    return EngineProcess(argv, {}, tmp_path / "logs" / "e.log", redactor), f"http://127.0.0.1:{port}"


def gone(pid):
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_ready_version_and_clean_stop(tmp_path):
    proc, url = engine(tmp_path, "--delay", "0.3")
    with proc, ControlClient(url) as client:
        wait_ready(client, ("/health",), 30, proc)
        pid, watchdog = proc.pid, proc.watchdog.pid
        assert get_adapter("sim").version(client) == "9.9-fake"
    assert gone(pid) and gone(watchdog)  # the watchdog goes with its engine
    assert "fake engine starting" in (tmp_path / "logs" / "e.log").read_text()


def test_early_exit_fails_with_log_tail(tmp_path):
    proc, url = engine(tmp_path, "--exit-early", "3")
    with proc, ControlClient(url) as client:
        with pytest.raises(EngineStartError) as info:
            wait_ready(client, ("/health",), 30, proc)
    msg = str(info.value)
    assert "exited with code 3 before it was ready" in msg
    assert "fatal: out of memory" in msg
    assert "loading shard 59" in msg and "loading shard 5\n" not in msg  # only the last 50 lines


def test_a_launched_engine_that_refuses_is_not_up_yet_until_the_timeout(tmp_path):
    proc, url = engine(tmp_path, "--delay", "30")
    with proc, ControlClient(url) as client:
        with pytest.raises(EngineStartError, match=r"not ready after 0.5 s \(last: connection refused at "
                                                    r"http://127.0.0.1:\d+/health\); last lines of"):
            wait_ready(client, ("/health",), 0.5, proc)


@pytest.mark.parametrize("child", ["--child", "--setsid-child"])
def test_stop_kills_the_whole_tree_even_when_sigterm_is_ignored(tmp_path, child):
    pidfile = tmp_path / "pids"
    proc, url = engine(tmp_path, "--child", child, "--ignore-term", "--pidfile", str(pidfile))
    proc.start()
    with ControlClient(url) as client:
        wait_ready(client, ("/health",), 30, proc)
    parent, child = map(int, pidfile.read_text().split())
    proc.stop(grace_s=0.5)
    for pid in (parent, child):
        assert gone(pid)
    proc.stop()  # idempotent


PARENT = """
import sys, time
sys.path.insert(0, {tests!r})
from pytest_llmperf.engines.lifecycle import EngineProcess
proc = EngineProcess([sys.executable, {fake!r}, {port!r}, "--child", {child!r}, "--ignore-term", "--pidfile", {pidfile!r}],
                     {{}}, {log!r})
proc.start()
print(proc.pid, proc.watchdog.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("child", ["--child", "--setsid-child"])
def test_an_engine_dies_with_its_pytest_even_on_kill_9(tmp_path, child):
    """kill -9 of the process that started it: the engine and what it started are gone within 5 s."""
    pidfile = tmp_path / "pids"
    code = PARENT.format(tests=str(Path(__file__).parent), fake=FAKE, port=str(free_port()), child=child,
                         pidfile=str(pidfile), log=str(tmp_path / "e.log"))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        engine_pid, watchdog_pid = map(int, parent.stdout.readline().split())
        deadline = time.monotonic() + 60
        while not pidfile.exists() or len(pidfile.read_text().split()) < 2:
            assert time.monotonic() < deadline, "the engine never started its child"
            time.sleep(0.05)
        _, child_pid = map(int, pidfile.read_text().split())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        killed_at = time.monotonic()
        while not all(gone(p) for p in (engine_pid, child_pid, watchdog_pid)) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        left = [p for p in (engine_pid, child_pid, watchdog_pid) if not gone(p)]
        assert left == [], f"alive 5 s after kill -9 of their pytest: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pidfile.exists():
            for pid in map(int, pidfile.read_text().split()):
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)


def test_an_external_endpoint_that_refuses_fails_within_seconds():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with ControlClient(url) as client, pytest.raises(EngineStartError) as info:
        wait_ready(client, ("/health", "/v1/models"), 600)
    assert time.monotonic() - t0 < 10
    assert str(info.value) == (f"endpoint {url} is not reachable: connection refused at {url}/health; is the server "
                               f"running, and is --endpoint right?")


def test_secrets_the_engine_prints_are_masked_in_its_log_and_tail(tmp_path):
    proc, url = engine(tmp_path, "--delay", "0", "--api-key", "sk-very-secret", redactor=Redactor(["sk-very-secret"]))
    with proc, ControlClient(url) as client:
        wait_ready(client, ("/health",), 30, proc)
        assert "sk-very-secret" not in proc.log_tail()
    log = (tmp_path / "logs" / "e.log").read_text()
    assert "sk-very-secret" not in log and "--api-key ***" in log


def test_unknown_engines_say_so():
    with pytest.raises(EngineUnavailable, match="unknown engine 'tgi'; valid choices: sim, vllm, sglang, trtllm, external"):
        get_adapter("tgi")


def test_missing_executable_is_a_start_error_naming_it(tmp_path):
    proc = EngineProcess(["no-such-engine-binary", "serve"], {}, tmp_path / "e.log")
    with pytest.raises(EngineStartError, match="cannot start 'no-such-engine-binary'.*on PATH"):
        proc.start()
    assert "cannot start no-such-engine-binary" in (tmp_path / "e.log").read_text()


def test_sim_argv_and_display():
    adapter = get_adapter("sim")
    config = EngineConfig("sim", "c", "org/m", args=("--log-level", "debug"), options=(("profile", "vllm-tp8"),))
    argv = adapter.argv(config, Launch(port="8000", slowdown=1.5))
    assert argv[1:] == ["-m", "pytest_llmperf.sim", "serve", "--host", "127.0.0.1", "--port", "8000", "--profile",
                        "vllm-tp8", "--served-model-name", "org/m", "--slowdown", "1.5", "--log-level", "debug"]
    shown = adapter.display_argv(config, Launch(port="8000"))
    assert shown[0] == "python" and "{port}" in shown
    assert "CUDA_VISIBLE_DEVICES" not in adapter.env(config, Launch(gpu_uuids=("GPU-1",)))  # the sim uses no GPU
    with pytest.raises(ValueError, match="needs a 'profile'"):
        adapter.argv(EngineConfig("sim", "c", "m"), Launch())
    with pytest.raises(ValueError, match=r"unknown keys \['profil'\] for engine sim; valid engine keys: profile"):
        adapter.validate(EngineConfig("sim", "c", "m", options=(("profil", "x"),)))


def test_an_external_endpoint_whose_host_cannot_be_reached_fails_at_once():
    """A name that does not resolve (simulated: no lookup leaves this machine) is not waited for."""
    import socket

    from pytest_llmperf.http import UNREACHABLE, _failure

    failure = _failure(socket.gaierror(-2, "Name or service not known"), "http://gpu-node-7:8000/health", 5)
    assert (failure.kind, str(failure)) == (UNREACHABLE, "cannot resolve the host of http://gpu-node-7:8000/health "
                                                         "(Name or service not known)")

    class Unreachable(ControlClient):
        def get(self, path, timeout_s=None):
            raise failure

    with Unreachable("http://gpu-node-7:8000") as client, pytest.raises(EngineStartError) as info:
        wait_ready(client, ("/health",), 600)
    assert str(info.value) == ("endpoint http://gpu-node-7:8000 is not reachable: cannot resolve the host of "
                               "http://gpu-node-7:8000/health (Name or service not known)")


@pytest.fixture
def answering(tmp_path):
    """Serve GET on 127.0.0.1 with one status, over https (a test CA's certificate) or not; stopped afterwards."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tls_certs import make_certs

    servers = []

    def serve(status: int = 200, tls: bool = False):
        class Answer(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        server = HTTPServer(("127.0.0.1", 0), Answer)
        certs = None
        if tls:
            certs = make_certs(tmp_path / "tls")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certs.cert_path, certs.key_path)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1], certs

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def external_failure(url: str, options: HttpOptions = HttpOptions()) -> str:
    t0 = time.monotonic()
    with ControlClient(url, options) as client, pytest.raises(EngineStartError) as info:
        wait_ready(client, ("/health", "/v1/models"), 600)
    assert time.monotonic() - t0 < 10
    return str(info.value)


def test_an_external_https_endpoint_with_an_untrusted_certificate_fails_at_once(answering):
    port, certs = answering(tls=True)
    url = f"https://127.0.0.1:{port}"
    message = external_failure(url)
    assert message.startswith(f"endpoint {url} is not reachable: TLS certificate of {url}/health not trusted (")
    assert message.endswith("give the server's CA with --ca-bundle FILE, or --insecure to skip verification")
    for trusting in (HttpOptions(ca_bundle=certs.ca_path), HttpOptions(insecure=True)):
        with ControlClient(url, trusting) as client:
            assert wait_ready(client, ("/health",), 30) >= 0


def test_plain_http_to_an_https_endpoint_fails_within_seconds_with_a_hint(answering):
    port, _ = answering(tls=True)
    url = f"http://127.0.0.1:{port}"
    message = external_failure(url)
    assert message.startswith(f"endpoint {url} is not reachable: ")
    assert message.endswith("; if it serves https, give an https:// URL")


@pytest.mark.parametrize("status", [401, 403])
def test_an_external_endpoint_that_wants_a_key_fails_at_once_saying_so(answering, status):
    port, _ = answering(status)
    url = f"http://127.0.0.1:{port}"
    assert external_failure(url) == (f"endpoint {url} refused the plugin: {url}/health answered HTTP {status}; give "
                                     f"its API key (OPENAI_API_KEY, or --api-key-env NAME) or the header it needs "
                                     f"(--header)")
