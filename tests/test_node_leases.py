"""GPU leases by UUID: all or nothing, waiting on an injected clock, release on every path, a killed holder's
locks freed by the OS, port reservations, holder records, and the pure co-location check.

Every test uses its own lock directory under tmp_path; waits run on a fake clock whose sleep can release a
holder, so nothing depends on the machine's speed.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import ExitStack

import pytest

from pytest_llmperf.engines import base as engine_base
from pytest_llmperf.node import leases
from pytest_llmperf.node.leases import (
    DEFAULT_LOCK_DIR,
    Lease,
    LeaseError,
    LeaseRecord,
    colocated_with,
    lease_gpus,
    live_others,
    lock_dir_for,
    read_records,
)

NODE = tuple(f"GPU-{i}" for i in range(8))
OTHER_NODE = tuple(f"GPU-x{i}" for i in range(8))
HOST = socket.gethostname()


class Clock:
    """A fake monotonic clock whose sleep advances it and then calls ``on_sleep(n)`` (n: sleeps so far)."""

    def __init__(self, on_sleep=None):
        self.t = 0.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


def no_sleep(seconds):
    raise AssertionError(f"slept {seconds} s where the GPUs were free")


def lease(lock_dir, count, label, candidates=NODE, **kwargs):
    kwargs.setdefault("sleep", no_sleep)
    return lease_gpus(lock_dir, candidates, count, label, NODE, **kwargs)


def taken_now(lock_dir, count, candidates=NODE) -> bool:
    """Whether ``count`` of ``candidates`` can be leased at once (leased and released again)."""
    try:
        with lease(lock_dir, count, "probe", candidates=candidates, timeout_s=0):
            return True
    except LeaseError:
        return False


# ---------------------------------------------------------------------------------------------- where


def test_lock_dir_option_then_environment_then_default(tmp_path):
    assert DEFAULT_LOCK_DIR.name == "pytest-llmperf-gpu-locks"
    env = {"LLMPERF_GPU_LOCK_DIR": str(tmp_path / "env")}
    assert lock_dir_for(str(tmp_path / "opt"), env) == tmp_path / "opt"
    assert lock_dir_for(None, env) == tmp_path / "env"
    assert lock_dir_for(None, {}) == DEFAULT_LOCK_DIR
    assert lock_dir_for("", {"LLMPERF_GPU_LOCK_DIR": ""}) == DEFAULT_LOCK_DIR


def test_directory_is_shared_and_sticky_and_lock_files_lockable_by_every_account(tmp_path):
    lock_dir = tmp_path / "deep" / "locks"
    old = os.umask(0o077)
    try:
        with lease(lock_dir, 2, "sim/a (gw0)") as held:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(lock_dir).st_mode) == 0o1777
    for uuid in NODE:  # the directory's owner made every GPU's lock file of the node
        assert stat.S_IMODE(os.stat(lock_dir / f"gpu-{uuid}.lock").st_mode) == 0o666
    assert stat.S_IMODE(os.stat(lock_dir / f"port-{held.port}.lock").st_mode) == 0o666


# ---------------------------------------------------------------------------------------------- leasing


def test_two_leases_of_four_are_disjoint_and_a_third_waits_until_one_is_released(tmp_path):
    notes: list[str] = []
    with ExitStack() as holders:
        a = holders.enter_context(lease(tmp_path, 4, "sim/a (gw0)"))
        b = holders.enter_context(lease(tmp_path, 4, "sim/b (gw1)"))
        assert isinstance(a, Lease) and len(a.uuids) == len(b.uuids) == 4
        assert not set(a.uuids) & set(b.uuids)

        def release_a_on_third_sleep(n):
            if n == 3:
                holders.close()  # releases b, then a

        clock = Clock(on_sleep=release_a_on_third_sleep)
        with lease(tmp_path, 4, "sim/c (gw2)", on_wait=notes.append, clock=clock, sleep=clock.sleep,
                   poll_s=1.0, note_every_s=30.0) as c:
            assert len(c.uuids) == 4
            assert c.waited_s == 3.0
            assert clock.sleeps == [1.0, 1.0, 1.0]
    assert len(notes) == 1  # at once, then not again within note_every_s
    pid = os.getpid()
    assert re.fullmatch(
        rf"sim/c \(gw2\): waiting for 4 GPUs of 8; held by sim/a \(gw0, pid {pid}, host {re.escape(HOST)}\) "
        rf"for \d+ s, sim/b \(gw1, pid {pid}, host {re.escape(HOST)}\) for \d+ s", notes[0]), notes[0]


def test_all_or_nothing_the_free_gpus_stay_free_while_a_lease_waits(tmp_path):
    seen_free: list[bool] = []
    with ExitStack() as holders:
        big = holders.enter_context(lease(tmp_path, 6, "sim/big (gw0)"))
        assert big.uuids == NODE[:6]  # sorted UUID order

        def check_then_release(n):
            if n == 1:
                seen_free.append(taken_now(tmp_path, 2))  # the two GPUs it could take are not held while waiting
                seen_free.append(taken_now(tmp_path, 3))
            if n == 2:
                holders.close()

        clock = Clock(on_sleep=check_then_release)
        with lease(tmp_path, 4, "sim/small (gw1)", clock=clock, sleep=clock.sleep) as small:
            assert small.uuids == NODE[:4]
    assert seen_free == [True, False]


def test_tries_in_sorted_uuid_order_and_yields_the_candidates_order(tmp_path):
    preference = ("GPU-7", "GPU-3", "GPU-5", "GPU-1")
    with lease(tmp_path, 2, "sim/a (gw0)", candidates=preference) as held:
        assert held.uuids == ("GPU-3", "GPU-1")


def test_on_wait_at_once_then_every_note_interval_and_timeout_names_the_holder(tmp_path):
    notes: list[str] = []
    clock = Clock()
    with lease(tmp_path, 8, "sim/a (gw0)"):
        with pytest.raises(LeaseError) as info:
            with lease(tmp_path, 1, "sim/b (gw1)", on_wait=notes.append, clock=clock, sleep=clock.sleep,
                       poll_s=1.0, note_every_s=30.0, timeout_s=100.0):
                pytest.fail("leased GPUs that are held")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sim/b (gw1): 1 GPU of 8 not free after 100 s; held by sim/a (gw0, pid ")
    assert f"pid {os.getpid()}, host {HOST})" in message
    assert len(notes) == 4  # t = 0, 30, 60, 90
    assert all(n.startswith("sim/b (gw1): waiting for 1 GPU of 8; held by sim/a (gw0,") for n in notes)
    assert sum(clock.sleeps) == 100.0
    assert taken_now(tmp_path, 8)


def test_timeout_zero_is_one_attempt(tmp_path):
    clock = Clock()
    with lease(tmp_path, 4, "sim/a (gw0)"):
        with pytest.raises(LeaseError, match="not free after 0 s"):
            with lease(tmp_path, 5, "sim/b", clock=clock, sleep=clock.sleep, timeout_s=0):
                pass
    assert clock.sleeps == []


def test_more_gpus_than_candidates_is_a_lease_error(tmp_path):
    with pytest.raises(LeaseError) as info:
        with lease(tmp_path / "locks", 5, "sim/tp8 (gw0)", candidates=NODE[:4]):
            pass
    assert "needs 5 GPUs but only 4" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "locks").exists()


def test_zero_gpus_still_reserves_a_port_and_records_the_lease(tmp_path):
    with lease(tmp_path, 0, "sim/cpu (gw0)") as held:
        assert held.uuids == () and held.port > 0
        assert [r.record_id for r in read_records(tmp_path)] == [held.record_id]
        assert taken_now(tmp_path, 8)


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_released_and_ended_on_an_exception_in_the_block(tmp_path, error):
    with pytest.raises(error):
        with lease(tmp_path, 8, "sim/a (gw0)") as held:
            raise error("boom")
    assert taken_now(tmp_path, 8)
    (record,) = [r for r in read_records(tmp_path) if r.record_id == held.record_id]
    assert record.ended is not None and record.ended >= record.started


# ---------------------------------------------------------------------------------------------- a holder dies

CHILD = """
import sys, time
from pathlib import Path
from pytest_llmperf.node.leases import lease_gpus
uuids = sys.argv[2].split(",")
with lease_gpus(Path(sys.argv[1]), uuids, int(sys.argv[3]), sys.argv[4], uuids) as lease:
    print(lease.record_id, flush=True)
    time.sleep(600)
"""


def read_line(proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no line from child {proc.pid} in {timeout_s} s"
    return proc.stdout.readline().strip()


def test_a_killed_holders_gpus_are_released_by_the_os_and_its_record_reads_dead(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), ",".join(NODE), "4", "sim/child (gw7)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        record_id = read_line(proc)
        with pytest.raises(LeaseError, match=rf"held by sim/child \(gw7, pid {proc.pid}, host "):
            with lease(tmp_path, 5, "sim/b (gw1)", timeout_s=0):
                pass
        (child,) = [r for r in read_records(tmp_path) if r.record_id == record_id]
        assert child.alive and child.ended is None and child.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        proc.stdout.close()
    with lease(tmp_path, 8, "sim/b (gw1)", timeout_s=0) as held:
        assert len(held.uuids) == 8
    (child,) = [r for r in read_records(tmp_path) if r.record_id == record_id]
    assert child.ended is None and not child.alive


# ---------------------------------------------------------------------------------------------- directory errors


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into any directory")
def test_an_unwritable_lock_directory_is_one_line_naming_it_and_the_next_step(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(LeaseError) as info:
            with lease(read_only, 1, "sim/a (gw0)"):
                pass
        message = str(info.value)
        assert message == (f"cannot create GPU lock files in {read_only}: Permission denied; give a writable "
                           f"node-local directory with --gpu-lock-dir or LLMPERF_GPU_LOCK_DIR")
        with pytest.raises(LeaseError, match=r"cannot create GPU lock directory .*Permission denied; give a "
                                             r"writable node-local directory with --gpu-lock-dir"):
            with lease(read_only / "locks", 1, "sim/a (gw0)"):
                pass
    finally:
        read_only.chmod(0o755)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_another_accounts_gpu_lock_file_in_a_sticky_directory_is_a_lease_error(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(0o1777)
    foreign = lock_dir / "gpu-GPU-0.lock"
    foreign.touch(mode=0o666)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(LeaseError) as info:
        with lease(lock_dir, 1, "sim/a (gw0)"):
            pass
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot lock {foreign}: it belongs to another account (uid 65534)")


def test_a_path_that_is_a_file_is_a_lease_error(tmp_path):
    (tmp_path / "locks").write_text("")
    with pytest.raises(LeaseError, match="exists but is not a directory; give a writable node-local directory"):
        with lease(tmp_path / "locks", 1, "sim/a (gw0)"):
            pass


# ---------------------------------------------------------------------------------------------- ports


def test_two_concurrent_leases_never_get_the_same_port(tmp_path, monkeypatch):
    picks = iter([41000, 41000, 41001, 41000])
    monkeypatch.setattr(engine_base, "free_port", lambda host=engine_base.LOCALHOST: next(picks))
    with lease(tmp_path, 1, "sim/a (gw0)") as a:
        with lease(tmp_path, 1, "sim/b (gw1)") as b:
            assert (a.port, b.port) == (41000, 41001)
    with lease(tmp_path, 1, "sim/c (gw2)") as c:  # released with its lease
        assert c.port == 41000


def test_real_ports_of_concurrent_leases_differ(tmp_path):
    with ExitStack() as stack:
        ports = [stack.enter_context(lease(tmp_path, 1, f"sim/{i}")).port for i in range(4)]
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)


# ---------------------------------------------------------------------------------------------- records


def test_holder_record_while_leased_and_ended_after(tmp_path):
    before = time.time()
    with lease(tmp_path, 2, "sim/a (gw0)") as held:
        data = json.loads((tmp_path / f"lease-{held.record_id}.json").read_text())
        assert data == {"record_id": held.record_id, "label": "sim/a (gw0)", "pid": os.getpid(), "host": HOST,
                        "uuids": list(held.uuids), "node_uuids": list(NODE), "started": data["started"],
                        "ended": None}
        assert before <= data["started"] <= time.time()
        (record,) = read_records(tmp_path)
        assert record.alive and record.ended is None and record.uuids == held.uuids
    (record,) = read_records(tmp_path)
    assert record.ended is not None and record.alive  # this process still runs


def test_unreadable_and_partial_records_are_skipped(tmp_path):
    with lease(tmp_path, 1, "sim/a (gw0)") as held:
        (tmp_path / "lease-partial.json").write_text('{"record_id": "partial", "label": "sim/x", "pid": 1')
        (tmp_path / "lease-wrong.json").write_text('{"record_id": "wrong"}')
        (tmp_path / "lease-list.json").write_text("[1, 2]")
        assert [r.record_id for r in read_records(tmp_path)] == [held.record_id]
    assert read_records(tmp_path / "missing") == []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def write_record(lock_dir, record_id, *, pid, started, ended=None, host=HOST, label=None, node=NODE):
    lock_dir.mkdir(parents=True, exist_ok=True)
    (lock_dir / f"lease-{record_id}.json").write_text(json.dumps({
        "record_id": record_id, "label": label or f"sim/{record_id}", "pid": pid, "host": host,
        "uuids": [node[0]], "node_uuids": list(node), "started": started, "ended": ended}))


def test_ended_and_dead_records_older_than_a_day_are_pruned_on_each_lease(tmp_path):
    now = time.time()
    day = 86400.0
    gone = dead_pid()
    write_record(tmp_path, "ended-old", pid=os.getpid(), started=now - 3 * day, ended=now - 2 * day)
    write_record(tmp_path, "dead-old", pid=gone, started=now - 2 * day)
    write_record(tmp_path, "ended-recent", pid=os.getpid(), started=now - 2 * day, ended=now - 3600)
    write_record(tmp_path, "dead-recent", pid=gone, started=now - 3600)
    write_record(tmp_path, "elsewhere-old", pid=gone, started=now - 2 * day, host=HOST + "-other")
    with lease(tmp_path, 1, "sim/a (gw0)") as held:
        kept = {r.record_id for r in read_records(tmp_path)}
    assert kept == {"ended-recent", "dead-recent", "elsewhere-old", held.record_id}
    alive = {r.record_id: r.alive for r in read_records(tmp_path)}
    assert alive["dead-recent"] is False
    assert alive["elsewhere-old"] is True  # another host's record counts alive unless ended


def test_a_reused_pid_does_not_keep_a_dead_holders_record_alive(tmp_path):
    write_record(tmp_path, "reused", pid=os.getpid(), started=time.time() - 86400.0 * 365 * 60)
    (record,) = read_records(tmp_path)
    assert not record.alive


# ---------------------------------------------------------------------------------------------- co-location (pure)


def rec(record_id, started, ended=None, alive=True, node=NODE, label=None) -> LeaseRecord:
    return LeaseRecord(record_id=record_id, label=label or f"sim/{record_id}", pid=1, host="h", uuids=(node[0],),
                       node_uuids=tuple(node), started=started, ended=ended, alive=alive)


def test_colocated_with_overlap_cases():
    records = [
        rec("own", 0.0),
        rec("before", 0.0, ended=10.0),  # ended before the case started
        rec("at-start", 0.0, ended=20.0),  # ended exactly when it started: no overlap
        rec("into", 5.0, ended=25.0),  # ended during the case
        rec("after", 40.0, ended=50.0),  # started after the case ended
        rec("at-end", 30.0),  # started exactly when it ended: no overlap
        rec("during", 22.0, ended=28.0),
        rec("alive", 1.0),  # running, not ended
        rec("died", 2.0, alive=False),  # dead now, but live when the case started
        rec("dead-before", 3.0, alive=False),  # dead and not live at the start
        rec("other-node", 21.0, ended=29.0, node=OTHER_NODE),  # another node's record is ignored
    ]
    got = colocated_with(records, "own", NODE, case_start=20.0, case_end=30.0, live_at_start={"died", "alive"})
    assert got == ["sim/alive", "sim/died", "sim/into", "sim/during"]


def test_colocated_with_a_node_sharing_some_gpus_and_repeated_labels():
    records = [rec("a1", 1.0, ended=25.0, label="sim/a (gw1)"), rec("a2", 26.0, label="sim/a (gw1)"),
               rec("part", 2.0, node=("GPU-7", "GPU-z"))]
    assert colocated_with(records, "own", NODE, 20.0, 30.0, set()) == ["sim/a (gw1)", "sim/part"]
    assert colocated_with([], "own", NODE, 20.0, 30.0, set()) == []


def test_live_others_at_case_start():
    records = [rec("own", 0.0), rec("alive", 1.0), rec("ended", 1.0, ended=2.0), rec("dead", 1.0, alive=False),
               rec("other-node", 1.0, node=OTHER_NODE)]
    assert live_others(records, "own", NODE) == {"alive"}


def test_colocation_from_real_leases(tmp_path):
    with lease(tmp_path, 4, "sim/a (gw0)") as a:
        with lease(tmp_path, 4, "sim/b (gw1)") as b:
            live = live_others(read_records(tmp_path), b.record_id, NODE)
            assert live == {a.record_id}
            start = time.time()
        end = time.time()
    records = read_records(tmp_path)
    assert colocated_with(records, b.record_id, NODE, start, end, live) == ["sim/a (gw0)"]
    assert colocated_with(records, a.record_id, NODE, end + 1.0, end + 2.0, set()) == []


def test_module_keeps_filelock_and_psutil_out_until_used():
    code = ("import sys, pytest_llmperf.node.leases;"
            "print(sorted(m for m in ('filelock', 'psutil') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert leases.LOCK_DIR_ENV == "LLMPERF_GPU_LOCK_DIR"


def test_a_lease_reserves_as_many_distinct_ports_as_asked(tmp_path):
    with lease(tmp_path, 4, "sim/a", ports=3) as a, lease(tmp_path, 4, "sim/b", ports=2) as b:
        assert len(a.ports) == 3 and len(b.ports) == 2 and a.port == a.ports[0]
        assert len(set(a.ports) | set(b.ports)) == 5
