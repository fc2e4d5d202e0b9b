"""Control-plane requests to a running engine around a run: cache resets and metrics scrapes (a thin edge).

``reset_caches`` POSTs the engine's reset routes (the adapter's
``cache_reset_routes``) and reports what happened as a ``ResetOutcome``; it
never raises for HTTP trouble. ``EngineMetricsProbe`` scrapes ``/metrics``
once before a run, on a daemon thread every ``interval_s`` during it, and once
after; ``stop()`` hands back ``engine_metrics.summarize``'s plain summary. A
missing route, a refused connection or a body that is not metrics never fails
a run: the summary says ``engine metrics unavailable: ...``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .. import engine_metrics as em
from ..http import ControlClient, HttpFailure, HttpOptions
from .base import ResetRoute

PROMETHEUS, TRTLLM_JSON = "prometheus", "trtllm-json"
METRICS_FORMATS = (PROMETHEUS, TRTLLM_JSON)
METRICS_PATH = "/metrics"
RESET_RETRY_INTERVAL_S = 0.2
MAX_ERROR_MESSAGES = 5


@dataclass(frozen=True)
class ResetOutcome:
    done: bool  # the engine said its caches are empty
    route: str | None  # the route that answered (None: no route exists, or none could be reached)
    note: str  # one line: what happened, and the next step when it failed


def reset_caches(base_url: str, http: HttpOptions, routes: Any, timeout_s: float = 30.0, engine: str = "",
                 retry_interval_s: float = RESET_RETRY_INTERVAL_S, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> ResetOutcome:
    """Reset the engine's caches through the first of ``routes`` that exists; never raises for HTTP trouble.

    ``routes``: an adapter (its ``cache_reset_routes`` and ``name``) or a
    sequence of ``ResetRoute``. A route answering 404 is missing: the next is
    tried. A busy answer (``busy_statuses``, SGLang's 400 while requests run)
    is retried every ``retry_interval_s`` until ``timeout_s``.
    """
    if not isinstance(routes, (tuple, list)):
        engine = engine or str(getattr(routes, "name", ""))
        routes = tuple(getattr(routes, "cache_reset_routes", ()))
    who = engine or "the engine"
    if not routes:
        return ResetOutcome(False, None, f"{who} has no cache-reset route: runs after the first may find caches warm")
    deadline = clock() + timeout_s
    missing: list[ResetRoute] = []
    with ControlClient(base_url, http, timeout_s=min(10.0, max(timeout_s, 1.0))) as client:
        for route in routes:
            while True:
                try:
                    reply = client.post_json(route.path, {})
                except HttpFailure as exc:
                    return ResetOutcome(False, None, f"cache reset on {route.path} got no answer: {exc}")
                if reply.status == 200:
                    return ResetOutcome(True, route.path, f"{who} caches reset ({route.path})")
                if reply.status in route.busy_statuses:
                    if clock() + retry_interval_s > deadline:
                        return ResetOutcome(False, route.path,
                                            f"{who} still busy after {timeout_s:g} s (HTTP {reply.status} on "
                                            f"{route.path}: {reply.excerpt()}); let running requests finish first")
                    sleep(retry_interval_s)
                    continue
                if reply.status in (404, 405):
                    missing.append(route)
                    break
                return ResetOutcome(False, route.path, f"{who} answered HTTP {reply.status} on {route.path} "
                                                       f"({reply.excerpt()}); caches not reset")
    if len(missing) == 1 and missing[0].missing_hint:
        return ResetOutcome(False, None, f"{who} answered 404 on {missing[0].path}: {missing[0].missing_hint}")
    tried = " and ".join(r.path for r in missing)
    return ResetOutcome(False, None, f"{who} answered 404 on {tried}: no cache-reset route; caches not reset")


class EngineMetricsProbe:
    """Scrapes an engine's ``/metrics`` before, during (daemon thread) and after a run.

    ``fmt``: ``"prometheus"``, ``"trtllm-json"`` or None (the engine exposes
    none). ``start()`` scrapes once and starts the sampler; ``stop()`` stops
    it, scrapes once more and returns the summary. ``sample_once()`` takes one
    sample now (what the thread does every ``interval_s``).

    TRT-LLM's stats are drained by each read: every response is kept. The
    scrape in ``start()`` drains what piled up before the run (warm-up) and
    is left out of the summary (``drained_before`` counts its iterations);
    each iteration read afterwards is one sample.
    """

    def __init__(self, base_url: str, http: HttpOptions = HttpOptions(), fmt: str | None = PROMETHEUS,
                 interval_s: float = 1.0, timeout_s: float = 5.0, path: str = METRICS_PATH) -> None:
        if fmt is not None and fmt not in METRICS_FORMATS:
            raise ValueError(f"unknown engine metrics format {fmt!r}; valid: {', '.join(METRICS_FORMATS)} or None")
        if not interval_s > 0:
            raise ValueError(f"engine metrics interval must be positive, not {interval_s!r}")
        self.base_url = base_url
        self.fmt = fmt
        self.interval_s = float(interval_s)
        self.path = path
        self._client = ControlClient(base_url, http, timeout_s=timeout_s)
        self._lock = threading.Lock()  # one request at a time on the client; guards the lists below
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before: dict[str, float] | None = None
        self.after: dict[str, float] | None = None  # the full scrape after the run (Prometheus engines)
        self._samples: list[dict[str, float]] = []
        self._sample_times_s: list[float] = []  # time.perf_counter() of each sample's scrape (the client's clock)
        self._errors = 0
        self._messages: list[str] = []
        self._unavailable = "" if fmt else "this engine exposes no metrics route"
        self._drained_before = 0
        self._summary: dict[str, Any] | None = None

    # ------------------------------------------------------------- public
    @property
    def before(self) -> dict[str, float] | None:
        """The full scrape before the run (Prometheus engines; None when unavailable)."""
        return self._before if self.fmt != TRTLLM_JSON else None

    @property
    def samples(self) -> list[dict[str, float]]:
        with self._lock:
            return list(self._samples)

    @property
    def timed_samples(self) -> list[tuple[float, dict[str, float]]]:
        """Each sample with the ``time.perf_counter()`` of its scrape (drained TRT-LLM iterations share one)."""
        with self._lock:
            return list(zip(self._sample_times_s, self._samples))

    def start(self) -> "EngineMetricsProbe":
        if self._thread is not None or self._before is not None:
            raise RuntimeError("engine metrics probe already started")
        if self._unavailable:
            return self
        try:
            readings = self._scrape()
        except _Unavailable as exc:
            self._unavailable = str(exc)
            self._client.close()
            return self
        if self.fmt == TRTLLM_JSON:
            self._drained_before = len(readings)
            self._before = {}
        else:
            self._before = readings[0]
        self._thread = threading.Thread(target=self._run, name="llmperf-engine-metrics", daemon=True)
        self._thread.start()
        return self

    def sample_once(self) -> bool:
        """Take one sample now; False (counted, never raised) when the scrape failed."""
        try:
            readings = self._scrape(only=em.ROLE_NAMES)
        except _Unavailable as exc:
            self._error(str(exc))
            return False
        now_s = time.perf_counter()
        with self._lock:
            self._samples.extend(em.role_values(r) for r in readings)
            self._sample_times_s.extend(now_s for _ in readings)
        return True

    def stop(self) -> dict[str, Any]:
        if self._summary is not None:
            return self._summary
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(10.0, 4 * self.interval_s))
        if self._unavailable:
            self._summary = {**em.unavailable_summary(self._unavailable), "format": self.fmt}
            return self._summary
        after: dict[str, float] | None = None
        note = ""
        try:
            readings = self._scrape()
        except _Unavailable as exc:
            note = f"the scrape after the run failed ({exc}); counters end at the last sample"
        else:
            if self.fmt == TRTLLM_JSON:
                now_s = time.perf_counter()
                with self._lock:
                    self._samples.extend(em.role_values(r) for r in readings)
                    self._sample_times_s.extend(now_s for _ in readings)
            else:
                after = self.after = readings[0]
        finally:
            self._client.close()
        if self._errors and not note:
            note = f"{self._errors} scrape(s) failed during the run, first: {self._messages[0]}"
        before = None if self.fmt == TRTLLM_JSON else self._before
        self._summary = em.summarize(before, self.samples, after, note=note)
        self._summary["format"] = self.fmt
        self._summary["interval_s"] = self.interval_s
        self._summary["scrape_errors"] = self._errors
        if self.fmt == TRTLLM_JSON:
            self._summary["drained_before"] = self._drained_before
        return self._summary

    def __enter__(self) -> "EngineMetricsProbe":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------- internals
    def _scrape(self, only: Any = None) -> list[dict[str, float]]:
        """One GET: Prometheus -> [values]; TRT-LLM -> one values dict per drained iteration. _Unavailable otherwise.

        ``only``: the sample names to parse (the sampler's: the roles' names), to keep each scrape cheap.
        """
        with self._lock:
            try:
                reply = self._client.get(self.path)
            except HttpFailure as exc:
                raise _Unavailable(str(exc)) from None
        if reply.status != 200:
            raise _Unavailable(f"{self._client.url(self.path)} answered HTTP {reply.status}")
        text = reply.body.decode("utf-8", errors="replace")
        try:
            if self.fmt == TRTLLM_JSON:
                return [em.trtllm_values(it) for it in em.parse_trtllm_iterations(text)]
            return [em.parse_prometheus(text, only)]
        except ValueError as exc:
            raise _Unavailable(f"{self._client.url(self.path)}: {exc}") from None

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors += 1
            if text not in self._messages and len(self._messages) < MAX_ERROR_MESSAGES:
                self._messages.append(text)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_once()
            except Exception as exc:  # never raise from the thread
                self._error(f"engine metrics sampler: {type(exc).__name__}: {exc}")


class _Unavailable(Exception):
    """A scrape that gave no metrics; the message is one line."""


def probe_for(adapter: Any, base_url: str, http: HttpOptions, interval_s: float = 1.0) -> EngineMetricsProbe:
    """The probe for an engine, in the format its adapter declares."""
    return EngineMetricsProbe(base_url, http, fmt=getattr(adapter, "metrics_format", None), interval_s=interval_s)


__all__: Sequence[str] = ("ResetOutcome", "reset_caches", "EngineMetricsProbe", "probe_for",
                          "PROMETHEUS", "TRTLLM_JSON")
