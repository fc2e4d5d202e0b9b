"""The node command line (``python -m pytest_llmperf.topology``), in process and as a subprocess over the fake NVML."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakenvml import pynvml as fakemod
from pytest_llmperf.gpus import parse_gpu_spec
from pytest_llmperf.node.__main__ import main
from pytest_llmperf.node.check import check_node
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT, load_snapshot

TESTS = Path(__file__).parent
REPO = TESTS.parent
FAKE_DIR = TESTS / "fakenvml"
H200X8 = parse_gpu_spec("h200x8")


@pytest.fixture
def hgx():
    return json.loads(SIM_NODE_SNAPSHOT.read_text())


@pytest.fixture
def nvml_dir(tmp_path, hgx):
    (tmp_path / "procs").mkdir()
    (tmp_path / "node.json").write_text(json.dumps(hgx))
    return tmp_path


def run_cli(*args, nvml_dir=None, module="pytest_llmperf.topology"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_DIR), str(REPO)]))
    env.pop("LLMPERF_FAKE_NVML_DIR", None)
    if nvml_dir is not None:
        env["LLMPERF_FAKE_NVML_DIR"] = str(nvml_dir)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_snapshot_through_the_fake(nvml_dir, hgx, tmp_path):
    result = run_cli("snapshot", nvml_dir=nvml_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {k: v for k, v in hgx.items() if k != "description"}
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2, sort_keys=True) + "\n"
    out = tmp_path / "node.json"
    result = run_cli("snapshot", "--output", str(out), nvml_dir=nvml_dir)
    assert result.returncode == 0 and result.stdout == ""
    assert check_node(H200X8, load_snapshot(out), "file").ok


def test_cli_check_exit_codes(nvml_dir, hgx):
    result = run_cli("check", "--gpus", "h200x8", nvml_dir=nvml_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("node fits h200x8 (live NVML; GPUs 0,1,2,3,4,5,6,7)")
    assert "CUDA_VISIBLE_DEVICES=" + ",".join(g["uuid"] for g in hgx["gpus"]) in result.stdout
    node = copy.deepcopy(hgx)
    node["gpus"][3]["mig_enabled"] = True
    (nvml_dir / "node.json").write_text(json.dumps(node))
    result = run_cli("check", "--gpus", "h200x8", nvml_dir=nvml_dir)
    assert result.returncode == 1 and "GPU 3 has MIG enabled" in result.stdout
    (nvml_dir / "node.json").write_text(json.dumps(dict(hgx, no_driver=True)))
    result = run_cli("check", "--gpus", "h200x8", nvml_dir=nvml_dir)
    assert result.returncode == 2 and "no NVIDIA driver on this machine" in result.stderr and result.stdout == ""


def test_cli_in_process(capsys, monkeypatch, nvml_dir, tmp_path):
    vm_file = NODES_DIR / "h200x1-vm.json"
    assert main(["check", "--gpus", "h200x1", "--gpu-snapshot", str(vm_file)]) == 0
    assert main(["check", "--gpus", "h200x8", "--gpu-snapshot", str(vm_file)]) == 1
    assert "8 GPUs needed, 1 found" in capsys.readouterr().out
    assert main(["check", "--gpus", "h200", "--gpu-snapshot", str(vm_file)]) == 2
    assert "malformed GPU spec" in capsys.readouterr().err
    assert main(["check", "--gpus", "h200x1", "--gpu-snapshot", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([]) == 2 and main(["check"]) == 2 and main(["bogus"]) == 2
    assert main(["--help"]) == 0
    monkeypatch.setitem(sys.modules, "pynvml", None)
    capsys.readouterr()
    assert main(["snapshot"]) == 2
    assert "no NVIDIA driver" in capsys.readouterr().err


def test_probe_script_fails_cleanly_without_a_driver(tmp_path):
    env = dict(os.environ)
    env.pop("LLMPERF_FAKE_NVML_DIR", None)
    env["PYTHONPATH"] = str(FAKE_DIR)  # the fake without a node: no driver
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "h200_probe.py"), str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "no NVIDIA driver on this machine" in result.stderr
    assert "no NVIDIA driver" in (tmp_path / "out" / "probe.log").read_text()
    assert not (tmp_path / "out" / "snapshot.json").exists()




def test_the_package_runs_the_same_command_line(nvml_dir):
    result = run_cli("check", "--gpus", "h200x8", nvml_dir=nvml_dir, module="pytest_llmperf.node")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("node fits h200x8 (live NVML; GPUs 0,1,2,3,4,5,6,7)")


def test_topology_is_only_the_command():
    topology = importlib.import_module("pytest_llmperf.topology")
    # nothing of its own but the import of the command (assertion rewriting may add its "@py" helpers)
    assert not [n for n in vars(topology) if not n.startswith(("__", "@"))]


def test_cli_check_reads_every_gpu_of_the_machine(capsys, monkeypatch, nvml_dir, hgx):
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(nvml_dir))
    monkeypatch.setitem(sys.modules, "pynvml", fakemod)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # not applied: the check says which GPUs to make visible
    assert main(["check", "--gpus", "h200x8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node fits h200x8 (live NVML; GPUs 0,1,2,3,4,5,6,7)\nCUDA_VISIBLE_DEVICES=GPU-")


def test_cli_snapshot_in_process_writes_the_recorded_layout(capsys, monkeypatch, nvml_dir, hgx, tmp_path):
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(nvml_dir))
    monkeypatch.setitem(sys.modules, "pynvml", fakemod)
    out = tmp_path / "again.json"
    assert main(["snapshot", "--output", str(out)]) == 0
    assert capsys.readouterr().err == f"wrote {out}\n"
    recorded = dict(hgx)
    del recorded["description"]
    assert out.read_text() == json.dumps(recorded, indent=2, sort_keys=True) + "\n"
