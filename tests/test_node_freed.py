"""Wait-until-freed through a fake NVML: what was there before, and waiting on an injected clock (no real sleeps)."""

from __future__ import annotations

import copy
import json

import pytest

from fakenvml.pynvml import make_module
from pytest_llmperf.node.freed import GpusBefore, GpusNotFreed, record_gpus_before, wait_gpus_freed
from pytest_llmperf.node.snapshot import SIM_NODE_SNAPSHOT

NVML_ERROR_GPU_IS_LOST = 15


@pytest.fixture
def hgx():
    return json.loads(SIM_NODE_SNAPSHOT.read_text())


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


# ----------------------------------------------------------------- before the engine boots
def test_record_gpus_before_notes_pids_and_memory(hgx):
    node = copy.deepcopy(hgx)
    uuids = [node["gpus"][2]["uuid"], node["gpus"][3]["uuid"]]
    node["gpus"][2].update(processes=[{"pid": 4321, "used_memory_mib": 30000}], memory_used_mib=30500)
    fake = make_module(node, [{"pid": 99, "uuids": [uuids[1]], "used_memory_mib": 700}], is_alive=lambda pid: True)
    before = record_gpus_before(uuids, fake)
    assert before == GpusBefore(frozenset({4321, 99}), {uuids[0]: 30500, uuids[1]: 700})
    assert fake._init_count == 0


def test_record_gpus_before_of_no_gpus_reads_nothing():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"NVML was called: {name}")

    assert record_gpus_before([], Untouchable()) == GpusBefore()


@pytest.mark.parametrize("trouble", [
    {"no_driver": True},
    {"fail": {"nvmlDeviceGetComputeRunningProcesses": NVML_ERROR_GPU_IS_LOST}},
    {"fail": {"nvmlDeviceGetMemoryInfo": NVML_ERROR_GPU_IS_LOST}},
], ids=["no driver", "processes unreadable", "memory unreadable"])
def test_record_gpus_before_survives_nvml_hiccups(hgx, trouble):
    fake = make_module(dict(copy.deepcopy(hgx), **trouble))
    before = record_gpus_before([hgx["gpus"][0]["uuid"]], fake)
    # nothing known: wait on processes only
    assert before == GpusBefore() and before.memory_used_mib is None
    assert fake._init_count == 0


def test_record_gpus_before_of_an_unknown_gpu_is_empty(hgx):
    assert record_gpus_before(["GPU-gone"], make_module(copy.deepcopy(hgx))) == GpusBefore()


# ----------------------------------------------------------------- after it stops
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


def test_what_was_recorded_before_is_not_waited_for(hgx):
    clock = Clock()
    node = copy.deepcopy(hgx)
    uuid = node["gpus"][1]["uuid"]
    procs = [{"pid": 4321, "uuids": [uuid], "used_memory_mib": 30000}]  # another job, before the engine
    fake = make_module(node, procs, is_alive=lambda pid: pid == 4321 or clock.t < 1.0, now=clock)
    before = record_gpus_before([uuid], fake)
    procs.append({"pid": 5555, "uuids": [uuid], "used_memory_mib": 100000})  # the engine: exits at t=1.0
    waited = wait_gpus_freed([uuid], 10, nvml=fake, clock=clock, sleep=clock.sleep, ignore_pids=before.pids,
                             memory_before_mib=before.memory_used_mib)
    assert waited == pytest.approx(1.0)
