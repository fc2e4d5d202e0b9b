"""Engine metrics around one run: parse what an engine exposes, summarise it, say what changed. Pure.

Engines expose their own view of a run: how many requests waited, how full the
KV cache got, how often requests were preempted, how well the prefix cache hit.
This module turns their texts into plain values; scraping them during a run
is ``engines.control``'s.

- ``parse_prometheus(text)``: vLLM's and SGLang's ``/metrics`` as one value per
  sample name. Several label sets of one name (data-parallel engines or ranks,
  models, finish reasons) are aggregated: counters, histogram ``_sum``/``_count``
  and additive gauges are **summed** (requests running on 8 DP engines are the
  server's requests running); gauges that are fractions or per-item averages
  (names containing ``perc``, ``usage``, ``rate``, ``ratio``, ``length``) take the
  **max**, because the fullest engine is the one that preempts and queues: a mean
  would hide one saturated engine among idle ones. Histogram buckets, summary
  quantiles and ``_created`` timestamps are skipped.
- ``parse_trtllm_iterations(json_text)``: TensorRT-LLM's ``/metrics`` (JSON
  iteration stats, drained by each read); ``trtllm_values(iteration)`` maps one
  iteration onto ``trtllm:*`` names so that it is one sample like any other.
- ``ROLES``: what a name means (running, waiting, kv_usage, preemptions, ...),
  with candidate names per engine family and release; whatever exists is used.
- ``summarize(before, samples, after)``: a JSON-able summary of one run.
- ``evidence_lines(baseline, current)`` / ``current_only_lines(summary)``: lines a
  verdict can show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping, Sequence

COUNTER, GAUGE = "counter", "gauge"
# Gauges whose label sets are not additive: fractions and per-item averages (max over label sets).
NON_ADDITIVE_MARKERS = ("perc", "usage", "rate", "ratio", "length")
SKIPPED_SUFFIXES = ("_bucket", "_gbucket", "_created")
UNAVAILABLE = "engine metrics unavailable"


@dataclass(frozen=True)
class Role:
    """What one engine number means, and the names engines have given it (preferred first)."""

    name: str
    kind: str  # COUNTER (delta over the run) or GAUGE (max and mean over the samples)
    unit: str  # "requests", "fraction", "tokens"
    candidates: tuple[str, ...]


ROLES: tuple[Role, ...] = (
    Role("running", GAUGE, "requests", (
        "vllm:num_requests_running", "sglang:num_running_reqs", "trtllm:num_active_requests")),
    Role("waiting", GAUGE, "requests", (
        "vllm:num_requests_waiting", "sglang:num_queue_reqs", "trtllm:num_queued_requests")),
    Role("kv_usage", GAUGE, "fraction", (
        "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",  # the second: vLLM before kv_cache_usage_perc
        "sglang:token_usage", "trtllm:kv_cache_usage")),
    # SGLang's cumulative retraction counter (newer releases); its sglang:num_retracted_reqs is a gauge of the
    # last batch's retractions, kept apart below so that a gauge is never differenced as a counter.
    Role("preemptions", COUNTER, "requests", (
        "vllm:num_preemptions_total", "sglang:num_retracted_requests_total")),
    Role("retracted_in_batch", GAUGE, "requests", ("sglang:num_retracted_reqs",)),
    Role("prefix_cache_hits", COUNTER, "tokens", (
        "vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")),
    Role("prefix_cache_queries", COUNTER, "tokens", (
        "vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")),
    Role("cache_hit_rate", GAUGE, "fraction", ("sglang:cache_hit_rate", "vllm:gpu_prefix_cache_hit_rate")),
    Role("prompt_tokens", COUNTER, "tokens", ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total")),
    Role("generation_tokens", COUNTER, "tokens", (
        "vllm:generation_tokens_total", "sglang:generation_tokens_total")),
    Role("context_requests", GAUGE, "requests", ("trtllm:num_context_requests",)),
    Role("generation_requests", GAUGE, "requests", ("trtllm:num_gen_requests",)),
)
ROLE_BY_NAME: dict[str, Role] = {role.name: role for role in ROLES}
ROLE_NAMES: frozenset[str] = frozenset(n for role in ROLES for n in role.candidates)


# ----------------------------------------------------------------- parsing
def _non_additive(name: str) -> bool:
    return any(marker in name for marker in NON_ADDITIVE_MARKERS)


def _family_names(names: Collection[str]) -> set[str]:
    return set(names) | {n[: -len("_total")] for n in names if n.endswith("_total")}


def _prefilter(text: str, only: Collection[str] | None) -> str:
    """The lines worth parsing: no bucket or ``_created`` samples, no HELP; with ``only``, those names' alone.

    prometheus_client's parser is pure Python and vLLM's buckets are most of
    its body (8 engines: about 900 of 1050 lines), so they are dropped before
    it reads them rather than after.
    """
    families = _family_names(only) if only is not None else None
    kept = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE" and (families is None or parts[2] in families):
                kept.append(line)
            continue
        name = line.partition("{")[0].partition(" ")[0]
        if name.endswith(SKIPPED_SUFFIXES) or (only is not None and name not in only):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def parse_prometheus(text: str, only: Collection[str] | None = None) -> dict[str, float]:
    """Prometheus text -> {sample name: value}, label sets aggregated (see the module's rule); ValueError if not Prometheus.

    ``only``: keep just these sample names (a sampler's fast path; lines of
    other names are not parsed, so they are not checked either).
    """
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(_prefilter(text, only)):
            take_max = family.type == GAUGE and _non_additive(family.name)
            for sample in family.samples:
                name = sample.name
                if name.endswith(SKIPPED_SUFFIXES) or "quantile" in sample.labels:
                    continue
                value = float(sample.value)
                if math.isnan(value):
                    continue
                if name not in values:
                    values[name] = value
                elif take_max:
                    values[name] = max(values[name], value)
                else:
                    values[name] += value
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        first = " ".join(str(exc).split())[:120]
        raise ValueError(f"not Prometheus text ({first})") from None
    return values


def parse_trtllm_iterations(json_text: str) -> list[dict[str, Any]]:
    """TRT-LLM's ``/metrics`` body (a JSON list of iteration stats) -> the list; ValueError for anything else."""
    if not json_text.strip():
        return []
    try:
        data = json.loads(json_text)
    except ValueError as exc:
        raise ValueError(f"not TRT-LLM iteration stats (invalid JSON: {exc.msg} at {exc.pos})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"not TRT-LLM iteration stats (expected a JSON list of objects, got {type(data).__name__})")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def trtllm_values(iteration: Mapping[str, Any]) -> dict[str, float]:
    """One TRT-LLM iteration as ``trtllm:*`` values (absent fields are left out)."""
    out: dict[str, float] = {}
    for key, name in (("numQueuedRequests", "trtllm:num_queued_requests"),
                      ("numActiveRequests", "trtllm:num_active_requests")):
        if (v := _number(iteration.get(key))) is not None:
            out[name] = v
    kv = iteration.get("kvCacheStats")
    if isinstance(kv, Mapping):
        max_blocks, used, free = (_number(kv.get(k)) for k in ("maxNumBlocks", "usedNumBlocks", "freeNumBlocks"))
        if used is None and max_blocks is not None and free is not None:
            used = max_blocks - free
        if used is not None:
            out["trtllm:kv_cache_used_blocks"] = used
        if used is not None and max_blocks:
            out["trtllm:kv_cache_usage"] = used / max_blocks
    batching = iteration.get("inflightBatchingStats")
    if isinstance(batching, Mapping):
        for key, name in (("numContextRequests", "trtllm:num_context_requests"),
                          ("numGenRequests", "trtllm:num_gen_requests")):
            if (v := _number(batching.get(key))) is not None:
                out[name] = v
    return out


def discover(values: Mapping[str, float] | Iterable[Mapping[str, float]]) -> dict[str, str]:
    """{role: the name used for it}: the first candidate present in ``values`` (or in any of several dicts)."""
    dicts = [values] if isinstance(values, Mapping) else list(values)
    present = set().union(*(d.keys() for d in dicts)) if dicts else set()
    found = {}
    for role in ROLES:
        for name in role.candidates:
            if name in present:
                found[role.name] = name
                break
    return found


def role_values(values: Mapping[str, float]) -> dict[str, float]:
    """Only the names some role may use: what a sampler keeps of each scrape."""
    return {k: v for k, v in values.items() if k in ROLE_NAMES}


# ----------------------------------------------------------------- summary
def _round(value: float, digits: int = 4) -> float:
    return round(value, digits)


def unavailable_summary(why: str) -> dict[str, Any]:
    """The summary of a run whose engine metrics could not be read; ``why`` is one line."""
    return {"available": False, "note": f"{UNAVAILABLE}: {' '.join(str(why).split())}", "samples": 0,
            "names": {}, "counters": {}, "gauges": {}}


def summarize(before: Mapping[str, float] | None, samples: Sequence[Mapping[str, float]],
              after: Mapping[str, float] | None, note: str = "") -> dict[str, Any]:
    """One run's engine metrics as plain JSON values.

    Keys: ``available`` (bool), ``note`` (one line, "" when nothing to say),
    ``samples`` (scrapes during the run), ``names`` ({role: metric name found}),
    ``counters`` ({role: after - before}), ``gauges`` ({role: {"max", "mean"}}),
    and ``prefix_cache_hit_rate`` (a fraction) when it can be told.

    Counters need two readings: ``before`` and ``after``, or else the first and
    last sample (TRT-LLM's drained stats have no counters). A counter that went
    down restarted: its delta is the value after. Gauges are taken over the
    samples; with none (a run shorter than one interval) over before and after.
    The prefix cache hit rate comes from the hits/queries deltas, else from the
    mean of a hit-rate gauge (SGLang's ``cache_hit_rate``).
    """
    samples = list(samples)
    readings = [r for r in (before, *samples, after) if r is not None]
    if not readings:
        return unavailable_summary(note or "no scrape succeeded")
    names = discover(readings)
    first = before if before is not None else (samples[0] if samples else None)
    last = after if after is not None else (samples[-1] if samples else None)
    counters: dict[str, float] = {}
    gauges: dict[str, dict[str, float]] = {}
    gauge_readings = samples or [r for r in (before, after) if r is not None]
    for role_name, metric in names.items():
        role = ROLE_BY_NAME[role_name]
        if role.kind == COUNTER:
            if first is None or last is None or first is last or metric not in last:
                continue
            start, end = first.get(metric, 0.0), last[metric]
            counters[role_name] = _round(end - start if end >= start else end)
        else:
            series = [r[metric] for r in gauge_readings if metric in r]
            if series:
                gauges[role_name] = {"max": _round(max(series)), "mean": _round(sum(series) / len(series))}
    summary: dict[str, Any] = {"available": True, "note": note, "samples": len(samples), "names": names,
                               "counters": counters, "gauges": gauges}
    queries = counters.get("prefix_cache_queries")
    if queries:
        summary["prefix_cache_hit_rate"] = _round(counters.get("prefix_cache_hits", 0.0) / queries)
    elif "cache_hit_rate" in gauges:
        summary["prefix_cache_hit_rate"] = gauges["cache_hit_rate"]["mean"]
    if not names and not note:
        summary["note"] = "no known engine metric names found"
    return summary


# ----------------------------------------------------------------- evidence
# What a verdict may cite, and when two runs differ notably:
# - counts (preemptions, retractions): one run has none and the other some, or
#   they differ by at least 10 and by half of the larger;
# - peak requests waiting / running: differ by at least 5 and by a quarter of the larger;
# - fractions (KV cache peak usage, prefix cache hit rate): differ by at least
#   10 percentage points.
COUNT_MIN_ABS, COUNT_MIN_REL = 10.0, 0.5
PEAK_MIN_ABS, PEAK_MIN_REL = 5.0, 0.25
FRACTION_MIN_ABS = 0.10
KV_NEARLY_FULL = 0.95  # a KV cache peak at or above this is worth saying without a baseline


@dataclass(frozen=True)
class Evidence:
    label: str
    source: str  # "counter", "gauge_max" or "hit_rate"
    role: str
    kind: str  # "count", "peak" or "fraction"


EVIDENCE: tuple[Evidence, ...] = (
    Evidence("preemptions", "counter", "preemptions", "count"),
    Evidence("peak retracted requests in one batch", "gauge_max", "retracted_in_batch", "count"),
    Evidence("peak requests waiting", "gauge_max", "waiting", "peak"),
    Evidence("peak requests running", "gauge_max", "running", "peak"),
    Evidence("KV cache peak usage", "gauge_max", "kv_usage", "fraction"),
    Evidence("prefix cache hit rate", "hit_rate", "", "fraction"),
)


def _value(summary: Mapping[str, Any] | None, evidence: Evidence) -> float | None:
    if not summary or not summary.get("available"):
        return None
    if evidence.source == "counter":
        value = summary.get("counters", {}).get(evidence.role)
    elif evidence.source == "gauge_max":
        value = summary.get("gauges", {}).get(evidence.role, {}).get("max")
    else:
        value = summary.get("prefix_cache_hit_rate")
    return None if value is None else float(value)


def _show(value: float, kind: str) -> str:
    return f"{value * 100:.0f}%" if kind == "fraction" else f"{value:.0f}"


def _notable(base: float, cur: float, kind: str) -> bool:
    diff, larger = abs(cur - base), max(abs(base), abs(cur))
    if kind == "fraction":
        return diff >= FRACTION_MIN_ABS
    if kind == "count":
        return (min(base, cur) == 0 and larger > 0) or (diff >= COUNT_MIN_ABS and diff >= COUNT_MIN_REL * larger)
    return diff >= PEAK_MIN_ABS and diff >= PEAK_MIN_REL * larger


def evidence_lines(baseline_summary: Mapping[str, Any] | None, current_summary: Mapping[str, Any] | None) -> list[str]:
    """``preemptions: baseline 0, current 412`` ...: only what both runs have and what differs notably."""
    lines = []
    for evidence in EVIDENCE:
        base, cur = _value(baseline_summary, evidence), _value(current_summary, evidence)
        if base is None or cur is None or not _notable(base, cur, evidence.kind):
            continue
        lines.append(f"{evidence.label}: baseline {_show(base, evidence.kind)}, current {_show(cur, evidence.kind)}")
    return lines


def current_only_lines(summary: Mapping[str, Any] | None) -> list[str]:
    """What one run's engine metrics say on their own: preemptions, retractions, a KV cache nearly full."""
    lines = []
    for evidence in EVIDENCE:
        value = _value(summary, evidence)
        if value is None:
            continue
        if evidence.kind == "count" and value > 0:
            lines.append(f"{evidence.label}: {_show(value, evidence.kind)}")
        elif evidence.role == "kv_usage" and value >= KV_NEARLY_FULL:
            lines.append(f"{evidence.label}: {_show(value, evidence.kind)}")
    return lines
