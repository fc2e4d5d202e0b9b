"""Drive a workload's requests at a server: LoadSpec -> LoadResult.

Requests are sent on the arrival schedule (``arrivals``): all at once for an
infinite rate, else at seeded gamma-distributed offsets from the start,
optionally capped by a limit on requests in flight. Warm-up requests go
first and are left out of the result. One event loop drives every stream;
with ``client_processes`` > 1 the requests are dealt round-robin to that many
worker processes, which share the start instant and the monotonic clock, so
their records merge into one run. Every process that reads streams checks
its own measurement over the measured load (``health.ClientHealth``: loop
lag, CPU, coalesced reads); the result carries them combined.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..http import HttpOptions, user_agent
from ..metrics import RequestRecord
from ..tokenizer import DEFAULT_TOKENIZER
from .arrivals import check_rate, send_offsets_s
from .client import CHAT_ENDPOINT, StreamAccumulator, build_body, encode_body, is_chat_endpoint, send_request
from .datasets import SampleRequest
from .health import ClientHealth, HealthProbe, combine
from .httpstream import CLOCK, ConnectionPool, Target, build_post

PROGRESS_INTERVAL_S = 0.5
WORKER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and when."""

    base_url: str  # e.g. "http://127.0.0.1:8000"
    model: str
    requests: Sequence[SampleRequest]
    endpoint: str = CHAT_ENDPOINT  # or "/v1/completions"
    max_concurrency: int | None = None
    ignore_eos: bool = False
    request_timeout_s: float = 6 * 3600.0
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    request_rate: float = math.inf  # requests per second
    burstiness: float = 1.0  # gamma shape of the gaps; 1 = Poisson
    seed: int = 0  # of the arrival schedule
    warmup_requests: Sequence[SampleRequest] = ()  # sent first, left out of the result
    client_processes: int = 1
    http: HttpOptions = field(default_factory=HttpOptions)  # headers, API key, TLS trust
    tokenizer: Any = DEFAULT_TOKENIZER  # counts output text when a server sends no usage

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("a load needs at least one request, got none")
        if self.max_concurrency is not None and (
            isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int) or self.max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be an integer >= 1 or None, got {self.max_concurrency!r}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        check_rate(self.request_rate, self.burstiness)
        if isinstance(self.client_processes, bool) or not isinstance(self.client_processes, int) \
                or self.client_processes < 1:
            raise ValueError(f"client_processes must be an integer >= 1, got {self.client_processes!r}")
        Target.from_url(self.url)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.endpoint.lstrip("/")

    @property
    def finite_rate(self) -> bool:
        return not math.isinf(self.request_rate)


@dataclass
class LoadResult:
    """Every request's record (in the order of the spec's requests), the run's duration, and how well the
    client kept up during it (the measured load only; several client processes combined, see ``health``)."""

    records: list[RequestRecord]
    duration_s: float
    warmup_records: list[RequestRecord] = field(default_factory=list)
    client_health: ClientHealth | None = None


@dataclass(frozen=True)
class Progress:
    """How far a load has come, for a live progress line."""

    done: int
    failed: int
    total: int
    output_tokens: int  # of finished requests plus output chunks of those in flight
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]


class _Tally:
    """Counts for the progress line, kept by the loop that sends the requests."""

    def __init__(self) -> None:
        self.done = self.failed = self.finished_tokens = 0
        self.in_flight: set[StreamAccumulator] = set()

    def output_tokens(self) -> int:
        return self.finished_tokens + sum(len(acc.chunk_times_s) for acc in self.in_flight)

    def finish(self, rec: RequestRecord) -> None:
        self.done += 1
        if rec.success:
            self.finished_tokens += rec.output_tokens
        else:
            self.failed += 1


def _prepare(spec: LoadSpec, indices: Sequence[int]) -> list[bytes]:
    """The bytes of each request, encoded before the clock starts (long prompts take a while)."""
    target = Target.from_url(spec.url)
    agent = user_agent()
    headers = spec.http.request_headers()
    return [build_post(target, encode_body(build_body(spec.endpoint, spec.model, spec.requests[i], spec.ignore_eos,
                                                      spec.extra_body)), agent, headers) for i in indices]


async def _drive(spec: LoadSpec, indices: Sequence[int], prepared: list[bytes], offsets_s: Sequence[float],
                 t0_s: float | None, limit: int | None,
                 tally: _Tally | None = None) -> tuple[list[tuple[int, RequestRecord]], float, float]:
    """Send requests ``indices`` of ``spec`` at ``t0_s + offset`` (``t0_s`` None: now).

    Returns the records by index, the start instant and the end time.
    """
    chat = is_chat_endpoint(spec.endpoint)
    target = Target.from_url(spec.url)
    pool = ConnectionPool(target, spec.http.ssl_context() if target.scheme == "https" else None)
    limiter = asyncio.Semaphore(limit) if limit is not None else None
    results: list[tuple[int, RequestRecord]] = []
    tally = tally or _Tally()
    if t0_s is None:
        t0_s = CLOCK()

    async def one(i: int, request_bytes: bytes, due_s: float) -> None:
        if limiter is not None:
            await limiter.acquire()
        try:
            rec = await send_request(pool, request_bytes, spec.requests[i], chat, spec.request_timeout_s,
                                     spec.tokenizer, tally.in_flight)
        finally:
            if limiter is not None:
                limiter.release()
        rec.scheduled_s = due_s
        tally.finish(rec)
        results.append((i, rec))

    tasks = []
    try:
        for k, i in enumerate(indices):
            due_s = t0_s + offsets_s[k]
            wait_s = due_s - CLOCK()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            tasks.append(asyncio.ensure_future(one(i, prepared[k], due_s)))
        prepared.clear()
        if tasks:
            await asyncio.gather(*tasks)
        end_s = CLOCK()
    finally:
        for task in tasks:
            task.cancel()
        pool.close()
    return results, t0_s, end_s


def _limit_share(limit: int | None, worker: int, workers: int) -> int | None:
    """Worker ``worker``'s part of a limit on requests in flight (the parts sum to the limit)."""
    if limit is None:
        return None
    return limit // workers + (1 if worker < limit % workers else 0)


async def run_load_async(spec: LoadSpec, progress: ProgressCallback | None = None) -> LoadResult:
    """Send the warm-up requests, then every request of ``spec`` on its schedule, and wait for all."""
    warmup: list[RequestRecord] = []
    if spec.warmup_requests:
        warm = replace(spec, requests=list(spec.warmup_requests), warmup_requests=(), client_processes=1)
        every = range(len(warm.requests))
        got, _, _ = await _drive(warm, every, _prepare(warm, every), [0.0] * len(warm.requests), None,
                                 spec.max_concurrency)
        warmup = [rec for _, rec in sorted(got, key=lambda p: p[0])]
    offsets_s = send_offsets_s(len(spec.requests), spec.request_rate, spec.burstiness, spec.seed)
    if spec.client_processes > 1 and len(spec.requests) > 1:
        records, duration_s, health = await _run_in_workers(spec, offsets_s, progress)
    else:
        tally = _Tally()
        every = range(len(spec.requests))
        prepared = _prepare(spec, every)
        probe = HealthProbe(CLOCK)
        t0_s = CLOCK()  # just before the first dispatch
        reporter = _report_progress(progress, lambda: (tally.done, tally.failed, tally.output_tokens()),
                                    len(spec.requests), t0_s)
        probe.start()
        try:
            got, t0_s, end_s = await _drive(spec, every, prepared, offsets_s, t0_s, spec.max_concurrency, tally)
            health = probe.finish(rec for _, rec in got)
        finally:
            probe.cancel()
            if reporter is not None:
                reporter.cancel()
        records = [rec for _, rec in sorted(got, key=lambda p: p[0])]
        duration_s = end_s - t0_s
    return LoadResult(records, duration_s, warmup, health)


def _report_progress(progress: ProgressCallback | None, counts: Callable[[], tuple[int, int, int]],
                     total: int, t0_s: float) -> "asyncio.Task[None] | None":
    if progress is None:
        return None

    async def tick() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            done, failed, tokens = counts()
            progress(Progress(done, failed, total, tokens, CLOCK() - t0_s))

    return asyncio.ensure_future(tick())


# --------------------------------------------------------------------------- worker processes
def _worker_main(conn: Any, spec: LoadSpec, indices: list[int], offsets_s: list[float], limit: int | None,
                 counters: Any, slot: int) -> None:
    """A client process: wait for the start instant, drive its share, send back the records."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a run stops
    parent_pid = os.getppid()
    try:
        prepared = _prepare(spec, indices)
        conn.send(("ready", None))
        kind, t0_s = conn.recv()
        if kind != "go":
            return
        tally = _Tally()

        async def main() -> tuple[list[tuple[int, RequestRecord]], float, float, ClientHealth]:
            async def publish() -> None:
                while True:
                    if os.getppid() != parent_pid:  # the parent died (killed): stop sending
                        os._exit(1)  # the kernel closes its connections
                    counters[3 * slot], counters[3 * slot + 1] = tally.done, tally.failed
                    counters[3 * slot + 2] = tally.output_tokens()
                    await asyncio.sleep(PROGRESS_INTERVAL_S / 2)

            publisher = asyncio.ensure_future(publish())
            probe = HealthProbe(CLOCK)
            try:
                wait_s = t0_s - CLOCK()
                if wait_s > 0:  # the readings cover the load, not the wait for its start
                    await asyncio.sleep(wait_s)
                probe.start()
                got, start_s, end_s = await _drive(spec, indices, prepared, offsets_s, t0_s, limit, tally)
                return got, start_s, end_s, probe.finish(rec for _, rec in got)
            finally:
                probe.cancel()
                publisher.cancel()

        conn.send(("done", asyncio.run(main())))
    except BaseException as exc:  # the parent must hear why, never wait forever
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
    finally:
        conn.close()


async def _run_in_workers(spec: LoadSpec, offsets_s: list[float],
                          progress: ProgressCallback | None) -> tuple[list[RequestRecord], float, ClientHealth]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    # every worker needs at least one slot of a concurrency limit
    workers = min(spec.client_processes, len(spec.requests), spec.max_concurrency or len(spec.requests))
    counters = ctx.Array("q", 3 * workers, lock=False)
    shares = [list(range(w, len(spec.requests), workers)) for w in range(workers)]
    procs, pipes = [], []
    loop = asyncio.get_running_loop()
    try:
        for w, idx in enumerate(shares):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, name=f"llmperf-client-{w}", daemon=True,
                # each worker gets its own requests only (prompts can be megabytes each)
                args=(child_end, replace(spec, requests=[spec.requests[i] for i in idx], warmup_requests=()),
                      list(range(len(idx))), [offsets_s[i] for i in idx],
                      _limit_share(spec.max_concurrency, w, workers), counters, w),
            )
            proc.start()
            child_end.close()
            procs.append(proc)
            pipes.append(parent_end)
        for w, pipe in enumerate(pipes):
            kind, detail = await _recv(loop, pipe, procs[w], WORKER_START_TIMEOUT_S)
            if kind != "ready":
                raise RuntimeError(f"client process {w} failed to start: {detail}")
        t0_s = CLOCK() + 0.05  # every worker gets the message before the first send is due
        for pipe in pipes:
            pipe.send(("go", t0_s))

        def counts() -> tuple[int, int, int]:
            return (sum(counters[3 * w] for w in range(workers)), sum(counters[3 * w + 1] for w in range(workers)),
                    sum(counters[3 * w + 2] for w in range(workers)))

        reporter = _report_progress(progress, counts, len(spec.requests), t0_s)
        try:
            outcomes = [await _recv(loop, pipe, procs[w], None) for w, pipe in enumerate(pipes)]
        finally:
            if reporter is not None:
                reporter.cancel()
        records: list[RequestRecord | None] = [None] * len(spec.requests)
        end_s = t0_s
        healths = []
        for w, (kind, detail) in enumerate(outcomes):
            if kind != "done":
                raise RuntimeError(f"client process {w} failed: {detail}")
            got, _, worker_end_s, health = detail
            healths.append(health)
            end_s = max(end_s, worker_end_s)
            for local, rec in got:
                records[shares[w][local]] = rec
        missing = [i for i, rec in enumerate(records) if rec is None]
        if missing:
            raise RuntimeError(f"client processes lost {len(missing)} requests (first: #{missing[0]})")
        return records, end_s - t0_s, combine(healths)  # type: ignore[return-value]
    finally:
        for pipe in pipes:
            pipe.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


async def _recv(loop: asyncio.AbstractEventLoop, pipe: Any, proc: Any, timeout_s: float | None) -> tuple[str, Any]:
    """The next message from a worker, without blocking the loop; a dead worker is an error."""
    deadline = None if timeout_s is None else CLOCK() + timeout_s
    while True:
        if pipe.poll():
            try:
                return pipe.recv()
            except EOFError:
                return "error", f"exited with code {proc.exitcode}"
        if not proc.is_alive() and not pipe.poll():
            return "error", f"exited with code {proc.exitcode} without a result"
        if deadline is not None and CLOCK() > deadline:
            return "error", f"no answer within {timeout_s:g} s"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- entry points
_STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


async def _interruptible(spec: LoadSpec, progress: ProgressCallback | None) -> LoadResult:
    """Run the load; a stop signal cancels it cleanly, then surfaces as KeyboardInterrupt.

    The loop's own signal handling runs the callback between callbacks, so the
    interrupt cannot be lost inside a finaliser the way an exception raised at
    an arbitrary bytecode can; the previous handlers come back afterwards.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, lambda sig=sig: (received.append(sig), task.cancel()))
    try:
        return await run_load_async(spec, progress)
    except asyncio.CancelledError:
        if received:
            raise KeyboardInterrupt(f"signal {received[0]} during the load") from None
        raise
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


def run_load(spec: LoadSpec, progress: ProgressCallback | None = None) -> LoadResult:
    """Synchronous entry: runs the load in a fresh event loop."""
    return asyncio.run(_interruptible(spec, progress))
