"""NVML access: the session, the error classification, probe_node and gpu_processes, through a fake NVML.

The fake (tests/fakenvml/pynvml.py) is injected in-process as ``nvml=``, or
imported as ``pynvml`` from a directory named by LLMPERF_FAKE_NVML_DIR.
"""

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
from fakenvml.pynvml import FakeNvml, make_module
from pytest_llmperf.gpus import parse_gpu_spec
from pytest_llmperf.node.check import check_node
from pytest_llmperf.node.nvml import (
    GpuUnreadable,
    NoGpuDriver,
    NvmlErrorKind,
    describe_error,
    error_kind,
    memory_used_mib_by_uuid,
    gpu_processes,
    is_unsupported,
    means_no_driver,
    nvml_session,
    probe_node,
)
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT, GpuProcess, NodeSnapshot

FAKE_DIR = Path(__file__).parent / "fakenvml"
SCHEMA_GPU_KEYS = ("index", "name", "uuid", "pci_bus_id", "memory_total_mib", "memory_used_mib", "mig_enabled",
                   "ecc_uncorrected", "nvlink_peers", "processes")
H200X8 = parse_gpu_spec("h200x8")
NVML_ERROR_GPU_IS_LOST = 15


@pytest.fixture
def hgx():
    return json.loads(SIM_NODE_SNAPSHOT.read_text())


@pytest.fixture
def vm():
    return json.loads((NODES_DIR / "h200x1-vm.json").read_text())


def snap(data):
    return NodeSnapshot.from_json(data, "test")


def schema(snapshot):
    """The schema fields of a snapshot (what a probe must reproduce)."""
    if isinstance(snapshot, NodeSnapshot):
        snapshot = snapshot.to_json()
    gpus = []
    for g in snapshot["gpus"]:
        gpu = {k: g[k] for k in SCHEMA_GPU_KEYS}
        if "fabric_state" in g:
            gpu["fabric_state"] = g["fabric_state"]
        gpus.append(gpu)
    return {"driver_version": snapshot["driver_version"], "cuda_driver_version": snapshot["cuda_driver_version"],
            "gpus": gpus}


def dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ----------------------------------------------------------------- probe round trip
@pytest.mark.parametrize("name", ["hgx-h200x8.json", "h200x1-vm.json"])
def test_probe_round_trips_the_shipped_snapshots(name):
    snapshot = json.loads((NODES_DIR / name).read_text())
    fake = make_module(copy.deepcopy(snapshot))
    probed = probe_node(fake)
    assert isinstance(probed, NodeSnapshot) and schema(probed) == schema(snapshot)
    # the extras the probe reads come back too (NUMA node, NVLink links up), the description does not
    assert probed.to_json() == {k: v for k, v in snapshot.items() if k != "description"}
    assert fake._init_count == 0  # nvmlShutdown was called


def test_probe_round_trips_processes_and_every_field(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][2].update(processes=[{"pid": 11, "used_memory_mib": 700}, {"pid": 12, "used_memory_mib": 5000}],
                           memory_used_mib=6000, ecc_uncorrected=4, mig_enabled=True, fabric_state="in_progress")
    node["gpus"][3]["nvlink_peers"] = [0, 1]
    probed = probe_node(make_module(node))
    assert schema(probed) == schema(node)
    assert probed.gpus[2].processes == (GpuProcess(11, 700), GpuProcess(12, 5000))
    for key in ("driver_version", "cuda_driver_version"):
        assert isinstance(getattr(probed, key), type(hgx[key]))


def test_probe_reads_live_state_and_nvml_index_order(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"].reverse()  # file order does not matter: NVML index order does
    fake = make_module(node)
    assert [g.index for g in probe_node(fake).gpus] == list(range(8))
    node["gpus"][0]["ecc_uncorrected"] = 9  # the fake reads the dict on every call
    assert probe_node(fake).gpus[7].ecc_uncorrected == 9


def test_unsupported_calls_degrade_gracefully(vm):
    node = copy.deepcopy(vm)
    node["gpus"][0].update(ecc_uncorrected=None, mig_enabled=None,
                           processes=[{"pid": 5, "used_memory_mib": None}])
    node["missing"] = ["nvmlDeviceGetComputeRunningProcesses", "nvmlSystemGetCudaDriverVersion"]
    probed = probe_node(make_module(node))
    (gpu,) = probed.gpus
    assert gpu.ecc_uncorrected == 0 and gpu.mig_enabled is False
    assert gpu.processes == (GpuProcess(5, 0),)  # through the _v2 fallback; None memory -> 0
    assert gpu.fabric_state is None and gpu.nvlink_links_up is None
    assert probed.cuda_driver_version == 0
    assert "fabric_state" not in probed.to_json()["gpus"][0] and "nvlink_links_up" not in probed.to_json()["gpus"][0]
    node["unsupported"] = ["nvmlDeviceGetP2PStatus", "nvmlDeviceGetGpuFabricInfoV"]
    node["gpus"][0]["fabric_state"] = "completed"
    (gpu,) = probe_node(make_module(node)).gpus
    assert gpu.fabric_state == "completed"  # through the older, unversioned call


def test_fabric_registration_status_is_kept(vm):
    node = copy.deepcopy(vm)
    node["gpus"][0].update(fabric_state="completed", fabric_status=NVML_ERROR_GPU_IS_LOST)
    probed = probe_node(make_module(node))
    (gpu,) = probed.gpus
    assert gpu.fabric_state == "completed" and gpu.fabric_status == NVML_ERROR_GPU_IS_LOST
    assert "fabric registration failed" in check_node(parse_gpu_spec("h200x1"), probed, "t").problems[0]


def test_a_gpu_that_cannot_be_read_is_named(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][5]["fail"] = {"nvmlDeviceGetMemoryInfo": NVML_ERROR_GPU_IS_LOST}
    fake = make_module(node)
    with pytest.raises(GpuUnreadable, match=r"NVML could not read GPU 5 \(GPU is lost\)") as info:
        probe_node(fake)
    assert isinstance(info.value, NoGpuDriver)  # callers that handle "no driver" handle this too
    assert fake._init_count == 0


# ----------------------------------------------------------------- every check through the fake
def _dynamic_process(node, procs):
    procs.append({"pid": os.getpid(), "uuids": [node["gpus"][5]["uuid"]], "used_memory_mib": 30000})


CHANGES = [
    ("too few GPUs", lambda n, p: n.update(gpus=n["gpus"][:4]), ["8 GPUs needed, 4 found"]),
    ("wrong product", lambda n, p: n["gpus"][1].update(name="NVIDIA H20"),
     ["GPU 1 is 'NVIDIA H20', expected 'NVIDIA H200' or 'NVIDIA H200 NVL'"]),
    ("wrong memory", lambda n, p: n["gpus"][2].update(memory_total_mib=81559),
     ["GPU 2 has 81559 MiB, expected about 143771 MiB for h200"]),
    ("MIG on", lambda n, p: n["gpus"][3].update(mig_enabled=True), ["GPU 3 has MIG enabled"]),
    ("ECC errors", lambda n, p: n["gpus"][4].update(ecc_uncorrected=7), ["GPU 4 reports 7 volatile uncorrected ECC"]),
    ("foreign process", _dynamic_process, [f"GPU 5: process {os.getpid()} holds 30000 MiB"]),
    ("static foreign process", lambda n, p: n["gpus"][6].update(processes=[{"pid": 999, "used_memory_mib": 4096}]),
     ["GPU 6: process 999 holds 4096 MiB"]),
    ("missing NVLink pair", lambda n, p: (n["gpus"][0]["nvlink_peers"].remove(7), n["gpus"][7]["nvlink_peers"].remove(0)),
     ["no NVLink P2P between GPU pairs 0-7"]),
    ("one-way NVLink", lambda n, p: n["gpus"][6]["nvlink_peers"].remove(2), ["no NVLink P2P between GPU pairs 2-6"]),
    ("fabric in progress", lambda n, p: n["gpus"][7].update(fabric_state="in_progress"),
     ["GPU 7 fabric state is 'in_progress'"]),
]


@pytest.mark.parametrize("change, expected", [(c, e) for _, c, e in CHANGES], ids=[i for i, _, _ in CHANGES])
def test_each_check_fails_alone_through_nvml(hgx, change, expected):
    node, procs = copy.deepcopy(hgx), []
    change(node, procs)
    probed = probe_node(make_module(node, procs))
    verdict = check_node(H200X8, probed, "live NVML")
    assert not verdict.ok and len(verdict.problems) == len(expected), verdict.problems
    for problem, words in zip(verdict.problems, expected):
        assert words in problem
    if not procs:  # a static snapshot gives the same verdict as its probe
        assert check_node(H200X8, snap(node), "live NVML").problems == verdict.problems


def test_all_checks_fail_together_through_nvml(hgx):
    node, procs = copy.deepcopy(hgx), []
    for _, change, _ in CHANGES[1:]:
        change(node, procs)
    problems = check_node(H200X8, probe_node(make_module(node, procs)), "live NVML").problems
    text = "\n".join(problems)
    for _, _, expected in CHANGES[1:]:
        if "NVLink" not in expected[0]:
            assert expected[0] in text
    assert len(problems) == len(CHANGES) - 2  # the two NVLink gaps are one problem listing both pairs
    assert "no NVLink P2P between GPU pairs 0-7, 2-6" in text


def test_selection_through_nvml(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][0]["mig_enabled"] = True
    node["gpus"][1]["fabric_state"] = "not_started"
    verdict = check_node(parse_gpu_spec("h200x2"), probe_node(make_module(node)), "live NVML")
    assert verdict.ok and verdict.gpu_indices == (2, 3)
    assert verdict.gpu_uuids == (hgx["gpus"][2]["uuid"], hgx["gpus"][3]["uuid"])


# ----------------------------------------------------------------- no driver
def test_no_driver_in_the_fake(vm):
    node = dict(vm, no_driver=True)
    with pytest.raises(NoGpuDriver) as info:
        probe_node(make_module(node))
    text = str(info.value)
    assert text.startswith("no NVIDIA driver on this machine (NVML: NVML Shared Library Not Found)")
    assert "--gpu-snapshot FILE" in text and "--engine=sim" in text


def test_no_driver_when_pynvml_cannot_be_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NoGpuDriver, match="no NVIDIA driver on this machine .*not importable"):
        probe_node()
    with pytest.raises(NoGpuDriver):
        gpu_processes(["GPU-x"])


def test_default_module_is_imported_lazily(monkeypatch, vm, tmp_path):
    (tmp_path / "node.json").write_text(json.dumps(vm))
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pynvml", fakemod)
    assert schema(probe_node()) == schema(vm)
    monkeypatch.delenv("LLMPERF_FAKE_NVML_DIR")
    with pytest.raises(NoGpuDriver, match="no NVIDIA driver"):
        probe_node()


def test_driver_not_loaded_and_other_init_errors(vm):
    node = dict(vm, fail={"nvmlInit": 9})
    with pytest.raises(NoGpuDriver, match=r"no NVIDIA driver on this machine \(NVML: Driver Not Loaded\)"):
        probe_node(make_module(node))
    node = dict(vm, fail={"nvmlInit": 18})
    with pytest.raises(NoGpuDriver, match="NVML could not start on this machine .*version mismatch"):
        probe_node(make_module(node))


def test_a_minimal_driverless_pynvml_shim():
    class Shim:
        class NVMLError(Exception):
            pass

        class NVMLError_LibraryNotFound(NVMLError):
            pass

        @classmethod
        def nvmlInit(cls):
            raise cls.NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    with pytest.raises(NoGpuDriver, match="no NVIDIA driver on this machine"):
        probe_node(Shim)


# ----------------------------------------------------------------- the session and the error classification
KINDS = [
    (NvmlErrorKind.INVALID_ARGUMENT, "NVML_ERROR_INVALID_ARGUMENT", "NVMLError_InvalidArgument"),
    (NvmlErrorKind.NOT_SUPPORTED, "NVML_ERROR_NOT_SUPPORTED", "NVMLError_NotSupported"),
    (NvmlErrorKind.DRIVER_NOT_LOADED, "NVML_ERROR_DRIVER_NOT_LOADED", "NVMLError_DriverNotLoaded"),
    (NvmlErrorKind.LIBRARY_NOT_FOUND, "NVML_ERROR_LIBRARY_NOT_FOUND", "NVMLError_LibraryNotFound"),
    (NvmlErrorKind.FUNCTION_NOT_FOUND, "NVML_ERROR_FUNCTION_NOT_FOUND", "NVMLError_FunctionNotFound"),
]


@pytest.mark.parametrize("kind, code_name, class_name", KINDS, ids=[k.name for k, _, _ in KINDS])
def test_error_kinds_by_code_and_by_class(kind, code_name, class_name):
    # the codes are nvidia-ml-py's (the fake's constants are checked against it below)
    assert kind.code == getattr(fakemod, code_name) and kind.class_name == class_name
    assert error_kind(fakemod.NVMLError(kind.code)) is kind  # by code alone, without the module
    assert error_kind(getattr(fakemod, class_name)(), fakemod) is kind

    class Bindings:  # bindings whose error classes carry no code
        NVMLError = type("NVMLError", (Exception,), {})

    cls = type(class_name, (Bindings.NVMLError,), {})
    setattr(Bindings, class_name, cls)
    assert error_kind(cls("no code"), Bindings) is kind
    assert error_kind(cls("no code")) is None  # a class is known only through its module


def test_what_each_kind_means():
    unsupported = {NvmlErrorKind.NOT_SUPPORTED, NvmlErrorKind.FUNCTION_NOT_FOUND}
    no_driver = {NvmlErrorKind.LIBRARY_NOT_FOUND, NvmlErrorKind.DRIVER_NOT_LOADED}
    for kind in NvmlErrorKind:
        exc = fakemod.NVMLError(kind.code)
        assert is_unsupported(exc, fakemod) is (kind in unsupported)
        assert means_no_driver(exc, fakemod) is (kind in no_driver)
    lost = fakemod.NVMLError(NVML_ERROR_GPU_IS_LOST)
    assert error_kind(lost, fakemod) is None and not is_unsupported(lost) and not means_no_driver(lost)
    assert error_kind(ValueError("not NVML")) is None
    assert error_kind(type("E", (Exception,), {"value": True})()) is None  # a bool is no code


def test_describe_error():
    assert describe_error(fakemod.NVMLError(NVML_ERROR_GPU_IS_LOST)) == "GPU is lost"

    class Silent(Exception):
        value = 3

        def __str__(self):
            raise RuntimeError("NVML is gone")

    assert describe_error(Silent()) == "Silent (code 3)"
    assert describe_error(KeyError()) == "KeyError"


def test_session_shuts_down_on_every_path_and_reports_a_failed_shutdown(vm):
    fake = make_module(copy.deepcopy(vm))
    with nvml_session(fake) as m:
        assert m is fake and fake._init_count == 1
    assert fake._init_count == 0
    with pytest.raises(KeyError):
        with nvml_session(fake):
            raise KeyError("inside")
    assert fake._init_count == 0
    node = dict(copy.deepcopy(vm), fail={"nvmlShutdown": NVML_ERROR_GPU_IS_LOST})
    seen = []
    with nvml_session(make_module(node), on_shutdown_error=seen.append):
        pass
    assert [describe_error(e) for e in seen] == ["GPU is lost"]
    with nvml_session(make_module(node)):  # without a callback: ignored
        pass


def test_no_driver_keeps_what_nvml_said(vm):
    with pytest.raises(NoGpuDriver) as info:
        with nvml_session(make_module(dict(vm, no_driver=True))):
            pass
    assert info.value.nvml_error == "NVML Shared Library Not Found"
    assert str(info.value).startswith("no NVIDIA driver on this machine")


# ----------------------------------------------------------------- processes
def test_gpu_processes_by_uuid(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][6]["processes"] = [{"pid": 77, "used_memory_mib": 2000}]
    procs = [{"pid": os.getpid(), "uuids": [hgx["gpus"][6]["uuid"], hgx["gpus"][1]["uuid"]], "used_memory_mib": 900}]
    fake = make_module(node, procs)
    uuids = [hgx["gpus"][6]["uuid"], hgx["gpus"][1]["uuid"], hgx["gpus"][0]["uuid"]]
    got = gpu_processes(uuids, fake)
    assert list(got) == uuids
    assert got[uuids[0]] == tuple(sorted([GpuProcess(77, 2000), GpuProcess(os.getpid(), 900)], key=lambda p: p.pid))
    assert got[uuids[1]] == (GpuProcess(os.getpid(), 900),) and got[uuids[2]] == ()
    # memory of processes in node.json is already in its memory_used_mib (0 here); the live one adds 900
    with nvml_session(fake) as m:
        assert memory_used_mib_by_uuid(m, uuids[:2]) == {uuids[0]: 900, uuids[1]: 900}
    assert fake._init_count == 0


# ----------------------------------------------------------------- the fake itself, from a directory
@pytest.fixture
def nvml_dir(tmp_path, hgx):
    (tmp_path / "procs").mkdir()
    (tmp_path / "node.json").write_text(json.dumps(hgx))
    return tmp_path


def write_proc(nvml_dir, pid, uuids, mib, release_delay_s=None):
    data = {"pid": pid, "uuids": uuids, "used_memory_mib": mib}
    if release_delay_s is not None:
        data["release_delay_s"] = release_delay_s
    (nvml_dir / "procs" / f"{pid}.json").write_text(json.dumps(data))


def test_fake_dir_reports_live_process_and_its_memory(nvml_dir, hgx):
    uuid = hgx["gpus"][2]["uuid"]
    write_proc(nvml_dir, os.getpid(), [uuid], 120000)
    fake = FakeNvml.from_dir(nvml_dir)
    gpu = probe_node(fake).gpus[2]
    assert gpu.processes == (GpuProcess(os.getpid(), 120000),)
    assert gpu.memory_used_mib == 120000


def test_fake_dir_records_death_once_and_releases_after_the_delay(nvml_dir, hgx):
    uuid = hgx["gpus"][0]["uuid"]
    pid = dead_pid()
    write_proc(nvml_dir, pid, [uuid], 50000, release_delay_s=5.0)
    now = [1000.0]
    fake = FakeNvml.from_dir(nvml_dir, now=lambda: now[0])
    assert gpu_processes([uuid], fake)[uuid] == (GpuProcess(pid, 50000),)
    recorded = json.loads((nvml_dir / "procs" / f"{pid}.json").read_text())
    assert recorded["dead_at"] == 1000.0 and recorded["used_memory_mib"] == 50000
    now[0] = 1004.0
    assert gpu_processes([uuid], fake)[uuid] == (GpuProcess(pid, 50000),)
    assert json.loads((nvml_dir / "procs" / f"{pid}.json").read_text())["dead_at"] == 1000.0
    now[0] = 1005.0
    assert gpu_processes([uuid], fake)[uuid] == ()
    assert sorted(p.name for p in (nvml_dir / "procs").iterdir()) == [f"{pid}.json"]  # kept; no temp files left


def test_fake_dir_dead_process_without_delay_is_gone_at_once(nvml_dir, hgx):
    uuid = hgx["gpus"][0]["uuid"]
    write_proc(nvml_dir, dead_pid(), [uuid], 50000)
    (nvml_dir / "procs" / "broken.json").write_text("{")  # half-written: skipped
    assert gpu_processes([uuid], FakeNvml.from_dir(nvml_dir))[uuid] == ()


def test_fake_module_reads_the_environment_on_every_call(monkeypatch, nvml_dir, vm, tmp_path):
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(nvml_dir))
    assert len(probe_node(fakemod).gpus) == 8
    other = tmp_path / "other"
    other.mkdir()
    (other / "node.json").write_text(json.dumps(vm))
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(other))
    assert len(probe_node(fakemod).gpus) == 1
    (other / "node.json").write_text(json.dumps(dict(vm, no_driver=True)))
    with pytest.raises(NoGpuDriver):
        probe_node(fakemod)


def test_fake_behaves_like_nvml(vm):
    fake = make_module(copy.deepcopy(vm))
    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlShutdown()
    fake.nvmlInit()
    try:
        handle = fake.nvmlDeviceGetHandleByIndex(0)
        assert fake.nvmlDeviceGetHandleByUUID(vm["gpus"][0]["uuid"]) == handle
        assert fake.nvmlDeviceGetName(handle) == "NVIDIA H200" and isinstance(fake.nvmlDeviceGetName(handle), str)
        assert fake.nvmlDeviceGetMemoryInfo(handle).total == 143771 * 1024 * 1024
        with pytest.raises(fake.NVMLError_NotFound):
            fake.nvmlDeviceGetHandleByUUID("GPU-nope")
        with pytest.raises(fake.NVMLError_InvalidArgument):
            fake.nvmlDeviceGetHandleByIndex(1)
        with pytest.raises(fake.NVMLError_NotSupported) as info:
            fake.nvmlDeviceGetGpuFabricInfo(handle, fake.c_nvmlGpuFabricInfo_t())
        assert isinstance(info.value, fake.NVMLError) and info.value.value == fake.NVML_ERROR_NOT_SUPPORTED
        assert isinstance(fake.NVMLError(fake.NVML_ERROR_FUNCTION_NOT_FOUND), fake.NVMLError_FunctionNotFound)
    finally:
        fake.nvmlShutdown()


def test_fake_constants_match_nvidia_ml_py():
    real = importlib.import_module("pynvml")
    if Path(real.__file__).resolve().parent == FAKE_DIR.resolve():
        pytest.skip("the fake is on sys.path as pynvml")
    names = ["NVML_P2P_CAPS_INDEX_NVLINK", "NVML_P2P_STATUS_OK", "NVML_P2P_STATUS_NOT_SUPPORTED", "NVML_CLOCK_SM",
             "NVML_TEMPERATURE_GPU", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_VOLATILE_ECC", "NVML_DEVICE_MIG_ENABLE",
             "NVML_GPU_FABRIC_STATE_COMPLETED", "NVML_GPU_FABRIC_STATE_IN_PROGRESS", "NVML_GPU_FABRIC_STATE_NOT_STARTED",
             "NVML_GPU_FABRIC_STATE_NOT_SUPPORTED", "NVML_NVLINK_MAX_LINKS", "nvmlGpuFabricInfo_v2", "nvmlMemory_v2",
             "nvmlClocksEventReasonHwThermalSlowdown", "nvmlClocksEventReasonSwPowerCap"]
    names += [n for n in dir(real) if n.startswith("NVML_ERROR_")]
    for name in names:
        assert getattr(fakemod, name) == getattr(real, name), name
    for name in dir(real):
        if name.startswith("NVMLError_"):
            fake_cls = getattr(fakemod, name)
            assert fake_cls().value == getattr(real, name)(0).value, name
    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetP2PStatus", "nvmlDeviceGetGpuFabricInfoV",
                 "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetCurrentClocksEventReasons"):
        assert callable(getattr(real, name)) and callable(getattr(fakemod, name))
