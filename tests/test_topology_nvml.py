"""The live side of topology: probe_node, gpu_processes, wait_gpus_freed and the CLI, through a fake NVML.

The fake (tests/fakenvml/pynvml.py) is injected in-process as ``nvml=``, or put
first on PYTHONPATH for subprocesses. Nothing here sleeps on real time.
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
from pytest_llmperf.topology import (
    NODES_DIR,
    SIM_NODE_SNAPSHOT,
    GpusNotFreed,
    GpuUnreadable,
    NoGpuDriver,
    check_node,
    gpu_processes,
    load_snapshot,
    main,
    probe_node,
    wait_gpus_freed,
)

TESTS = Path(__file__).parent
REPO = TESTS.parent
FAKE_DIR = TESTS / "fakenvml"
SCHEMA_GPU_KEYS = ("index", "name", "uuid", "pci_bus_id", "memory_total_mib", "memory_used_mib", "mig_enabled",
                   "ecc_uncorrected", "nvlink_peers", "processes")
H200X8 = parse_gpu_spec("h200x8")
NVML_ERROR_GPU_IS_LOST = 15


@pytest.fixture
def hgx():
    return load_snapshot(SIM_NODE_SNAPSHOT)


@pytest.fixture
def vm():
    return load_snapshot(NODES_DIR / "h200x1-vm.json")


def schema(snapshot):
    """The schema fields of a snapshot (what a probe must reproduce)."""
    gpus = []
    for g in snapshot["gpus"]:
        gpu = {k: g[k] for k in SCHEMA_GPU_KEYS}
        if "fabric_state" in g:
            gpu["fabric_state"] = g["fabric_state"]
        gpus.append(gpu)
    return {"driver_version": snapshot["driver_version"], "cuda_driver_version": snapshot["cuda_driver_version"],
            "gpus": gpus}


class Clock:
    """A fake monotonic clock whose sleep advances it."""

    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.t += seconds


def dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ----------------------------------------------------------------- probe round trip
@pytest.mark.parametrize("name", ["hgx-h200x8.json", "h200x1-vm.json"])
def test_probe_round_trips_the_shipped_snapshots(name):
    snapshot = load_snapshot(NODES_DIR / name)
    fake = make_module(copy.deepcopy(snapshot))
    probed = probe_node(fake)
    assert schema(probed) == schema(snapshot)
    # the extras the probe reads come back too (NUMA node, NVLink links up), the description does not
    assert probed == {k: v for k, v in snapshot.items() if k != "description"}
    assert fake._init_count == 0  # nvmlShutdown was called


def test_probe_round_trips_processes_and_every_field(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][2].update(processes=[{"pid": 11, "used_memory_mib": 700}, {"pid": 12, "used_memory_mib": 5000}],
                           memory_used_mib=6000, ecc_uncorrected=4, mig_enabled=True, fabric_state="in_progress")
    node["gpus"][3]["nvlink_peers"] = [0, 1]
    probed = probe_node(make_module(node))
    assert schema(probed) == schema(node)
    for key in ("driver_version", "cuda_driver_version"):
        assert isinstance(probed[key], type(hgx[key]))


def test_probe_reads_live_state_and_nvml_index_order(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"].reverse()  # file order does not matter: NVML index order does
    fake = make_module(node)
    assert [g["index"] for g in probe_node(fake)["gpus"]] == list(range(8))
    node["gpus"][0]["ecc_uncorrected"] = 9  # the fake reads the dict on every call
    assert probe_node(fake)["gpus"][7]["ecc_uncorrected"] == 9


def test_unsupported_calls_degrade_gracefully(vm):
    node = copy.deepcopy(vm)
    node["gpus"][0].update(ecc_uncorrected=None, mig_enabled=None,
                           processes=[{"pid": 5, "used_memory_mib": None}])
    node["missing"] = ["nvmlDeviceGetComputeRunningProcesses", "nvmlSystemGetCudaDriverVersion"]
    (gpu,) = probe_node(make_module(node))["gpus"]
    assert gpu["ecc_uncorrected"] == 0 and gpu["mig_enabled"] is False
    assert gpu["processes"] == [{"pid": 5, "used_memory_mib": 0}]  # through the _v2 fallback; None memory -> 0
    assert "fabric_state" not in gpu and "nvlink_links_up" not in gpu
    node["unsupported"] = ["nvmlDeviceGetP2PStatus", "nvmlDeviceGetGpuFabricInfoV"]
    node["gpus"][0]["fabric_state"] = "completed"
    (gpu,) = probe_node(make_module(node))["gpus"]
    assert gpu["fabric_state"] == "completed"  # through the older, unversioned call


def test_fabric_registration_status_is_kept(vm):
    node = copy.deepcopy(vm)
    node["gpus"][0].update(fabric_state="completed", fabric_status=NVML_ERROR_GPU_IS_LOST)
    (gpu,) = probe_node(make_module(node))["gpus"]
    assert gpu["fabric_state"] == "completed" and gpu["fabric_status"] == NVML_ERROR_GPU_IS_LOST
    assert "fabric registration failed" in check_node(parse_gpu_spec("h200x1"), {"gpus": [gpu]}, "t").problems[0]


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
        assert check_node(H200X8, node, "live NVML").problems == verdict.problems


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


# ----------------------------------------------------------------- processes and waiting
def test_gpu_processes_by_uuid(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][6]["processes"] = [{"pid": 77, "used_memory_mib": 2000}]
    procs = [{"pid": os.getpid(), "uuids": [hgx["gpus"][6]["uuid"], hgx["gpus"][1]["uuid"]], "used_memory_mib": 900}]
    fake = make_module(node, procs)
    uuids = [hgx["gpus"][6]["uuid"], hgx["gpus"][1]["uuid"], hgx["gpus"][0]["uuid"]]
    got = gpu_processes(uuids, fake)
    assert list(got) == uuids
    assert got[uuids[0]] == sorted([(77, 2000), (os.getpid(), 900)])  # by pid
    assert got[uuids[1]] == [(os.getpid(), 900)] and got[uuids[2]] == []
    assert fake._init_count == 0


def test_wait_gpus_freed_at_once(hgx):
    clock = Clock()
    procs = [{"pid": 5, "uuids": [hgx["gpus"][0]["uuid"]], "used_memory_mib": 500}]  # under the limit
    fake = make_module(copy.deepcopy(hgx), procs, is_alive=lambda pid: True, now=clock)
    waited = wait_gpus_freed([g["uuid"] for g in hgx["gpus"]], 30, nvml=fake, clock=clock, sleep=clock.sleep)
    assert waited == 0 and clock.sleeps == [] and fake._init_count == 0


def test_wait_gpus_freed_after_the_process_exits_and_releases(hgx):
    clock = Clock()
    uuid = hgx["gpus"][3]["uuid"]
    procs = [{"pid": 4321, "uuids": [uuid], "used_memory_mib": 120000, "release_delay_s": 1.0}]
    fake = make_module(copy.deepcopy(hgx), procs, is_alive=lambda pid: clock.t < 2.0, now=clock)
    waited = wait_gpus_freed([uuid], 30, poll_s=0.5, nvml=fake, clock=clock, sleep=clock.sleep)
    assert waited == pytest.approx(3.0)  # dead at 2.0, memory released 1.0 s later
    assert set(clock.sleeps) == {0.5}
    assert procs[0]["dead_at"] == pytest.approx(2.0)


def test_wait_gpus_freed_times_out_naming_gpu_pid_and_memory(hgx):
    clock = Clock()
    uuids = [hgx["gpus"][0]["uuid"], hgx["gpus"][4]["uuid"]]
    procs = [{"pid": 4321, "uuids": [uuids[1]], "used_memory_mib": 120000}]
    fake = make_module(copy.deepcopy(hgx), procs, is_alive=lambda pid: True, now=clock)
    with pytest.raises(GpusNotFreed) as info:
        wait_gpus_freed(uuids, 2, poll_s=0.75, nvml=fake, clock=clock, sleep=clock.sleep)
    text = str(info.value)
    assert text.startswith("GPUs not freed within 2 s")
    assert f"GPU 4 ({uuids[1]}): process 4321 holds 120000 MiB" in text
    assert uuids[0] not in text and "--gpu-free-timeout" in text
    assert clock.t == pytest.approx(2.0) and clock.sleeps == [0.75, 0.75, 0.5]
    assert fake._init_count == 0


def test_wait_gpus_freed_with_a_custom_limit(hgx):
    clock = Clock()
    uuid = hgx["gpus"][0]["uuid"]
    fake = make_module(copy.deepcopy(hgx), [{"pid": 9, "uuids": [uuid], "used_memory_mib": 600}],
                       is_alive=lambda pid: True, now=clock)
    with pytest.raises(GpusNotFreed, match="process 9 holds 600 MiB"):
        wait_gpus_freed([uuid], 1, nvml=fake, limit_mib=512, clock=clock, sleep=clock.sleep)


def test_wait_gpus_freed_names_an_unreadable_gpu(hgx):
    clock = Clock()
    fake = make_module(copy.deepcopy(hgx), now=clock)
    with pytest.raises(GpusNotFreed, match="NVML could not list the processes: Not Found"):
        wait_gpus_freed(["GPU-gone"], 1, nvml=fake, clock=clock, sleep=clock.sleep)


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
    gpu = probe_node(fake)["gpus"][2]
    assert gpu["processes"] == [{"pid": os.getpid(), "used_memory_mib": 120000}]
    assert gpu["memory_used_mib"] == 120000


def test_fake_dir_records_death_once_and_releases_after_the_delay(nvml_dir, hgx):
    uuid = hgx["gpus"][0]["uuid"]
    pid = dead_pid()
    write_proc(nvml_dir, pid, [uuid], 50000, release_delay_s=5.0)
    now = [1000.0]
    fake = FakeNvml.from_dir(nvml_dir, now=lambda: now[0])
    assert gpu_processes([uuid], fake)[uuid] == [(pid, 50000)]
    recorded = json.loads((nvml_dir / "procs" / f"{pid}.json").read_text())
    assert recorded["dead_at"] == 1000.0 and recorded["used_memory_mib"] == 50000
    now[0] = 1004.0
    assert gpu_processes([uuid], fake)[uuid] == [(pid, 50000)]
    assert json.loads((nvml_dir / "procs" / f"{pid}.json").read_text())["dead_at"] == 1000.0
    now[0] = 1005.0
    assert gpu_processes([uuid], fake)[uuid] == []
    assert sorted(p.name for p in (nvml_dir / "procs").iterdir()) == [f"{pid}.json"]  # kept; no temp files left


def test_fake_dir_dead_process_without_delay_is_gone_at_once(nvml_dir, hgx):
    uuid = hgx["gpus"][0]["uuid"]
    write_proc(nvml_dir, dead_pid(), [uuid], 50000)
    (nvml_dir / "procs" / "broken.json").write_text("{")  # half-written: skipped
    assert gpu_processes([uuid], FakeNvml.from_dir(nvml_dir))[uuid] == []


def test_fake_module_reads_the_environment_on_every_call(monkeypatch, nvml_dir, vm, tmp_path):
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(nvml_dir))
    assert len(probe_node(fakemod)["gpus"]) == 8
    other = tmp_path / "other"
    other.mkdir()
    (other / "node.json").write_text(json.dumps(vm))
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(other))
    assert len(probe_node(fakemod)["gpus"]) == 1
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


# ----------------------------------------------------------------- command line
def run_cli(*args, nvml_dir=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_DIR), str(REPO)]))
    env.pop("LLMPERF_FAKE_NVML_DIR", None)
    if nvml_dir is not None:
        env["LLMPERF_FAKE_NVML_DIR"] = str(nvml_dir)
    return subprocess.run([sys.executable, "-m", "pytest_llmperf.topology", *args], capture_output=True, text=True,
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


def test_wait_gpus_freed_ignores_what_was_there_before_but_not_memory_nvml_does_not_explain(hgx):
    clock = Clock()
    node = copy.deepcopy(hgx)
    uuid = node["gpus"][2]["uuid"]
    procs = [{"pid": 4321, "uuids": [uuid], "used_memory_mib": 30000}]  # another job, running before the engine
    fake = make_module(node, procs, is_alive=lambda pid: True, now=clock)
    before = {uuid: 30000}
    assert wait_gpus_freed([uuid], 5, nvml=fake, clock=clock, sleep=clock.sleep, ignore_pids={4321},
                           memory_before_mib=before) == 0
    node["gpus"][2]["memory_used_mib"] = 90000  # held by a process NVML does not list (another container)
    with pytest.raises(GpusNotFreed) as info:
        wait_gpus_freed([uuid], 1, nvml=fake, clock=clock, sleep=clock.sleep, ignore_pids={4321},
                        memory_before_mib=before)
    assert "GPU 2" in str(info.value) and "120000 MiB used, 30000 MiB before the engine booted" in str(info.value)
