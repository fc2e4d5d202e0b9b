"""The client's check of its own measurement: was the load generator the bottleneck?

A verdict must not call a regression when the client was the slow part
(CPU taken by other processes, an event loop that could not keep up). Each
load run measures, over the measured load only (not the warm-up):

- Event-loop lag: a timer on the client's loop, due every ``LAG_INTERVAL_S``,
  notes how late each tick ran. Timers and socket reads are served by the
  same loop iterations, so a tick's lateness is how long data that became
  readable at the tick's due time waited before ``data_received`` stamped it
  (an upper bound: a timer runs after that iteration's reads). A quiet loop
  shows up to about 1 ms here: the poller sleeps in whole milliseconds
  (epoll rounds its timeout up), a rounding readable sockets never see.
- CPU: the client process's CPU time over the load's wall time (100 = one
  core busy), and the whole machine's busy share over the same window, so a
  reader sees whether something else held the cores.
- Coalesced reads: network reads that carried more than one output chunk of
  one stream. The clock is read once per network read, so chunks that came
  in one read share one timestamp, and their inter-token gap reads 0.0: the
  earlier chunk was stamped at least one token late (the client read late,
  or the server wrote late and its writes merged). Counted from the records
  after the load, at no cost on the hot path. The kernel's arrival time
  itself is out of reach: asyncio reads TCP sockets with ``recv``, which
  drops any ``SO_TIMESTAMPNS`` ancillary data, and ``SIOCGSTAMP`` answers
  ENOENT on a TCP socket (checked on Linux 6.x).

Several client processes each measure their own; ``combine`` merges them:
the worst lag (highest p99 and max, tick-weighted mean), CPU summed and the
busiest process's, reads summed, the machine's busiest view.
"""

from __future__ import annotations

import asyncio
from array import array
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Sequence

from ..metrics import RequestRecord, percentile

# 10 ms: stalls of a decode step's length (5-50 ms between tokens) are what
# distort ITL and TPOT, and every stall of 10 ms or more is caught by at least
# one tick; 100 ticks a second cost the loop a few hundred microseconds of CPU
# (well under 0.1% of a core), and the epoll millisecond rounding stays small
# beside the interval.
LAG_INTERVAL_S = 0.010
MS_PER_S = 1000.0

# Whether these figures make a measurement distorted is the verdict's to say (``verdict.distortions``).


@dataclass(frozen=True)
class ClientHealth:
    """How well the client kept up during the measured load (see the module doc for what each figure means)."""

    duration_s: float  # wall time measured (the longest process's)
    loop_lag_ticks: int  # timer ticks observed (all processes)
    loop_lag_mean_ms: float  # mean lateness of a tick (tick-weighted over processes)
    loop_lag_p99_ms: float  # 99th percentile lateness (the worst process's)
    loop_lag_max_ms: float  # the latest tick (any process)
    cpu_s: float  # CPU time of the client processes (user + system, all threads), summed
    cpu_pct: float  # their CPU over wall time, summed: 100 = one core busy
    cpu_pct_max_process: float  # the busiest client process's: near 100 means it was CPU-bound
    output_reads: int  # network reads that carried at least one output chunk (successful requests)
    coalesced_reads: int  # of those, reads that carried more than one output chunk of the stream
    system_cpu_pct: float | None = None  # the whole machine busy over the load, % of all its cores
    cpu_count: int | None = None  # logical cores of the machine
    processes: int = 1  # client processes measured
    lag_interval_ms: float = LAG_INTERVAL_S * MS_PER_S

    @property
    def coalesced_reads_pct(self) -> float:
        return 100.0 * self.coalesced_reads / self.output_reads if self.output_reads else 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able figures, ``coalesced_reads_pct`` included."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["coalesced_reads_pct"] = self.coalesced_reads_pct
        return out

    def line(self) -> str:
        """One line for a report, e.g. ``client: loop lag p99 2.1 ms (max 9.8), CPU 41% of a core, ...``."""
        parts = [f"loop lag p99 {self.loop_lag_p99_ms:.1f} ms (max {self.loop_lag_max_ms:.1f})"]
        if self.processes > 1:
            parts.append(f"CPU {self.cpu_pct:.0f}% of a core over {self.processes} processes "
                         f"(busiest {self.cpu_pct_max_process:.0f}%)")
        else:
            parts.append(f"CPU {self.cpu_pct:.0f}% of a core")
        parts.append(f"{self.coalesced_reads_pct:.1f}% reads coalesced")
        if self.system_cpu_pct is not None:
            cores = f" of {self.cpu_count} cores" if self.cpu_count else ""
            parts.append(f"machine {self.system_cpu_pct:.0f}% busy{cores}")
        return "client: " + ", ".join(parts)


# --------------------------------------------------------------------------- pure parts
def lag_summary_ms(lags_s: Sequence[float]) -> tuple[float, float, float]:
    """(mean, p99, max) of tick lateness in ms; zeros when there was no tick."""
    if not lags_s:
        return 0.0, 0.0, 0.0
    return (MS_PER_S * sum(lags_s) / len(lags_s), MS_PER_S * percentile(lags_s, 99.0), MS_PER_S * max(lags_s))


def read_counts(records: Iterable[RequestRecord]) -> tuple[int, int]:
    """(reads carrying output, reads carrying more than one output chunk) of the successful records.

    Chunks of one network read share one timestamp, so a run of zero gaps
    in ``itl_s`` is one read that carried the run's length + 1 chunks.
    """
    reads = coalesced = 0
    for rec in records:
        if not rec.success:
            continue
        gaps = rec.itl_s
        zeros = gaps.count(0.0)
        reads += len(gaps) + 1 - zeros
        if zeros:
            previous_zero = False
            for gap in gaps:
                zero = gap == 0.0
                if zero and not previous_zero:
                    coalesced += 1
                previous_zero = zero
    return reads, coalesced


def cpu_pct(cpu_s: float, wall_s: float) -> float:
    """CPU time over wall time, 100 = one core busy."""
    return 100.0 * cpu_s / wall_s if wall_s > 0 else 0.0


def busy_pct(before: Any, after: Any) -> float | None:
    """The machine's busy share between two ``psutil.cpu_times()`` readings, % of all cores.

    Busy is everything but idle and I/O wait; guest time is already inside
    user time on Linux, so it is not counted twice.
    """
    def split(t: Any) -> tuple[float, float]:
        values = t._asdict()
        total = sum(values.values()) - values.get("guest", 0.0) - values.get("guest_nice", 0.0)
        return total, values.get("idle", 0.0) + values.get("iowait", 0.0)

    total0, idle0 = split(before)
    total1, idle1 = split(after)
    total = total1 - total0
    if total <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * (total - (idle1 - idle0)) / total))


def health_of(lags_s: Sequence[float], cpu_s: float, wall_s: float, records: Iterable[RequestRecord],
              system_cpu_pct: float | None = None, cpu_count: int | None = None) -> ClientHealth:
    """One process's figures from its raw readings."""
    mean_ms, p99_ms, max_ms = lag_summary_ms(lags_s)
    reads, coalesced = read_counts(records)
    pct = cpu_pct(cpu_s, wall_s)
    return ClientHealth(wall_s, len(lags_s), mean_ms, p99_ms, max_ms, cpu_s, pct, pct, reads, coalesced,
                        system_cpu_pct, cpu_count)


def combine(parts: Sequence[ClientHealth]) -> ClientHealth:
    """Several client processes' figures as one: the worst lag, CPU summed and the busiest's, reads summed.

    ``loop_lag_p99_ms`` is the worst process's p99 (not a p99 of pooled
    ticks): one lagging process delays every stream it reads. The machine's
    busy share is the highest any process saw (their windows nearly match).
    """
    if not parts:
        raise ValueError("combine needs at least one process's figures")
    if len(parts) == 1:
        return parts[0]
    ticks = sum(p.loop_lag_ticks for p in parts)
    systems = [p.system_cpu_pct for p in parts if p.system_cpu_pct is not None]
    counts = [p.cpu_count for p in parts if p.cpu_count]
    return ClientHealth(
        duration_s=max(p.duration_s for p in parts),
        loop_lag_ticks=ticks,
        loop_lag_mean_ms=sum(p.loop_lag_mean_ms * p.loop_lag_ticks for p in parts) / ticks if ticks else 0.0,
        loop_lag_p99_ms=max(p.loop_lag_p99_ms for p in parts),
        loop_lag_max_ms=max(p.loop_lag_max_ms for p in parts),
        cpu_s=sum(p.cpu_s for p in parts),
        cpu_pct=sum(p.cpu_pct for p in parts),
        cpu_pct_max_process=max(p.cpu_pct_max_process for p in parts),
        output_reads=sum(p.output_reads for p in parts),
        coalesced_reads=sum(p.coalesced_reads for p in parts),
        system_cpu_pct=max(systems) if systems else None,
        cpu_count=max(counts) if counts else None,
        processes=sum(p.processes for p in parts),
        lag_interval_ms=parts[0].lag_interval_ms,
    )


# --------------------------------------------------------------------------- the edge: readings on a live loop
class LagMonitor:
    """A timer on the running loop, due every ``interval_s``, noting how late each tick ran.

    Each tick is scheduled ``interval_s`` after the previous one ran (a
    stalled loop gets one late tick, not a burst of catch-up ones). ``stop``
    cancels the pending tick, counting it when it is already overdue, so a
    stall at the very end is not lost; nothing stays scheduled afterwards.
    """

    def __init__(self, interval_s: float = LAG_INTERVAL_S, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self.lags_s = array("d")
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> "LagMonitor":
        if self._handle is None:
            self._loop = self._loop or asyncio.get_running_loop()
            self._schedule()
        return self

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        late = self._loop.time() - self._due
        self.lags_s.append(late if late > 0 else 0.0)  # asyncio may run a timer a clock resolution early
        self._schedule()

    def stop(self) -> array:
        """Cancel the timer; returns every tick's lateness in seconds."""
        if self._handle is not None:
            assert self._loop is not None
            self._handle.cancel()
            self._handle = None
            overdue = self._loop.time() - self._due
            if overdue > 0:
                self.lags_s.append(overdue)
        return self.lags_s


class HealthProbe:
    """Starts the readings at the measured load's start; ``finish`` gives the process's ``ClientHealth``.

    ``wall_clock``, ``cpu_clock`` (the process's CPU seconds, default
    ``time.process_time``: every thread's) and ``system_times`` (a
    psutil-style ``cpu_times()``, default psutil's; one returning None
    skips the machine's share) are injectable for tests.
    """

    def __init__(self, wall_clock: Callable[[], float], cpu_clock: Callable[[], float] | None = None,
                 system_times: Callable[[], Any] | None = None, interval_s: float = LAG_INTERVAL_S) -> None:
        import time

        self._wall = wall_clock
        self._cpu = cpu_clock or time.process_time
        self._system_times = system_times or _psutil_cpu_times()
        self.cpu_count: int | None = None
        self.monitor = LagMonitor(interval_s)
        self._start: tuple[float, float, Any] | None = None

    def start(self) -> "HealthProbe":
        self.monitor.start()
        system = _read(self._system_times)
        self._start = (self._wall(), self._cpu(), system)
        return self

    def finish(self, records: Iterable[RequestRecord]) -> ClientHealth:
        assert self._start is not None, "finish() before start()"
        cpu1, wall1 = self._cpu(), self._wall()
        system1 = _read(self._system_times)
        lags = self.monitor.stop()
        wall0, cpu0, system0 = self._start
        system = busy_pct(system0, system1) if system0 is not None and system1 is not None else None
        return health_of(lags, cpu1 - cpu0, wall1 - wall0, records, system, self.cpu_count or _cpu_count())

    def cancel(self) -> None:
        self.monitor.stop()


def _read(source: Callable[[], Any] | None) -> Any:
    if source is None:
        return None
    try:
        return source()
    except Exception:  # a machine-wide reading is a nicety, never a reason to fail the load
        return None


def _psutil_cpu_times() -> Callable[[], Any] | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - a dependency, but the load must not need it
        return None
    return psutil.cpu_times


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


__all__ = ["ClientHealth", "HealthProbe", "LagMonitor", "LAG_INTERVAL_S", "busy_pct", "combine", "cpu_pct",
           "health_of", "lag_summary_ms", "read_counts"]
