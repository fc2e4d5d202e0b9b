"""The table of metrics, and RequestRecords -> serving metrics (pure; no IO).

Every metric is declared once in ``METRICS`` (name, unit, which way is
better, whether the reference benchmark saves it under that name, whether it
can be gated); baselines, settings, reports and the simulated engine's
virtual-time figures all read it from here.

The primary figures follow the reference serving benchmark's definitions
(see the project's metrics reference): same keys, same formulas, including the
reference's chunk-counted peak throughput and over-counted peak concurrency.
Where those two are known to mislead, a correctly named extra sits beside
them: ``max_output_tokens_per_s_token_weighted`` and
``max_concurrent_requests_exact``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

MS_PER_S = 1000.0
DETAIL_CHARS = 160  # of a failure's detail in a summary line
HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class MetricDef:
    """One metric: what it is called, in what unit, and how a change is judged."""

    name: str
    unit: str  # "tok/s", "req/s", "ms", "s", "requests", "tokens", "%"
    direction: str | None  # HIGHER or LOWER is better; None: no better direction (never gated)
    reference: bool  # the reference benchmark saves it under this same name
    description: str
    diagnostic: bool = False  # about the measurement itself, never gated

    @property
    def gateable(self) -> bool:
        return self.direction is not None and not self.diagnostic


# Latency families: the per-request times whose mean, median, std and percentiles are reported.
LATENCIES: dict[str, tuple[str, bool]] = {
    "ttft": ("time to first token", True),
    "tpot": ("time per output token after the first", True),
    "itl": ("gap between consecutive output chunks", True),
    "e2el": ("end-to-end request latency", True),
    "send_delay": ("delay of a send behind its scheduled time (finite rates)", False),
    "ttft_from_schedule": ("time to first token from the scheduled send (finite rates)", False),
    "e2el_from_schedule": ("end-to-end latency from the scheduled send (finite rates)", False),
}
LATENCY_STATS = ("mean", "median", "std")
REPRESENTATIVE_PERCENTILE = 99.0  # stands for every percentile in listings

_FIXED: tuple[MetricDef, ...] = (
    MetricDef("completed", "requests", HIGHER, True, "requests that completed"),
    MetricDef("failed", "requests", LOWER, True, "requests that failed (left out of every other figure)"),
    MetricDef("duration", "s", LOWER, True, "first dispatch to last finish"),
    MetricDef("total_input_tokens", "tokens", None, True, "prompt tokens of completed requests"),
    MetricDef("total_output_tokens", "tokens", None, True, "output tokens of completed requests"),
    MetricDef("request_throughput", "req/s", HIGHER, True, "completed requests per second"),
    MetricDef("output_throughput", "tok/s", HIGHER, True, "output tokens per second"),
    MetricDef("total_token_throughput", "tok/s", HIGHER, True, "input and output tokens per second"),
    MetricDef("request_goodput", "req/s", HIGHER, True, "requests meeting every --goodput limit per second"),
    MetricDef("max_output_tokens_per_s", "tok/s", HIGHER, True,
              "peak one-second output, counted in chunks as the reference does"),
    MetricDef("max_output_tokens_per_s_token_weighted", "tok/s", HIGHER, False,
              "peak one-second output, counted in tokens"),
    MetricDef("max_concurrent_requests", "requests", None, True,
              "peak requests in flight, counted per whole second as the reference does"),
    MetricDef("max_concurrent_requests_exact", "requests", None, False, "peak requests in flight (exact sweep)"),
    MetricDef("prompt_tokens_mismatch_pct", "%", LOWER, False,
              "mean gap between the server's prompt token counts and the workload's", diagnostic=True),
    MetricDef("warmup_completed", "requests", HIGHER, False, "warm-up requests that completed", diagnostic=True),
)


def _latency_defs() -> list[MetricDef]:
    out = []
    for family, (what, reference) in LATENCIES.items():
        for stat in (*LATENCY_STATS, percentile_key(REPRESENTATIVE_PERCENTILE)):
            out.append(MetricDef(f"{stat}_{family}_ms", "ms", LOWER, reference, f"{stat} {what}"))
    return out


def percentile_key(pct: float) -> str:
    """The reference's label: 99 -> ``p99``, 99.9 -> ``p99.9``."""
    return f"p{int(pct)}" if float(pct).is_integer() else f"p{pct}"


METRICS: dict[str, MetricDef] = {m.name: m for m in (*_FIXED, *_latency_defs())}
_PERCENTILE_RE = re.compile(r"^p(\d+(?:\.\d+)?)_(.+)_ms$")


def metric_def(name: str) -> MetricDef | None:
    """The definition of ``name``: a declared metric, or any percentile of a latency family (``p90_ttft_ms``)."""
    found = METRICS.get(name)
    if found is not None:
        return found
    match = _PERCENTILE_RE.match(name)
    if match and match.group(2) in LATENCIES and 0 < float(match.group(1)) <= 100:
        what, reference = LATENCIES[match.group(2)]
        return MetricDef(name, "ms", LOWER, reference, f"{percentile_key(float(match.group(1)))} {what}")
    return None


def gateable_metrics() -> list[str]:
    """Every gateable metric, sorted (one percentile, p99, stands for all of each latency)."""
    return sorted(name for name, m in METRICS.items() if m.gateable)


def metric_direction(name: str) -> str:
    """Which way is better for ``name``; ValueError naming the gateable metrics if it cannot be gated."""
    found = metric_def(name)
    if found is None or not found.gateable:
        raise ValueError(f"metric {name!r} cannot be gated; gateable metrics: {', '.join(gateable_metrics())}")
    return found.direction  # type: ignore[return-value]


@dataclass
class RequestRecord:
    """One request as the client saw it (times in seconds, monotonic clock)."""

    prompt_len: int  # the dataset's prompt token count
    expected_output_len: int
    start_s: float = 0.0  # just before the HTTP request is sent
    scheduled_s: float | None = None  # when the arrival schedule said to send it
    success: bool = False
    ttft_s: float = 0.0  # first output-carrying chunk - start
    itl_s: Sequence[float] = field(default_factory=list)  # gaps between consecutive output-carrying chunks
    latency_s: float = 0.0  # e2e: last output-carrying chunk - start
    output_tokens: int = 0  # usage.completion_tokens, else a tokenizer count of the text
    input_tokens: int | None = None  # usage.prompt_tokens when the server sent it
    error: str = ""  # the kind of failure, the same for every request that failed the same way
    error_detail: str = ""  # what this request saw (a body or stream excerpt): kept per request, not grouped

    @property
    def counted_input_tokens(self) -> int:
        """Input tokens: the server's usage figure when sent, else the dataset's."""
        return self.input_tokens if self.input_tokens is not None else self.prompt_len

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None for one-token outputs."""
        if self.output_tokens <= 1:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile with linear interpolation (numpy's default method).

    Position ``(n - 1) * pct / 100`` in the sorted values, interpolated between
    its neighbours. Empty input gives 0.0.
    """
    return percentile_of_sorted(sorted(values), pct)


def percentile_of_sorted(ordered: Sequence[float], pct: float) -> float:
    """``percentile`` of values already sorted (many percentiles of one list sort it once)."""
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {pct}")
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * pct / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def _stats_ms(prefix: str, values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    values_ms = [v * MS_PER_S for v in values_s]
    out = {
        f"mean_{prefix}_ms": statistics.fmean(values_ms) if values_ms else 0.0,
        f"median_{prefix}_ms": statistics.median(values_ms) if values_ms else 0.0,
        f"std_{prefix}_ms": statistics.pstdev(values_ms) if values_ms else 0.0,
    }
    for pct in percentiles:
        out[f"{percentile_key(pct)}_{prefix}_ms"] = percentile(values_ms, pct)
    return out


def chunk_times_s(rec: RequestRecord) -> list[float]:
    """Absolute times of a request's output-carrying chunks."""
    t = rec.start_s + rec.ttft_s
    times = [t]
    for gap in rec.itl_s:
        t += gap
        times.append(t)
    return times


def _peak_output_per_s(ok: Sequence[RequestRecord], origin_s: float, token_weighted: bool) -> float:
    """Largest one-second bucket (from ``origin_s``) of output chunks or tokens.

    Chunk-counted (the reference): every chunk counts 1. Token-weighted: a
    request's output tokens are spread evenly over its chunks, since the
    stream tells the total but not each chunk's share.
    """
    buckets: Counter[int] = Counter()
    for rec in ok:
        times = chunk_times_s(rec)
        weight = rec.output_tokens / len(times) if token_weighted else 1.0
        for t in times:
            buckets[int(t - origin_s)] += weight
    return float(max(buckets.values())) if buckets else 0.0


def _peak_concurrency_reference(ok: Sequence[RequestRecord], origin_s: float) -> int:
    """The reference's count: a request is in every whole second from int(start) to int(end)."""
    seconds: Counter[int] = Counter()
    for rec in ok:
        first = int(rec.start_s - origin_s)
        last = int(rec.start_s + rec.latency_s - origin_s)
        for sec in range(first, last + 1):
            seconds[sec] += 1
    return max(seconds.values()) if seconds else 0


def _peak_concurrency_exact(ok: Sequence[RequestRecord]) -> int:
    """Most requests in flight at once: a sweep over [start, end) intervals."""
    events = []
    for rec in ok:
        events.append((rec.start_s + rec.latency_s, -1))  # ends sort before starts at the same instant
        events.append((rec.start_s, +1))
    in_flight = peak = 0
    for _, delta in sorted(events):
        in_flight += delta
        peak = max(peak, in_flight)
    return peak


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    percentiles: Sequence[float] = (99,),
    goodput_slos_ms: Mapping[str, float] | None = None,
    from_schedule: bool = False,
) -> dict[str, float | int]:
    """A run's metrics, keyed like the reference benchmark's saved result.

    Failed requests only count in ``failed``. ``goodput_slos_ms`` (keys among
    ``ttft``, ``tpot``, ``e2el``; inclusive limits in ms) adds
    ``request_goodput``: requests per second meeting every limit.

    ``from_schedule`` (runs at a finite request rate) adds TTFT and E2E
    latency measured from each request's scheduled send time rather than
    its actual one (``*_ttft_from_schedule_ms``, ``*_e2el_from_schedule_ms``),
    and the send delay itself (``*_send_delay_ms``), so that requests queued
    in the client, by a concurrency limit or a late loop, cannot hide it.
    """
    ok = [r for r in records if r.success]
    failed = len(records) - len(ok)
    total_input = sum(r.counted_input_tokens for r in ok)
    total_output = sum(r.output_tokens for r in ok)

    def per_s(amount: float) -> float:
        return amount / duration_s if duration_s > 0 else 0.0

    out: dict[str, float | int] = {
        "completed": len(ok),
        "failed": failed,
        "duration": float(duration_s),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
    }
    if goodput_slos_ms:
        unknown = set(goodput_slos_ms) - set(_SLO_NAMES)
        if unknown:
            raise ValueError(f"goodput SLOs must be among {', '.join(_SLO_NAMES)}; got {', '.join(sorted(unknown))}")
        out["request_goodput"] = per_s(sum(1 for r in ok if _meets_slos(r, goodput_slos_ms)))

    origin_s = min((r.start_s for r in ok), default=0.0)
    out["max_output_tokens_per_s"] = _peak_output_per_s(ok, origin_s, token_weighted=False)
    out["max_output_tokens_per_s_token_weighted"] = _peak_output_per_s(ok, origin_s, token_weighted=True)
    out["max_concurrent_requests"] = _peak_concurrency_reference(ok, origin_s)
    out["max_concurrent_requests_exact"] = _peak_concurrency_exact(ok)

    tpots = [t for t in (r.tpot_s for r in ok) if t is not None]
    out.update(_stats_ms("ttft", [r.ttft_s for r in ok], percentiles))
    out.update(_stats_ms("tpot", tpots, percentiles))
    out.update(_stats_ms("itl", [gap for r in ok for gap in r.itl_s], percentiles))
    out.update(_stats_ms("e2el", [r.latency_s for r in ok], percentiles))
    if from_schedule:
        delays = [r.start_s - r.scheduled_s if r.scheduled_s is not None else 0.0 for r in ok]
        out.update(_stats_ms("send_delay", delays, percentiles))
        out.update(_stats_ms("ttft_from_schedule", [r.ttft_s + d for r, d in zip(ok, delays)], percentiles))
        out.update(_stats_ms("e2el_from_schedule", [r.latency_s + d for r, d in zip(ok, delays)], percentiles))
    return out


def parse_goodput(text: str) -> dict[str, float]:
    """``"ttft:2000 tpot:80"`` (or comma-separated) -> ``{"ttft": 2000.0, "tpot": 80.0}`` (ms)."""
    slos: dict[str, float] = {}
    for item in text.replace(",", " ").split():
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        if not sep or name not in _SLO_NAMES:
            raise ValueError(f"expected NAME:MS with NAME among {', '.join(_SLO_NAMES)}, got {item!r}")
        try:
            limit_ms = float(value)
        except ValueError:
            raise ValueError(f"the {name} limit must be a number of milliseconds, got {value!r}") from None
        if not math.isfinite(limit_ms) or limit_ms <= 0:
            raise ValueError(f"the {name} limit must be > 0 ms, got {value!r}")
        if name in slos:
            raise ValueError(f"{name} is given twice")
        slos[name] = limit_ms
    if not slos:
        raise ValueError(f"expected one or more NAME:MS with NAME among {', '.join(_SLO_NAMES)}")
    return slos


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``"50,90,99"`` -> ``(50.0, 90.0, 99.0)``: the percentiles reported for every latency."""
    values = []
    for item in text.replace(" ", ",").split(","):
        if not item.strip():
            continue
        try:
            pct = float(item)
        except ValueError:
            raise ValueError(f"expected percentiles such as 50,90,99, got {item!r}") from None
        if not 0 < pct < 100 and pct != 100:
            raise ValueError(f"a percentile must be within (0, 100], got {item!r}")
        values.append(pct)
    if not values:
        raise ValueError("expected one or more percentiles such as 50,90,99")
    return tuple(dict.fromkeys(values))


_SLO_NAMES = ("ttft", "tpot", "e2el")


def _meets_slos(rec: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    values_s = {"ttft": rec.ttft_s, "tpot": rec.tpot_s or 0.0, "e2el": rec.latency_s}
    return all(values_s[name] * MS_PER_S <= limit_ms for name, limit_ms in slos_ms.items())


def failure_reasons(records: Sequence[RequestRecord], limit: int = 5) -> list[str]:
    """Failures grouped by kind with counts, most frequent first (ties in order seen), at most ``limit``.

    Each line shows the first detail seen for its kind: ``HTTP 400 Bad Request (x5; first: ...)``.
    """
    counts: Counter[str] = Counter()
    first_detail: dict[str, str] = {}
    for rec in records:
        if rec.success:
            continue
        kind = rec.error or "unknown error"
        counts[kind] += 1
        if rec.error_detail:
            first_detail.setdefault(kind, rec.error_detail)
    out = []
    for kind, count in counts.most_common()[:limit]:  # Counter keeps first-seen order; most_common is stable
        detail = first_detail.get(kind)
        out.append(f"{kind} (x{count}; first: {detail[:DETAIL_CHARS]})" if detail else f"{kind} (x{count})")
    return out
