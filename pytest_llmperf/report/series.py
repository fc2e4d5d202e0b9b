"""A run's figures over time, for charts (pure).

From one run's request records, its GPU samples and the engine's scraped
metrics, ``run_series`` builds the plain lists a report draws: every
request's start, first token and end; output tokens per second over time;
the distributions of TTFT, TPOT, ITL and end-to-end latency as percentiles
0..100; GPU readings and engine gauges over time. Times are seconds from the
run's first send, on the client's clock (the samplers' timestamps are taken
on the same monotonic clock).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..metrics import RequestRecord, chunk_times_s, percentile_of_sorted

MAX_REQUESTS = 2000  # requests drawn in a timeline; more are sampled evenly
RATE_BINS = 100  # output tok/s over time: this many bins over the run
MIN_BIN_S = 0.05
GPU_FIELDS = ("sm_clock_mhz", "power_w", "temperature_c", "utilization_pct", "memory_used_mib")
ENGINE_GAUGES = ("running", "waiting", "kv_usage", "cache_hit_rate", "context_requests", "generation_requests")


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def quantiles(values: Sequence[float], scale: float = 1000.0) -> list[float]:
    """Percentiles 0..100 of ``values`` (times ``scale``: seconds to ms), [] when there are none."""
    if not values:
        return []
    ordered = sorted(values)
    return [round(percentile_of_sorted(ordered, q) * scale, 4) for q in range(101)]


def output_rate(records: Sequence[RequestRecord], origin_s: float, bins: int = RATE_BINS) -> dict[str, list[float]]:
    """Output tokens per second over time: each request's tokens spread over its chunks' arrivals, binned."""
    arrivals: list[tuple[float, float]] = []
    for r in records:
        if not r.success or r.output_tokens <= 0:
            continue
        times = chunk_times_s(r)
        per_chunk = r.output_tokens / len(times)
        arrivals.extend((t - origin_s, per_chunk) for t in times)
    if not arrivals:
        return {"t_s": [], "tok_s": []}
    end_s = max(t for t, _ in arrivals)
    width_s = max(end_s / bins, MIN_BIN_S)
    n = max(1, math.ceil(end_s / width_s))  # the last arrival falls in the last bin (index clamped below)
    tokens = [0.0] * n
    for t, count in arrivals:
        tokens[min(int(max(t, 0.0) / width_s), n - 1)] += count
    return {"t_s": [round((i + 0.5) * width_s, 4) for i in range(n)],
            "tok_s": [round(c / width_s, 2) for c in tokens]}


def _sampled(items: Sequence[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def request_timeline(records: Sequence[RequestRecord], origin_s: float,
                     limit: int = MAX_REQUESTS) -> dict[str, Any]:
    """Every request's start, time to first token and latency (sampled evenly to ``limit``, in start order)."""
    ordered = _sampled(sorted(records, key=lambda r: r.start_s), limit)
    return {
        "start_s": [round(r.start_s - origin_s, 4) for r in ordered],
        "ttft_s": [_r(r.ttft_s) if r.success else None for r in ordered],
        "latency_s": [_r(r.latency_s) if r.success else None for r in ordered],
        "output_tokens": [r.output_tokens if r.success else 0 for r in ordered],
        "success": [bool(r.success) for r in ordered],
        "sampled_from": len(records),
    }


def gpu_series(samples: Sequence[Any], offset_s: float) -> dict[str, list[float | None]] | None:
    """GPU readings per sampling round, the mean over the GPUs read in it; None without samples."""
    rounds: dict[float, list[Any]] = {}
    for s in samples:
        t = s["t_s"] if isinstance(s, Mapping) else s.t_s
        rounds.setdefault(t, []).append(s)
    if not rounds:
        return None
    out: dict[str, list[float | None]] = {"t_s": []}
    for name in GPU_FIELDS:
        out[name] = []
    for t in sorted(rounds):
        out["t_s"].append(round(t + offset_s, 3))
        for name in GPU_FIELDS:
            values = [v for s in rounds[t]
                      if (v := (s.get(name) if isinstance(s, Mapping) else getattr(s, name))) is not None]
            out[name].append(round(sum(values) / len(values), 2) if values else None)
    return out


def engine_series(timed: Sequence[tuple[float, Mapping[str, float]]], origin_s: float) -> dict[str, list] | None:
    """The engine's gauges (running, waiting, KV usage, ...) over time, by role; None when none was scraped."""
    from ..engine_metrics import ROLE_BY_NAME, discover

    if not timed:
        return None
    names = discover([values for _, values in timed])
    roles = [role for role in ENGINE_GAUGES if role in names and role in ROLE_BY_NAME]
    if not roles:
        return None
    out: dict[str, list] = {"t_s": [round(t - origin_s, 3) for t, _ in timed]}
    for role in roles:
        out[role] = [_r(values.get(names[role])) for _, values in timed]
    return out


def run_series(run: int, records: Sequence[RequestRecord], gpu_samples: Sequence[Any] = (),
               gpu_started_s: float | None = None,
               engine_samples: Sequence[tuple[float, Mapping[str, float]]] = ()) -> dict[str, Any] | None:
    """One run's series for charts (see the module's doc); None when no request was sent."""
    if not records:
        return None
    origin_s = min(r.start_s for r in records)
    ok = [r for r in records if r.success]
    tpots = [t for r in ok if (t := r.tpot_s) is not None]
    out: dict[str, Any] = {
        "run": run,
        "requests": request_timeline(records, origin_s),
        "output_tok_s": output_rate(records, origin_s),
        "quantiles": {
            "ttft_ms": quantiles([r.ttft_s for r in ok]),
            "tpot_ms": quantiles(tpots),
            "itl_ms": quantiles([g for r in ok for g in r.itl_s]),
            "e2el_ms": quantiles([r.latency_s for r in ok]),
        },
    }
    if gpu_samples and gpu_started_s is not None:
        gpu = gpu_series(gpu_samples, gpu_started_s - origin_s)
        if gpu is not None:
            out["gpu"] = gpu
    engine = engine_series(engine_samples, origin_s)
    if engine is not None:
        out["engine"] = engine
    return out
