"""The typed node snapshot: JSON in and out, validation, CUDA_VISIBLE_DEVICES, hardware only. Pure."""

import dataclasses
import json

import pytest

from pytest_llmperf.gpus import parse_gpu_spec
from pytest_llmperf.node.check import check_node
from pytest_llmperf.node.snapshot import (
    NODES_DIR,
    SIM_NODE_SNAPSHOT,
    GpuProcess,
    GpuState,
    NodeSnapshot,
    hardware_only,
    load_snapshot,
    restrict_to_visible,
)

RECORDED = sorted(NODES_DIR.glob("*.json"))
H200X8 = parse_gpu_spec("h200x8")


def write(tmp_path, data):
    path = tmp_path / "node.json"
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------- JSON round trip
def test_there_are_recorded_nodes():
    assert {p.name for p in RECORDED} >= {"hgx-h200x8.json", "h200x1-vm.json"}


@pytest.mark.parametrize("path", RECORDED, ids=[p.name for p in RECORDED])
def test_every_recorded_node_round_trips(path):
    data = json.loads(path.read_text())
    snapshot = load_snapshot(path)
    assert snapshot.to_json() == data
    assert NodeSnapshot.from_json(snapshot.to_json(), "again") == snapshot
    # byte for byte in the layout the snapshot command writes
    assert json.dumps(snapshot.to_json(), indent=2, sort_keys=True) + "\n" == path.read_text()


def test_the_recorded_hgx_node_as_typed_values():
    hgx = load_snapshot(SIM_NODE_SNAPSHOT)
    assert hgx.driver_version == "570.133.20" and hgx.cuda_driver_version == 12080
    assert hgx.description and "8x H200" in hgx.description
    assert len(hgx.gpus) == 8 and all(isinstance(g, GpuState) for g in hgx.gpus)
    assert all(g.fabric_state == "completed" and g.fabric_status is None for g in hgx.gpus)
    assert len({g.uuid for g in hgx.gpus}) == 8
    assert all(sorted(g.nvlink_peers + (g.index,)) == list(range(8)) for g in hgx.gpus)
    assert all(g.processes == () and g.memory_used_mib == 0 and g.mig_enabled is False for g in hgx.gpus)
    assert check_node(H200X8, hgx, "sim").ok
    assert check_node(parse_gpu_spec("h200x1"), hgx, "sim").gpu_indices == (0,)


def test_the_recorded_single_gpu_vm():
    vm = load_snapshot(NODES_DIR / "h200x1-vm.json")
    (gpu,) = vm.gpus
    assert gpu.name == "NVIDIA H200" and gpu.memory_total_mib == 143771
    assert gpu.nvlink_peers == () and gpu.fabric_state is None and gpu.numa_node is None
    assert "fabric_state" not in vm.to_json()["gpus"][0]
    fit = check_node(parse_gpu_spec("h200x1"), vm, "vm")
    assert fit.ok and fit.gpu_indices == (0,) and fit.gpu_uuids == (gpu.uuid,)
    assert check_node(H200X8, vm, "vm").problems == ("8 GPUs needed, 1 found",)


def test_a_minimal_snapshot_keeps_only_what_it_had(tmp_path):
    data = {"gpus": [{"index": 0, "name": "NVIDIA H200", "memory_total_mib": 143771}]}
    snapshot = load_snapshot(write(tmp_path, data))
    assert snapshot.driver_version is None and snapshot.description is None
    (gpu,) = snapshot.gpus
    assert gpu.uuid is None and gpu.memory_used_mib is None and gpu.mig_enabled is None
    # absent keys stay absent; the two lists are always written
    assert snapshot.to_json() == {"gpus": [dict(data["gpus"][0], nvlink_peers=[], processes=[])]}


def test_every_field_round_trips_and_unknown_keys_are_ignored(tmp_path):
    gpu = {"index": 3, "name": "NVIDIA H200", "uuid": "GPU-x", "pci_bus_id": "00000000:18:00.0",
           "memory_total_mib": 143771, "memory_used_mib": 6000, "mig_enabled": True, "ecc_uncorrected": 2,
           "nvlink_peers": [1, 2], "processes": [{"pid": 11, "used_memory_mib": 700}],
           "fabric_state": "completed", "fabric_status": 15, "nvlink_links_up": 17, "numa_node": 1}
    snapshot = load_snapshot(write(tmp_path, {"driver_version": "570", "cuda_driver_version": 12080,
                                              "gpus": [dict(gpu, sm_clock_mhz=1755)]}))
    (state,) = snapshot.gpus
    assert state.processes == (GpuProcess(11, 700),) and state.nvlink_peers == (1, 2)
    assert snapshot.to_json() == {"driver_version": "570", "cuda_driver_version": 12080, "gpus": [gpu]}


def test_snapshots_are_values():
    gpu = GpuState(index=0, name="NVIDIA H200", memory_total_mib=143771)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu.index = 1  # type: ignore[misc]
    assert NodeSnapshot(None, None, (gpu,)) == NodeSnapshot(None, None, (dataclasses.replace(gpu),))


# ----------------------------------------------------------------- validation
def test_bad_snapshot_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_snapshot(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_snapshot(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"gpus": [{"index": 0}]}))
    with pytest.raises(ValueError, match=r"gpus\[0\] lacks name, memory_total_mib"):
        load_snapshot(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps([]))
    with pytest.raises(ValueError, match="expected an object with a 'gpus' list"):
        load_snapshot(tmp_path / "c.json")


GPU = {"index": 0, "name": "x", "memory_total_mib": 1}


@pytest.mark.parametrize("gpus, words", [
    ([{"index": "0", "name": "x", "memory_total_mib": 1}], r"gpus\[0\]\.index must be an integer, not '0'"),
    ([dict(GPU, memory_total_mib=True)], r"gpus\[0\]\.memory_total_mib must be an integer"),
    ([GPU, GPU], "GPU index 0 appears twice"),
    (["gpu"], r"gpus\[0\] is not an object"),
    ([dict(GPU, name=3)], r"gpus\[0\]\.name must be a string"),
    ([dict(GPU, uuid=7)], r"gpus\[0\]\.uuid must be a string, not 7"),
    ([dict(GPU, memory_used_mib="lots")], r"gpus\[0\]\.memory_used_mib must be an integer"),
    ([dict(GPU, mig_enabled="no")], r"gpus\[0\]\.mig_enabled must be true or false"),
    ([dict(GPU, ecc_uncorrected=1.5)], r"gpus\[0\]\.ecc_uncorrected must be an integer"),
    ([dict(GPU, nvlink_peers=["1"])], r"gpus\[0\]\.nvlink_peers must be a list of GPU indices"),
    ([dict(GPU, processes={"pid": 1})], r"gpus\[0\]\.processes must be a list"),
    ([dict(GPU, processes=[{"pid": 1}])], r"gpus\[0\]\.processes\[0\] must be \{\"pid\": int"),
    ([dict(GPU, fabric_state=3)], r"gpus\[0\]\.fabric_state must be a string"),
])
def test_snapshot_validation_names_the_file_and_the_key(tmp_path, gpus, words):
    path = write(tmp_path, {"gpus": gpus})
    with pytest.raises(ValueError, match=words) as info:
        load_snapshot(path)
    assert str(info.value).startswith(f"GPU snapshot {path}: ")


def test_top_level_fields_are_validated_too():
    with pytest.raises(ValueError, match=r"GPU snapshot here: snapshot\.cuda_driver_version must be an integer"):
        NodeSnapshot.from_json({"cuda_driver_version": "12.8", "gpus": []}, "here")


# ----------------------------------------------------------------- CUDA_VISIBLE_DEVICES
def test_cuda_visible_devices_restricts_the_node_by_index_or_uuid():
    node = load_snapshot(SIM_NODE_SNAPSHOT)
    uuid6 = node.gpus[6].uuid
    assert [g.index for g in restrict_to_visible(node, "4,5").gpus] == [4, 5]
    assert [g.index for g in restrict_to_visible(node, f"{uuid6},1").gpus] == [6, 1]
    assert [g.index for g in restrict_to_visible(node, f" 6 , {uuid6},1").gpus] == [6, 1]  # each GPU once
    assert restrict_to_visible(node, "").gpus == ()
    kept = restrict_to_visible(node, "2")
    assert kept.driver_version == node.driver_version and kept.gpus == (node.gpus[2],)
    with pytest.raises(ValueError, match="entry '9' names no GPU"):
        restrict_to_visible(node, "0,9")
    with pytest.raises(ValueError, match="MIG device"):
        restrict_to_visible(node, "MIG-abc")


def test_restricted_node_is_checked_on_the_visible_gpus_only():
    node = load_snapshot(SIM_NODE_SNAPSHOT)
    verdict = check_node(parse_gpu_spec("h200x2"), restrict_to_visible(node, "6,7"), "t")
    assert verdict.gpu_indices == (6, 7) and verdict.gpu_uuids == (node.gpus[6].uuid, node.gpus[7].uuid)
    assert check_node(H200X8, restrict_to_visible(node, "6,7"), "t").problems == ("8 GPUs needed, 2 found",)


# ----------------------------------------------------------------- hardware only
def test_hardware_only_clears_processes_and_memory_in_use():
    node = load_snapshot(SIM_NODE_SNAPSHOT)
    busy = dataclasses.replace(node, gpus=tuple(
        dataclasses.replace(g, processes=(GpuProcess(4242, 70000),), memory_used_mib=71000, mig_enabled=g.index == 3)
        for g in node.gpus))
    problems = check_node(H200X8, busy, "t").problems
    assert any("process 4242 holds 70000 MiB" in p for p in problems)
    bare = hardware_only(busy)
    assert all(g.processes == () and g.memory_used_mib == 0 for g in bare.gpus)
    assert [g.mig_enabled for g in bare.gpus] == [g.mig_enabled for g in busy.gpus]  # the hardware stays
    assert check_node(H200X8, bare, "t").problems == ("GPU 3 has MIG enabled; disable it (nvidia-smi -i 3 -mig 0)",)
    assert busy.gpus[0].processes  # the original is untouched
