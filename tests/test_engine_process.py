import sys
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.engines import EngineUnavailable, get_adapter
from pytest_llmperf.engines.base import EngineProcess, EngineStartError, free_port
from pytest_llmperf.suite import EngineConfig

FAKE = str(Path(__file__).with_name("fake_engine.py"))


def engine(tmp_path, *extra):
    port = free_port()
    argv = [sys.executable, FAKE, str(port), *extra]
    return EngineProcess(argv, {}, tmp_path / "logs" / "e.log", f"http://127.0.0.1:{port}")


def test_ready_version_and_clean_stop(tmp_path):
    proc = engine(tmp_path, "--delay", "0.3")
    with proc:
        proc.wait_ready(timeout_s=30)
        pid = proc.pid
        assert get_adapter("sim").version(proc.base_url) == "9.9-fake"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "fake engine starting" in (tmp_path / "logs" / "e.log").read_text()


def test_early_exit_fails_with_log_tail(tmp_path):
    with engine(tmp_path, "--exit-early", "3") as proc:
        with pytest.raises(EngineStartError) as info:
            proc.wait_ready(timeout_s=30)
    msg = str(info.value)
    assert "exited with code 3 before it was ready" in msg
    assert "fatal: out of memory" in msg
    assert "loading shard 59" in msg and "loading shard 5\n" not in msg  # only the last 50 lines


def test_timeout(tmp_path):
    with engine(tmp_path, "--delay", "30") as proc:
        with pytest.raises(EngineStartError, match=r"not ready after 0.5 s \(http://127.0.0.1:\d+/health last answered: ConnectionError\)"):
            proc.wait_ready(timeout_s=0.5)


@pytest.mark.parametrize("child", ["--child", "--setsid-child"])
def test_stop_kills_the_whole_tree_even_when_sigterm_is_ignored(tmp_path, child):
    pidfile = tmp_path / "pids"
    proc = engine(tmp_path, "--child", child, "--ignore-term", "--pidfile", str(pidfile))
    proc.start()
    proc.wait_ready(timeout_s=30)
    parent, child = map(int, pidfile.read_text().split())
    proc.stop(grace_s=0.5)
    for pid in (parent, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    proc.stop()  # idempotent


def test_reserved_engines_say_so():
    with pytest.raises(EngineUnavailable, match="'trtllm' is reserved but has no adapter"):
        get_adapter("trtllm")
    with pytest.raises(EngineUnavailable, match="unknown engine"):
        get_adapter("tgi")


def test_sim_argv_and_display():
    adapter = get_adapter("sim")
    config = EngineConfig("sim", "c", "org/m", args=("--log-level", "debug"), options=(("profile", "vllm-tp8"),))
    argv = adapter.argv(config, "127.0.0.1", "8000", 1.5)
    assert argv[1:] == ["-m", "pytest_llmperf.sim", "serve", "--host", "127.0.0.1", "--port", "8000", "--profile",
                        "vllm-tp8", "--served-model-name", "org/m", "--slowdown", "1.5", "--log-level", "debug"]
    assert adapter.display_argv(config, 1.0)[0] == "python" and "{port}" in adapter.display_argv(config, 1.0)
    with pytest.raises(ValueError, match="needs a 'profile'"):
        adapter.argv(EngineConfig("sim", "c", "m"), "127.0.0.1", "1", 1.0)
