"""Configurations side by side under pytest-xdist, on the simulated node (pytester, subprocess).

The simulated node's GPUs are leased like real ones, in the lock directory each test gets (conftest), so
these runs show the leases, the scheduling by configuration, the controller's single report and a worker's
crash end to end. Where a test needs two configurations to start together, it holds the GPUs itself until
both workers wait for them, so nothing depends on how fast workers start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.node.leases import lease_gpus, read_records
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT

from test_plugin_e2e import model, running_requests, sim_processes  # noqa: F401  (model: a fixture)

PROFILES = Path(__file__).resolve().parents[1] / "pytest_llmperf" / "sim" / "profiles"
NODE_UUIDS = [g["uuid"] for g in json.loads(SIM_NODE_SNAPSHOT.read_text())["gpus"]]
XDIST = ["-n", "2", "--dist", "loadgroup"]


def profile(path: Path, base: str, gpus: int) -> None:
    """A sim profile for ``gpus`` GPUs, timed as ``base`` on fewer GPUs (its KV capacity kept: DeepSeek-V3.2's
    weights alone would not fit four H200s)."""
    from pytest_llmperf.sim.profiles import load_profile

    kv = load_profile(base).kv_tokens_per_rank
    text = re.sub(r"(?m)^(gpus|attention_tp)\s*=.*\n", "", (PROFILES / f"{base}.toml").read_text())
    path.write_text(f"gpus = {gpus}\nkv_capacity_tokens = {kv}\n" + text)


def suite(model: str, configs: str, prompts: int = 24, long_prompts: int = 0) -> str:
    long = (f'\n[workloads.long]\ndataset = "random"\ninput_len = 64\noutput_len = 12\nnum_prompts = {long_prompts}\n'
            if long_prompts else "")
    return f'''
model = "{model}"
gpus = "h200x8"

[workloads.tiny]
dataset = "random"
input_len = 64
output_len = 12
num_prompts = {prompts}
{long}
{configs}
'''


def config(name: str, profile_ref: str, workloads: str = "") -> str:
    return (f'[[configs]]\nengine = "sim"\nname = "{name}"\nprofile = "{profile_ref}"\n'
            + (f"workloads = {workloads}\n" if workloads else ""))


def lock_dir() -> Path:
    return Path(os.environ["LLMPERF_GPU_LOCK_DIR"])


class Run:
    """A pytest run in a subprocess whose output is read while it runs."""

    def __init__(self, cwd: Path, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, predicate, what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"never saw {what}:\n{self.text}")
            time.sleep(0.1)

    def finish(self, timeout_s: float = 300) -> int:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            self.stop()
        self._reader.join(timeout=10)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def overlapping(a, b) -> bool:
    end_a, end_b = a.ended or time.time(), b.ended or time.time()
    return a.started < end_b and b.started < end_a


def by_config(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for case in report["cases"]:
        out.setdefault(f"{case['engine']}/{case['config']}", []).append(case)
    return out


def test_two_4_gpu_configurations_run_side_by_side_on_disjoint_gpus_and_the_controller_writes_all(pytester, model):
    profile(pytester.path / "p4.toml", "vllm-tp8", 4)
    pytester.makefile(".toml", suite=suite(model, config("a", "p4.toml") + config("b", "p4.toml"),
                                           prompts=48) + '\n[workloads.second]\ndataset = "random"\ninput_len = 32\n'
                                                         'output_len = 8\nnum_prompts = 24\n')
    bdir = pytester.path / "bl"
    # Hold every GPU until both workers wait for theirs: then both configurations start within a lease poll.
    with lease_gpus(lock_dir(), NODE_UUIDS, 8, "the test", NODE_UUIDS):
        run = Run(pytester.path, "--suite=suite.toml", "--engine=sim", *XDIST, f"--baseline-dir={bdir}",
                  "--update-baselines", "--report-json=r.json", "--report-md=r.md", "--junitxml=j.xml", "-rA")
        run.wait_for(lambda: all(any(f"({w}): waiting for 4 GPUs" in line for line in run.lines)
                                 for w in ("gw0", "gw1")), "both workers waiting for GPUs")
    assert run.finish() == 0, run.text
    assert run.text.count("llmperf summary") == 1  # one summary, by the controller
    report = json.loads((pytester.path / "r.json").read_text())
    configs = by_config(report)
    assert sorted(configs) == ["sim/a", "sim/b"] and all(len(cases) == 2 for cases in configs.values())
    assert {c["outcome"] for c in report["cases"]} == {"passed"}
    leased = {}
    for config_id, cases in configs.items():
        (uuids,) = {tuple(c["gpu_uuids"]) for c in cases}  # one engine per configuration, on one GPU set
        assert len(uuids) == 4 and set(uuids) <= set(NODE_UUIDS)
        assert len({c["node"]["worker"] for c in cases}) == 1
        leased[config_id] = set(uuids)
    assert not leased["sim/a"] & leased["sim/b"]
    booted = [b["config"] for b in report["environment"]["engines_booted"]]
    assert sorted(booted) == ["sim/a", "sim/b"]  # each booted once in the whole run
    records = {r.label.split(" ")[0]: r for r in read_records(lock_dir()) if r.label.startswith("sim/")}
    assert overlapping(records["sim/a"], records["sim/b"])
    assert set(records["sim/a"].uuids) == leased["sim/a"] and set(records["sim/b"].uuids) == leased["sim/b"]
    assert any(c["colocated"] for c in report["cases"])
    assert "(colocated)" in run.text and "(colocated)" in (pytester.path / "r.md").read_text()
    assert 'name="llmperf.colocated_with"' in (pytester.path / "j.xml").read_text()
    written = {p.stem: set(json.loads(p.read_text())["cases"]) for p in bdir.rglob("*.json")}
    assert written == {"a": {"tiny", "second"}, "b": {"tiny", "second"}}
    assert sim_processes(model) == []


def test_two_8_gpu_configurations_never_overlap(pytester, model):
    pytester.makefile(".toml", suite=suite(model, config("a", "vllm-tp8") + config("b", "vllm-tp8")))
    run = Run(pytester.path, "--suite=suite.toml", "--engine=sim", *XDIST, "--gate=total_token_throughput:off,"
              "mean_tpot_ms:off", f"--baseline-dir={pytester.path / 'bl'}", "--update-baselines",
              "--report-json=r.json")
    assert run.finish() == 0, run.text
    report = json.loads((pytester.path / "r.json").read_text())
    assert {c["outcome"] for c in report["cases"]} == {"passed"}
    assert all(len(c["gpu_uuids"]) == 8 and not c["colocated"] for c in report["cases"])
    a, b = sorted((r for r in read_records(lock_dir()) if r.label.startswith("sim/")), key=lambda r: r.label)
    assert a.ended is not None and b.ended is not None and not overlapping(a, b)
    assert sim_processes(model) == []


def test_a_killed_worker_fails_its_configuration_and_its_gpus_go_to_the_next(pytester, model):
    profile(pytester.path / "p4.toml", "vllm-tp8", 4)
    profile(pytester.path / "p8.toml", "vllm-tp8", 8)
    pytester.makefile(".toml", suite=suite(model, config("a", "p4.toml", '["long", "tiny"]')
                                           + config("b", "p8.toml", '["tiny"]'), long_prompts=4000))
    # The test holds 4 GPUs: a (4 GPUs) gets the other 4 at once, b (8) must wait for a's.
    with lease_gpus(lock_dir(), NODE_UUIDS, 4, "the test", NODE_UUIDS):
        run = Run(pytester.path, "--suite=suite.toml", "--engine=sim", *XDIST, "--gate=total_token_throughput:off,"
                  "mean_tpot_ms:off", f"--baseline-dir={pytester.path / 'bl'}", "--update-baselines",
                  "--report-json=r.json", "-rA")

        def engine_of_a():
            return next((p for p in sim_processes(model) if any(a.endswith("p4.toml") for a in p.cmdline())), None)

        run.wait_for(lambda: engine_of_a() is not None, "the engine of sim/a")
        engine = engine_of_a()
        port = engine.cmdline()[engine.cmdline().index("--port") + 1]
        # more requests at once than the warm-up's 4: the long case itself is running (its setup reported)
        run.wait_for(lambda: running_requests(port) > 8, "sim/a's long case under load")
    worker = psutil.Process(engine.ppid())
    assert worker.pid != run.proc.pid  # a worker, not the controller
    os.kill(worker.pid, signal.SIGKILL)
    assert run.finish() == 1, run.text
    text = run.text
    assert re.search(r"worker gw\d died while running sim/a/long \(killed, or out of memory\?\).*; the engine's log: "
                     r".*sim-a\.log", text), text
    assert re.search(r"not run: worker gw\d died while running sim/a/long, so sim/a is not booted again", text), text
    report = json.loads((pytester.path / "r.json").read_text())
    outcomes = {c["id"]: c["outcome"] for c in report["cases"]}
    assert outcomes == {"sim/a/long": "failed", "sim/a/tiny": "failed", "sim/b/tiny": "passed"}
    for case in (c for c in report["cases"] if c["config"] == "a"):  # said at its setup; the unrun case too
        assert len(case["gpu_uuids"]) == 4 and case["node"]["worker"].startswith("gw") and case["log_path"]
    assert "sim/a" in [b["config"] for b in report["environment"]["engines_booted"]]
    records = {r.label.split(" ")[0]: r for r in read_records(lock_dir()) if r.label.startswith("sim/")}
    assert set(records["sim/a"].uuids) <= set(records["sim/b"].uuids)  # a's GPUs, released by the OS, went to b
    assert records["sim/b"].started > records["sim/a"].started
    deadline = time.monotonic() + 60
    while sim_processes(model) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sim_processes(model) == []
    assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE


def other_node(path: Path) -> Path:
    """The simulated node, as another machine: its own GPU UUIDs."""
    data = json.loads(SIM_NODE_SNAPSHOT.read_text())
    for gpu in data["gpus"]:
        gpu["uuid"] = gpu["uuid"].replace("GPU-5a1d", "GPU-7b2e")
    data["description"] = "a second simulated 8x H200 node"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("second", ["fits", "too small"])
def test_popen_workers_stand_in_for_two_nodes_each_checked_and_leased_on_its_own(pytester, model, second):
    pytester.makefile(".toml", suite=suite(model, config("a", "vllm-tp8") + config("b", "vllm-tp8")))
    node2 = other_node(pytester.path / "node2.json") if second == "fits" else NODES_DIR / "h200x1-vm.json"
    run = Run(pytester.path, "--suite=suite.toml", "--engine=sim", "--dist", "loadgroup",
              f"--tx=popen//env:LLMPERF_SIM_NODE={SIM_NODE_SNAPSHOT}", f"--tx=popen//env:LLMPERF_SIM_NODE={node2}",
              "--gate=total_token_throughput:off,mean_tpot_ms:off", f"--baseline-dir={pytester.path / 'bl'}",
              "--update-baselines", "--report-json=r.json", "-rA")
    rc = run.finish()
    report = json.loads((pytester.path / "r.json").read_text())
    nodes = {config_id: {c["node"]["source"] for c in cases} for config_id, cases in by_config(report).items()}
    assert sorted(map(tuple, nodes.values())) == sorted([(f"simulated node {SIM_NODE_SNAPSHOT.name}",),
                                                         (f"simulated node {node2.name}",)])
    uuids_of = {f"simulated node {SIM_NODE_SNAPSHOT.name}": set(NODE_UUIDS),
                f"simulated node {node2.name}": {g["uuid"] for g in json.loads(node2.read_text())["gpus"]}}
    for case in report["cases"]:
        if second == "fits" or case["node"]["source"] == f"simulated node {SIM_NODE_SNAPSHOT.name}":
            assert case["outcome"] == "passed" and set(case["gpu_uuids"]) == uuids_of[case["node"]["source"]]
        else:  # only the configuration the small node got fails, naming its node
            assert case["outcome"] == "error" and "node does not fit h200x8 (simulated node h200x1-vm.json)" in (
                case["message"])
    assert rc == (0 if second == "fits" else 1), run.text
    assert len(report["environment"]["workers"]) == 2
    sources = {n["source"] for n in report["environment"]["node"].values()}  # each node the workers met
    assert sources == {f"simulated node {SIM_NODE_SNAPSHOT.name}", f"simulated node {node2.name}"}
    assert sim_processes(model) == []


def test_without_pytest_xdist_the_configuration_marks_are_still_known(pytester, model):
    pytester.makefile(".toml", suite=suite(model, config("a", "vllm-tp8")))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--suite=suite.toml",
                                           "--engine=sim", "--collect-only", "-q", "--strict-markers", "-W", "error")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["llmperf::test_llmperf[sim/a/tiny]", "1 test collected*"])
