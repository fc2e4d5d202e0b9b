"""Snapshot sources: live NVML (through the fake, in process), a recorded file, the simulated node."""

from __future__ import annotations

import copy
import json

import pytest

from fakenvml.pynvml import make_module
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT, load_snapshot
from pytest_llmperf.node.sources import LiveNvml, NodeReading, RecordedFile, SimulatedNode, SnapshotSource

VM_SNAPSHOT = NODES_DIR / "h200x1-vm.json"


@pytest.fixture
def hgx():
    return json.loads(SIM_NODE_SNAPSHOT.read_text())


def test_every_source_says_whether_its_gpus_are_this_machines():
    sources: list[SnapshotSource] = [LiveNvml(), RecordedFile(VM_SNAPSHOT), SimulatedNode()]
    assert [s.live for s in sources] == [True, False, False]


# ----------------------------------------------------------------- live NVML
def test_live_reads_every_gpu_without_cuda_visible_devices(hgx):
    reading = LiveNvml(nvml=make_module(copy.deepcopy(hgx))).read()
    assert reading.ok and reading.live and reading.error == ""
    assert reading.source == "live NVML"
    assert reading.snapshot.to_json() == {k: v for k, v in hgx.items() if k != "description"}


def test_live_is_limited_to_cuda_visible_devices(hgx):
    uuid6 = hgx["gpus"][6]["uuid"]
    reading = LiveNvml(f"{uuid6},1", make_module(copy.deepcopy(hgx))).read()
    assert reading.source == f"live NVML, CUDA_VISIBLE_DEVICES={uuid6},1"
    assert [g.index for g in reading.snapshot.gpus] == [6, 1]


def test_live_takes_cuda_visible_devices_from_the_environment(hgx):
    fake = make_module(copy.deepcopy(hgx))
    assert LiveNvml.from_environment({"CUDA_VISIBLE_DEVICES": "0,1"}, fake) == LiveNvml("0,1", fake)
    assert LiveNvml.from_environment({}, fake) == LiveNvml(None, fake)
    reading = LiveNvml.from_environment({"CUDA_VISIBLE_DEVICES": ""}, fake).read()
    assert reading.source == "live NVML, CUDA_VISIBLE_DEVICES=" and reading.snapshot.gpus == ()


def test_live_without_a_driver_is_a_reading_with_the_error(hgx):
    reading = LiveNvml(nvml=make_module(dict(hgx, no_driver=True))).read()
    assert reading == NodeReading("live NVML", True, None, reading.error)
    assert not reading.ok
    assert reading.error.startswith("no NVIDIA driver on this machine (NVML: NVML Shared Library Not Found)")
    assert "--gpu-snapshot FILE" in reading.error


def test_live_with_an_unreadable_gpu_is_a_reading_with_the_error(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][5]["fail"] = {"nvmlDeviceGetMemoryInfo": 15}
    reading = LiveNvml(nvml=make_module(node)).read()
    assert reading.snapshot is None and reading.error.startswith("NVML could not read GPU 5 (GPU is lost)")


def test_live_with_a_bad_cuda_visible_devices_is_a_reading_with_the_error(hgx):
    reading = LiveNvml("0,9", make_module(copy.deepcopy(hgx))).read()
    assert reading.snapshot is None and reading.source == "live NVML"
    assert reading.error == "CUDA_VISIBLE_DEVICES entry '9' names no GPU of this node"


# ----------------------------------------------------------------- recorded
def test_a_recorded_file_is_named_as_given(tmp_path, monkeypatch):
    (tmp_path / "node.json").write_text(VM_SNAPSHOT.read_text())
    monkeypatch.chdir(tmp_path)
    reading = RecordedFile("./node.json").read()
    assert reading == NodeReading("snapshot ./node.json", False, load_snapshot(VM_SNAPSHOT))


def test_a_bad_recorded_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        RecordedFile(tmp_path / "none.json").read()


def test_the_simulated_node_is_the_recorded_hgx():
    reading = SimulatedNode().read()
    assert reading == NodeReading("simulated node hgx-h200x8.json", False, load_snapshot(SIM_NODE_SNAPSHOT))
    assert SimulatedNode(VM_SNAPSHOT).read().source == "simulated node h200x1-vm.json"
