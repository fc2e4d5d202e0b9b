"""Drive a workload's requests at a server: LoadSpec -> LoadResult.

Request rate is infinite (every request is dispatched at once), optionally
capped by a limit on requests in flight. aiohttp is imported when a load runs.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..metrics import RequestRecord
from .client import CHAT_ENDPOINT, build_body, is_chat_endpoint, send_request
from .datasets import SampleRequest


@dataclass(frozen=True)
class LoadSpec:
    """What to send, and where."""

    base_url: str  # e.g. "http://127.0.0.1:8000"
    model: str
    requests: Sequence[SampleRequest]
    endpoint: str = CHAT_ENDPOINT  # or "/v1/completions"
    max_concurrency: int | None = None
    ignore_eos: bool = False
    request_timeout_s: float = 6 * 3600.0
    extra_body: Mapping[str, Any] = field(default_factory=dict)

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

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.endpoint.lstrip("/")


@dataclass
class LoadResult:
    """Every request's record (in the order of the spec's requests) and the run's duration."""

    records: list[RequestRecord]
    duration_s: float


async def run_load_async(spec: LoadSpec) -> LoadResult:
    """Send every request of ``spec`` and wait for all of them."""
    import aiohttp

    in_flight_limit = spec.max_concurrency or len(spec.requests)
    limiter = asyncio.Semaphore(in_flight_limit)
    chat = is_chat_endpoint(spec.endpoint)
    url = spec.url
    bodies = [build_body(spec.endpoint, spec.model, r, spec.ignore_eos, spec.extra_body) for r in spec.requests]

    connector = aiohttp.TCPConnector(limit=in_flight_limit, limit_per_host=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def one(request: SampleRequest, body: Mapping[str, Any]) -> RequestRecord:
            async with limiter:
                return await send_request(session, url, body, request, chat, spec.request_timeout_s)

        started_s = time.perf_counter()
        records = await asyncio.gather(*(one(r, b) for r, b in zip(spec.requests, bodies)))
        duration_s = time.perf_counter() - started_s
    return LoadResult(list(records), duration_s)


_STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


async def _interruptible(spec: LoadSpec) -> LoadResult:
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
        return await run_load_async(spec)
    except asyncio.CancelledError:
        if received:
            raise KeyboardInterrupt(f"signal {received[0]} during the load") from None
        raise
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


def run_load(spec: LoadSpec) -> LoadResult:
    """Synchronous entry: runs the load in a fresh event loop."""
    return asyncio.run(_interruptible(spec))
