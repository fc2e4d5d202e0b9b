"""Verdicts (pure): a case's metrics against its baseline entry, and the expected-failure policy.

Nothing here reads a file or a clock: the baseline entry, the tolerances and
what the node saw (throttling) come in as values; a ``Judgement`` goes out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .metrics import HIGHER, metric_direction

if TYPE_CHECKING:  # pragma: no cover
    from .baselines import BaselineRead

# Statuses of one metric's verdict, and of a case.
OK, REGRESSED, IMPROVED, MISSING, UPDATED = "ok", "regressed", "improved", "missing", "updated"
FAILED = "failed"  # the case could not be judged (nothing completed, other workload, unreadable baseline)


@dataclass(frozen=True)
class Verdict:
    """One gated metric against its baseline."""

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


def compare(metrics: Mapping[str, float], entry: Mapping[str, Any] | None, tolerances: Mapping[str, float]) -> list[Verdict]:
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


def updated_verdicts(metrics: Mapping[str, float], entry: Mapping[str, Any] | None,
                     tolerances: Mapping[str, float]) -> list[Verdict]:
    """What an update changes, gated metrics shown as old -> new."""
    base_metrics = entry.get("metrics", {}) if entry else {}
    out = []
    for metric, tol in sorted(tolerances.items()):
        base, cur = base_metrics.get(metric), metrics.get(metric)
        change = change_pct(float(base), float(cur)) if base is not None and cur is not None else None
        out.append(Verdict(metric, base, cur, change, tol, UPDATED, metric_direction(metric)))
    return out


def workload_mismatch(entry: Mapping[str, Any] | None, params: Mapping[str, Any]) -> list[str]:
    """Parameters whose baseline value differs from this run's (comparison would be meaningless)."""
    if not entry or "workload" not in entry:
        return []
    stored = entry["workload"]
    return [f"{k}: baseline {stored.get(k)!r}, this run {v!r}" for k, v in sorted(params.items()) if stored.get(k) != v]


@dataclass(frozen=True)
class Judgement:
    """A case's verdict: its status, one Verdict per gated metric, and the failure message ("" when it passes)."""

    status: str
    verdicts: tuple[Verdict, ...] = ()
    message: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.message)


def judge_case(case_id: str, workload_key: str, metrics: Mapping[str, Any], failure_reasons: list[str],
               params: Mapping[str, Any], baseline: "BaselineRead", gates: Mapping[str, float], update: bool,
               throttle_reasons: tuple[str, ...] = ()) -> Judgement:
    """A measured case against its baseline entry (or, with ``update``, what recording it would change)."""
    if not metrics.get("completed"):
        reasons = "; ".join(failure_reasons) or "no reason recorded"
        return Judgement(FAILED, (), f"no request of {case_id} completed ({metrics.get('failed', 0)} failed): {reasons}")
    if baseline.error:
        return Judgement(FAILED, (), baseline.error)
    tolerances = effective_tolerances(gates, baseline.data, workload_key)
    entry = (baseline.data or {}).get("cases", {}).get(workload_key)
    if update:
        return Judgement(UPDATED, tuple(updated_verdicts(metrics, entry, tolerances)))
    mismatch = workload_mismatch(entry, params)
    if mismatch:
        return Judgement(FAILED, (), (
            f"the baseline of {case_id} in {baseline.path} was measured with another workload, so it cannot be "
            "compared:\n  " + "\n  ".join(mismatch)
            + "\nrun the same workload, or record a new baseline with --update-baselines"))
    verdicts = tuple(compare(metrics, entry, tolerances))
    if entry is None:
        return Judgement(MISSING, verdicts,
                         f"no baseline for {case_id} in {baseline.path}; record one with --update-baselines")
    bad = [v.line() for v in verdicts if v.status in (REGRESSED, MISSING)]
    if bad:
        suspect = ""
        if throttle_reasons:
            suspect = (f"suspect: GPU throttled ({', '.join(throttle_reasons)}) during {case_id}; the regression may "
                       "be the node's\n")
        status = REGRESSED if any(v.status == REGRESSED for v in verdicts) else MISSING
        return Judgement(status, verdicts, suspect + f"{case_id} regressed against {baseline.path}:\n" + "\n".join(bad))
    status = IMPROVED if any(v.status == IMPROVED for v in verdicts) else OK
    return Judgement(status, verdicts)


# ----------------------------------------------------------------- expected failures
def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)[:300]


XFAIL, FAIL, GO, UNEXPECTED = "xfail", "fail", "go", "unexpectedly working"


def expected_failure_policy(config_id: str, expected_failure: str, trouble: str) -> tuple[str, str]:
    """What a configuration's item does, given the trouble seen ("" for none): (kind, message).

    A configuration the suite marks as known to fail (``expected_failure``)
    xfails on trouble, saying what was seen; without trouble it is
    unexpectedly working (its cases go on, and the run says so). Any other
    configuration fails on trouble, and goes on without.
    """
    if expected_failure:
        if trouble:
            return XFAIL, failed_as_expected(config_id, expected_failure, trouble)
        return UNEXPECTED, f"ran although {config_id} is expected to fail ({expected_failure})"
    return (FAIL, trouble) if trouble else (GO, "")


def failed_as_expected(config_id: str, expected_failure: str, seen: str) -> str:
    """The xfail message of a configuration that failed the way the suite says it does."""
    return f"{config_id} failed as expected ({expected_failure}); seen: {_first_line(seen)}"


def unexpectedly_working_note(config_id: str, expected_failure: str) -> str:
    return (f"{config_id} started although it is expected to fail ({expected_failure}): the known failure may be "
            f"fixed; its cases ran normally. Record baselines for it and drop expected_failure")


def version_matches(expected: str, found: str) -> bool:
    """Whether the engine version met is the release a configuration was written for."""
    return found == expected or found.startswith(expected + "+")
