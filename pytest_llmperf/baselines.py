"""Baselines: where they live, how a run compares with them, how they are updated.

One JSON file per engine configuration:
``<baseline_dir>/<gpus>/<model slug>/<engine>/<config>.json``::

    {
      "schema": 1,
      "engine": "sim", "config": "vllm-tp8", "gpus": "h200x8",
      "model": "deepseek-ai/DeepSeek-V3.2",
      "tolerances_pct": {"total_token_throughput": 10},      # optional, file-wide
      "cases": {
        "sharegpt": {
          "workload": {...}, "command": [...], "metrics": {...},
          "provenance": {...},
          "tolerances_pct": {"mean_tpot_ms": 8}               # optional, per case
        }
      }
    }

Comparison (``compare``) is pure. Updates are atomic (write to a temporary
file, then rename) and serialised with a lock file, and never drop cases
that the run did not measure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .files import atomic_write_text

SCHEMA_VERSION = 1
DEFAULT_GATES: dict[str, float] = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0, "failed": 0.0}

HIGHER, LOWER = "higher", "lower"
# Statuses of one verdict.
OK, REGRESSED, IMPROVED, MISSING, UPDATED = "ok", "regressed", "improved", "missing", "updated"


@functools.lru_cache(maxsize=1)
def _gateable() -> tuple[str, ...]:
    from .metrics import compute_metrics

    every = compute_metrics([], 1.0, goodput_slos_ms={"ttft": 1.0}, from_schedule=True)
    return tuple(sorted(m for m in every if _direction(m) is not None))


_PERCENTILE_RE = re.compile(r"^p(\d+(?:\.\d+)?)_(.+_ms)$")


def _gateable_name(metric: str) -> bool:
    """A metric some run can produce: the fixed names, or any percentile of a latency."""
    if metric in _gateable():
        return True
    match = _PERCENTILE_RE.match(metric)
    return bool(match) and 0 < float(match.group(1)) <= 100 and f"p99_{match.group(2)}" in _gateable()


def gateable_metrics() -> list[str]:
    """Every metric a run produces that has a better direction."""
    return list(_gateable())


def _direction(metric: str) -> str | None:
    if metric.endswith("_ms") or metric in ("duration", "failed"):
        return LOWER
    if "throughput" in metric or metric.startswith("max_output_tokens_per_s") or metric in ("completed", "request_goodput"):
        return HIGHER
    return None


def metric_direction(metric: str) -> str:
    """Which way is better for a metric; ValueError if it cannot be gated."""
    direction = _direction(metric)
    if direction is None or not _gateable_name(metric):
        raise ValueError(f"metric {metric!r} cannot be gated; gateable metrics: {', '.join(_gateable())}")
    return direction


def model_slug(model: str) -> str:
    """A model name as one path component: ``org/name`` -> ``org__name``."""
    return model.strip("/").replace("/", "__")


def baseline_path(baseline_dir: Path, gpus: str, model: str, engine: str, config: str) -> Path:
    return Path(baseline_dir) / gpus / model_slug(model) / engine / f"{config}.json"


@dataclass(frozen=True)
class Verdict:
    metric: str
    baseline: float | None
    current: float | None
    change_pct: float | None
    tolerance_pct: float
    status: str
    direction: str

    def line(self) -> str:
        """One human line: name, baseline, current, change, tolerance."""
        change = "n/a" if self.change_pct is None else f"{self.change_pct:+.1f}%"
        base = "none" if self.baseline is None else _fmt(self.baseline)
        cur = "none" if self.current is None else _fmt(self.current)
        if self.status == UPDATED:
            return f"{self.metric}: {base} -> {cur} ({change}) updated"
        return (
            f"{self.metric}: baseline {base}, current {cur}, change {change} "
            f"(tolerance {self.tolerance_pct:g}%, {self.direction} is better) {self.status.upper()}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["direction"]
        return data


def _fmt(value: float) -> str:
    return f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def change_pct(baseline: float, current: float) -> float | None:
    if baseline == 0:
        return 0.0 if current == 0 else None
    return (current - baseline) / abs(baseline) * 100.0


def judge(metric: str, baseline: float, current: float, tolerance_pct: float) -> Verdict:
    """One metric against its baseline."""
    direction = metric_direction(metric)
    change = change_pct(baseline, current)
    better = current > baseline if direction == HIGHER else current < baseline
    if change is None:  # baseline zero, current not: no percentage exists
        status = IMPROVED if better else REGRESSED
    elif abs(change) <= tolerance_pct + 1e-9:
        status = OK
    else:
        status = IMPROVED if better else REGRESSED
    return Verdict(metric, baseline, current, change, tolerance_pct, status, direction)


def effective_tolerances(gates: Mapping[str, float], file_data: Mapping[str, Any] | None, case_key: str) -> dict[str, float]:
    """Gated metrics with tolerances: settings, then the file, then the case."""
    tolerances = dict(gates)
    if file_data:
        tolerances.update(file_data.get("tolerances_pct", {}))
        tolerances.update(file_data.get("cases", {}).get(case_key, {}).get("tolerances_pct", {}))
    return tolerances


def compare(
    metrics: Mapping[str, float],
    entry: Mapping[str, Any] | None,
    tolerances: Mapping[str, float],
) -> list[Verdict]:
    """Every gated metric of a run against a baseline case entry (or none)."""
    verdicts = []
    base_metrics = entry.get("metrics", {}) if entry else {}
    for metric, tol in sorted(tolerances.items()):
        current = metrics.get(metric)
        base = base_metrics.get(metric)
        if base is None or current is None:
            verdicts.append(Verdict(metric, base, current, None, tol, MISSING, metric_direction(metric)))
        else:
            verdicts.append(judge(metric, float(base), float(current), tol))
    return verdicts


def workload_mismatch(entry: Mapping[str, Any] | None, params: Mapping[str, Any]) -> list[str]:
    """Parameters whose baseline value differs from this run's (comparison would be meaningless)."""
    if not entry or "workload" not in entry:
        return []
    stored = entry["workload"]
    return [f"{k}: baseline {stored.get(k)!r}, this run {v!r}" for k, v in sorted(params.items()) if stored.get(k) != v]


def updated_verdicts(metrics: Mapping[str, float], entry: Mapping[str, Any] | None, tolerances: Mapping[str, float]) -> list[Verdict]:
    """What an update changes, gated metrics first shown as old -> new."""
    base_metrics = entry.get("metrics", {}) if entry else {}
    out = []
    for metric, tol in sorted(tolerances.items()):
        base, cur = base_metrics.get(metric), metrics.get(metric)
        change = change_pct(float(base), float(cur)) if base is not None and cur is not None else None
        out.append(Verdict(metric, base, cur, change, tol, UPDATED, metric_direction(metric)))
    return out


# ---------------------------------------------------------------- files (IO)


def read_baseline(path: Path) -> dict[str, Any] | None:
    """The file's content, None if it does not exist; ValueError naming file and key if invalid."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"baseline file {path} is not valid JSON ({exc}); fix or delete it") from None
    problems = _validate(data)
    if problems:
        raise ValueError(f"baseline file {path}: " + "; ".join(problems))
    return data


def _validate(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return ["expected a JSON object"]
    problems = []
    schema = data.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        problems.append(f"schema: expected an integer, got {schema!r}")
    elif schema > SCHEMA_VERSION:
        problems.append(f"schema {schema} is newer than this version reads ({SCHEMA_VERSION}); upgrade pytest-llmperf")
    problems += _validate_tolerances(data.get("tolerances_pct", {}), "tolerances_pct")
    cases = data.get("cases", {})
    if not isinstance(cases, dict):
        return problems + ["cases: expected an object of case name -> entry"]
    for name, entry in cases.items():
        where = f"cases.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        metrics = entry.get("metrics", {})
        if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
        ):
            problems.append(f"{where}.metrics: expected an object of metric name -> number")
        if not isinstance(entry.get("workload", {}), dict):
            problems.append(f"{where}.workload: expected an object")
        problems += _validate_tolerances(entry.get("tolerances_pct", {}), f"{where}.tolerances_pct")
    return problems


def _validate_tolerances(tolerances: Any, where: str) -> list[str]:
    if not isinstance(tolerances, dict):
        return [f"{where}: expected an object of metric name -> percent"]
    problems = []
    for metric, pct in tolerances.items():
        try:
            metric_direction(metric)
        except ValueError as exc:
            problems.append(f"{where}.{metric}: {exc}")
            continue
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not math.isfinite(pct) or pct < 0:
            problems.append(f"{where}.{metric}: expected a percentage >= 0, got {pct!r}")
    return problems


def dumps(data: Mapping[str, Any]) -> str:
    """Deterministic formatting so diffs review well."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(f".{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _finite(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}


def update_case(path: Path, header: Mapping[str, Any], case_key: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """Write one case's entry; returns the entry it replaced (None if new).

    Other cases and any tolerance overrides in the file are kept.
    """
    path = Path(path)
    with _locked(path):
        data = read_baseline(path) or {}
        old = data.get("cases", {}).get(case_key)
        new_entry = dict(entry)
        new_entry["metrics"] = _finite(entry["metrics"])
        if old and "tolerances_pct" in old:
            new_entry["tolerances_pct"] = old["tolerances_pct"]
        data.update(header)
        data["schema"] = SCHEMA_VERSION
        data.setdefault("cases", {})[case_key] = new_entry
        atomic_write_text(path, dumps(data))
    return old
