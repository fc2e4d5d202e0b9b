"""The client's check of its own measurement: loop lag, CPU, coalesced reads, and how processes combine.

Live checks assert lower bounds that hold however slow or busy the machine
is (a loop blocked for a known time, CPU burnt until the thread's own CPU
clock advanced); the arithmetic is checked with injected readings.
"""

import asyncio
import json
import time
from array import array
from collections import namedtuple

import pytest

from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.health import (
    ClientHealth, HealthProbe, LagMonitor, busy_pct, combine, health_of, lag_summary_ms, read_counts,
)
from pytest_llmperf.loadgen.run import LoadSpec, run_load
from pytest_llmperf.metrics import RequestRecord
from streamserver import DONE, Sleep, StreamServer, chat_chunk, usage_chunk

BLOCK_S = 0.2
INTERVAL_S = 0.01


def burn_thread_cpu(seconds):
    """Keep this thread on the CPU until its own CPU clock advanced ``seconds`` (blocks at least that long)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


# --------------------------------------------------------------------------- the lag monitor on a live loop
def test_a_blocked_loop_shows_lag_of_at_least_the_block():
    async def main():
        monitor = LagMonitor(INTERVAL_S).start()
        await asyncio.sleep(3 * INTERVAL_S)  # a few ordinary ticks
        time.sleep(BLOCK_S)  # the loop cannot run anything meanwhile
        await asyncio.sleep(2 * INTERVAL_S)
        return monitor.stop()

    lags = asyncio.run(main())
    # the tick pending when the block began was due at most one interval into it
    assert max(lags) >= BLOCK_S - INTERVAL_S
    assert len(lags) >= 2


def test_a_stopped_monitor_leaves_nothing_scheduled_and_takes_no_more_ticks():
    async def main():
        loop = asyncio.get_running_loop()
        monitor = LagMonitor(INTERVAL_S).start()
        await asyncio.sleep(3 * INTERVAL_S)
        pending = monitor._handle
        lags = monitor.stop()
        ticks = len(lags)
        await asyncio.sleep(5 * INTERVAL_S)  # the loop runs on: a live timer would tick again
        live = [h for h in loop._scheduled if not h.cancelled() and getattr(h, "_callback", None) == monitor._tick]
        return pending, ticks, len(monitor.lags_s), monitor.running, live

    pending, ticks, after, running, live = asyncio.run(main())
    assert pending is not None and pending.cancelled()
    assert after == ticks and not running and live == []


def test_a_stall_at_the_very_end_is_counted_when_the_monitor_stops():
    async def main():
        monitor = LagMonitor(INTERVAL_S).start()
        time.sleep(5 * INTERVAL_S)  # the first tick never gets to run
        return monitor.stop()

    lags = asyncio.run(main())
    assert len(lags) == 1 and lags[0] >= 4 * INTERVAL_S


def test_the_monitor_refuses_a_useless_interval():
    with pytest.raises(ValueError, match="interval_s"):
        LagMonitor(0.0)


# --------------------------------------------------------------------------- pure figures
def test_lag_summary_in_milliseconds():
    assert lag_summary_ms([]) == (0.0, 0.0, 0.0)
    mean, p99, worst = lag_summary_ms([0.001] * 99 + [0.101])
    assert mean == pytest.approx(2.0) and worst == pytest.approx(101.0)
    assert p99 == pytest.approx(1.0 + 0.01 * 100.0)  # numpy's linear interpolation between 1 ms and 101 ms


def record(itl, success=True):
    rec = RequestRecord(prompt_len=1, expected_output_len=len(itl) + 1, start_s=0.0)
    rec.success, rec.itl_s = success, array("d", itl)
    return rec


def test_reads_are_counted_from_shared_timestamps():
    # 6 chunks: 1 | 2 3 | 4 | 5 6 ... as gaps: one read of 1, one of 2, one of 1, one of 2 -> 4 reads, 2 coalesced
    assert read_counts([record([0.01, 0.0, 0.02, 0.01, 0.0])]) == (4, 2)
    # a run of zeros is one read carrying several chunks, counted once
    assert read_counts([record([0.0, 0.0, 0.0])]) == (1, 1)
    # one chunk per read: nothing coalesced; failed requests are left out
    assert read_counts([record([0.01, 0.02]), record([0.0], success=False)]) == (3, 0)
    assert read_counts([record([])]) == (1, 0)  # a single chunk is one read


def test_busy_share_of_the_machine_from_two_cpu_time_readings():
    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    before = Times(100, 0, 50, 800, 50, 0, 0, 0, 10, 0)
    after = Times(160, 0, 80, 880, 60, 0, 0, 0, 40, 0)  # +90 busy (guest is inside user), +90 idle/iowait
    assert busy_pct(before, after) == pytest.approx(50.0)
    assert busy_pct(before, before) is None


def test_the_probe_turns_injected_readings_into_cpu_shares():
    walls, cpus = iter([10.0, 12.0]), iter([1.0, 2.5])
    Times = namedtuple("Times", "user system idle")
    machine = iter([Times(0, 0, 0), Times(300, 100, 100)])

    async def main():
        probe = HealthProbe(lambda: next(walls), lambda: next(cpus), lambda: next(machine)).start()
        probe.cpu_count = 2
        return probe.finish([record([0.01])])

    health = asyncio.run(main())
    assert health.duration_s == pytest.approx(2.0) and health.cpu_s == pytest.approx(1.5)
    assert health.cpu_pct == pytest.approx(75.0) and health.cpu_pct_max_process == pytest.approx(75.0)
    assert health.system_cpu_pct == pytest.approx(80.0) and health.cpu_count == 2
    assert (health.output_reads, health.coalesced_reads, health.processes) == (2, 0, 1)


def test_a_machine_reading_that_fails_is_left_out_not_fatal():
    def broken():
        raise OSError("no /proc")

    async def main():
        return HealthProbe(time.perf_counter, system_times=broken).start().finish([])

    assert asyncio.run(main()).system_cpu_pct is None


def part(**kw):
    base = dict(duration_s=10.0, loop_lag_ticks=100, loop_lag_mean_ms=1.0, loop_lag_p99_ms=2.0, loop_lag_max_ms=3.0,
                cpu_s=4.0, cpu_pct=40.0, cpu_pct_max_process=40.0, output_reads=1000, coalesced_reads=10,
                system_cpu_pct=50.0, cpu_count=8)
    base.update(kw)
    return ClientHealth(**base)


def test_worker_processes_combine_into_worst_lag_and_summed_cpu():
    a = part()
    b = part(duration_s=11.0, loop_lag_ticks=300, loop_lag_mean_ms=3.0, loop_lag_p99_ms=9.0, loop_lag_max_ms=4.0,
             cpu_s=9.0, cpu_pct=80.0, cpu_pct_max_process=80.0, output_reads=3000, coalesced_reads=290,
             system_cpu_pct=70.0)
    both = combine([a, b])
    assert both.processes == 2 and both.duration_s == 11.0
    assert both.loop_lag_ticks == 400 and both.loop_lag_mean_ms == pytest.approx(2.5)  # tick-weighted
    assert (both.loop_lag_p99_ms, both.loop_lag_max_ms) == (9.0, 4.0)  # the worst of each
    assert (both.cpu_s, both.cpu_pct, both.cpu_pct_max_process) == (13.0, 120.0, 80.0)
    assert (both.output_reads, both.coalesced_reads) == (4000, 300) and both.coalesced_reads_pct == 7.5
    assert both.system_cpu_pct == 70.0 and both.cpu_count == 8
    assert combine([a]) is a
    with pytest.raises(ValueError):
        combine([])


def test_report_forms():
    h = part(loop_lag_p99_ms=2.1, loop_lag_max_ms=9.8, cpu_pct=41.0, output_reads=1000, coalesced_reads=3,
             system_cpu_pct=63.0, cpu_count=2)
    assert h.line() == ("client: loop lag p99 2.1 ms (max 9.8), CPU 41% of a core, 0.3% reads coalesced, "
                        "machine 63% busy of 2 cores")
    data = json.loads(json.dumps(h.to_json()))
    assert data["loop_lag_p99_ms"] == 2.1 and data["coalesced_reads_pct"] == pytest.approx(0.3)
    assert data["lag_interval_ms"] == 10.0 and data["processes"] == 1
    two = combine([h, part(cpu_pct=90.0, cpu_pct_max_process=90.0)])
    assert "CPU 131% of a core over 2 processes (busiest 90%)" in two.line()
    assert "machine" not in part(system_cpu_pct=None).line()


def test_health_of_a_process_without_ticks_or_output():
    h = health_of([], 0.0, 0.0, [])
    assert (h.loop_lag_ticks, h.loop_lag_p99_ms, h.cpu_pct, h.coalesced_reads_pct) == (0, 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- on a real load
def reqs(n, out=4):
    return [SampleRequest(f"r{i} x", 2, out) for i in range(n)]


def test_a_load_carries_its_health_and_a_busy_client_shows_it():
    """CPU burnt and a loop blocked inside the measured load show in its figures (warm-up excluded)."""
    script = lambda body: [chat_chunk(role="assistant", content=""), chat_chunk(content="a"), Sleep(1.0),
                           chat_chunk(content=" b"), usage_chunk(2, 2), DONE]
    burnt = []

    def progress(_):
        if not burnt:  # the first progress line comes 0.5 s in, while every stream waits on the server
            burn_thread_cpu(BLOCK_S)
            burnt.append(True)

    with StreamServer(script) as server:
        spec = LoadSpec(base_url=server.base_url, model="m", requests=reqs(3), warmup_requests=reqs(1))
        result = run_load(spec, progress)
    health = result.client_health
    assert burnt and isinstance(health, ClientHealth) and health.processes == 1
    assert health.cpu_s >= BLOCK_S  # the burn alone took this much of the process's CPU
    assert health.cpu_pct > 0 and health.duration_s >= 1.0
    assert health.loop_lag_max_ms >= (BLOCK_S - INTERVAL_S) * 1000  # the loop was blocked while it burnt
    assert health.loop_lag_ticks >= 2
    # the measured streams' reads only (at most two each: their chunks come a second apart), not the warm-up's
    assert health.output_reads == read_counts(result.records)[0] <= 6


def test_a_server_writing_two_events_at_once_shows_every_read_coalesced():
    pair = lambda a, b: chat_chunk(content=a) + chat_chunk(content=b)  # one write, two output events
    script = lambda body: [chat_chunk(role="assistant", content=""), pair("a", " b"), Sleep(0.05), pair(" c", " d"),
                           usage_chunk(2, 4), DONE]
    with StreamServer(script) as server:
        result = run_load(LoadSpec(base_url=server.base_url, model="m", requests=reqs(2)))
    health = result.client_health
    assert all(r.success for r in result.records)
    # every read carried at least two output chunks (a late client only merges more)
    assert health.output_reads >= 2 and health.coalesced_reads == health.output_reads
    assert health.coalesced_reads_pct == 100.0
