import sys
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.engines import EngineUnavailable, get_adapter
from pytest_llmperf.engines.base import EngineProcess, EngineStartError, Launch, free_port
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


def test_unknown_engines_say_so():
    with pytest.raises(EngineUnavailable, match="unknown engine 'tgi'; valid choices: sim, vllm, sglang, trtllm, external"):
        get_adapter("tgi")


def test_missing_executable_is_a_start_error_naming_it(tmp_path):
    proc = EngineProcess(["no-such-engine-binary", "serve"], {}, tmp_path / "e.log", "http://127.0.0.1:1")
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
