"""Verdicts (pure): a case's runs against its baseline history, and the expected-failure policy.

Nothing here reads a file or a clock: the runs (pooled), the baseline
history, the tolerances and the health of what measured them come in as
values; a ``Judgement`` goes out.

How a gated metric is judged:

- the case's figure is the median of its runs that count (runs whose
  measurement was distorted are left out: see ``distortions``);
- the reference is the median of the figures in the baseline's history;
- the noise band is the widest relative spread (max - min over the
  median; from four values on, the lowest and highest are dropped first, so
  one outlier cannot widen it) seen in the history's figures, within any
  recorded result's runs, and within this run's runs;
- the tolerance applied is the configured percentage or the noise band,
  whichever is wider; the verdict says which;
- this run's runs lying further apart than the history and the configured
  tolerance allow is itself a reason to run the case again (``Judgement.noisy``),
  so that a noisy run cannot hide a regression behind its own spread.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .metrics import HIGHER, metric_direction

if TYPE_CHECKING:  # pragma: no cover
    from .baselines import BaselineRead

# Statuses of one metric's verdict, and of a case.
OK, REGRESSED, IMPROVED, MISSING, UPDATED = "ok", "regressed", "improved", "missing", "updated"
INCONCLUSIVE = "inconclusive"  # every run's measurement was distorted: nothing was compared
FAILED = "failed"  # the case could not be judged (nothing completed, other workload, unreadable baseline)


@dataclass(frozen=True)
class Verdict:
    """One gated metric against its baseline reference.

    ``baseline`` is the reference (the median of ``history_n`` recorded
    results); ``tolerance_pct`` the tolerance applied: the wider of
    ``configured_pct`` and ``band_pct`` (the noise band).
    """

    metric: str
    baseline: float | None
    current: float | None
    change_pct: float | None
    tolerance_pct: float
    status: str
    direction: str
    configured_pct: float | None = None  # None: same as tolerance_pct
    band_pct: float = 0.0
    history_n: int = 1

    @property
    def tolerance_from(self) -> str:
        """Where the tolerance applied comes from: "configured" or "noise band"."""
        configured = self.tolerance_pct if self.configured_pct is None else self.configured_pct
        return "noise band" if self.band_pct > configured else "configured"

    def line(self) -> str:
        """One human line: name, baseline, current, change, tolerance (and where it came from)."""
        change = "n/a" if self.change_pct is None else f"{self.change_pct:+.1f}%"
        base = "none" if self.baseline is None else _fmt(self.baseline)
        cur = "none" if self.current is None else _fmt(self.current)
        if self.status == UPDATED:
            return f"{self.metric}: {base} -> {cur} ({change}) updated"
        if self.history_n > 1 and self.baseline is not None:
            base += f" (median of {self.history_n})"
        tolerance = f"tolerance {self.tolerance_pct:g}%"
        if self.tolerance_from == "noise band":
            tolerance += f" = noise band, configured {self.configured_pct:g}%"
        return (f"{self.metric}: baseline {base}, current {cur}, change {change} "
                f"({tolerance}, {self.direction} is better) {self.status.upper()}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["direction"]
        if data["configured_pct"] is None:
            data["configured_pct"] = self.tolerance_pct
        data["tolerance_from"] = self.tolerance_from
        data["reference"] = data["baseline"]
        return data


def _fmt(value: float) -> str:
    return f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def change_pct(baseline: float, current: float) -> float | None:
    if baseline == 0:
        return 0.0 if current == 0 else None
    return (current - baseline) / abs(baseline) * 100.0


def judge(metric: str, baseline: float, current: float, tolerance_pct: float, band_pct: float = 0.0,
          history_n: int = 1) -> Verdict:
    """One metric against its reference, within the wider of its tolerance and its noise band."""
    direction = metric_direction(metric)
    change = change_pct(baseline, current)
    better = current > baseline if direction == HIGHER else current < baseline
    applied = max(tolerance_pct, band_pct)
    if change is None:  # baseline zero, current not: no percentage exists
        status = IMPROVED if better else REGRESSED
    elif abs(change) <= applied + 1e-9:
        status = OK
    else:
        status = IMPROVED if better else REGRESSED
    return Verdict(metric, baseline, current, change, applied, status, direction, tolerance_pct, band_pct, history_n)


# ----------------------------------------------------------------- runs, history, noise
def median_metrics(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Every numeric metric that all ``runs`` have, as the median over them (one run: itself)."""
    if not runs:
        return {}
    names = set.intersection(*(set(k for k, v in r.items() if _number(v)) for r in runs))
    return {name: _median([r[name] for r in runs]) for name in sorted(names)}


def run_spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per numeric metric over the runs: median, min, max, coefficient of variation (%) and n."""
    out = {}
    for name, median in median_metrics(runs).items():
        values = [float(r[name]) for r in runs]
        mean = statistics.fmean(values)
        cv = statistics.stdev(values) / abs(mean) * 100.0 if len(values) > 1 and mean else 0.0
        out[name] = {"median": median, "min": min(values), "max": max(values), "cv_pct": cv, "n": len(values)}
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _median(values: Sequence[Any]) -> float:
    median = statistics.median(float(v) for v in values)
    return int(median) if float(median).is_integer() and all(isinstance(v, int) for v in values) else median


TRIM_FROM = 4
"""From this many values on, a spread leaves out the lowest and the highest (one outlier does not make the band)."""


def relative_range_pct(values: Sequence[float]) -> float:
    """(max - min) / |median| in percent: how far apart the values lie (0 for fewer than two, or a zero median).

    From ``TRIM_FROM`` values on, the lowest and the highest are left out first.
    """
    if len(values) < 2:
        return 0.0
    median = statistics.median(values)
    kept = sorted(values)[1:-1] if len(values) >= TRIM_FROM else list(values)
    return (max(kept) - min(kept)) / abs(median) * 100.0 if median else 0.0


def reference(records: Sequence[Mapping[str, Any]], metric: str) -> tuple[float | None, int]:
    """The metric's reference over a baseline history: the median of its recorded figures, and how many there are."""
    values = [float(r["metrics"][metric]) for r in records if _number(r.get("metrics", {}).get(metric))]
    return (statistics.median(values) if values else None), len(values)


def history_band_pct(records: Sequence[Mapping[str, Any]], metric: str) -> float:
    """The spread the history has seen of ``metric``: across its figures, and within each recorded result's runs."""
    spreads = [relative_range_pct([float(r["metrics"][metric]) for r in records
                                   if _number(r.get("metrics", {}).get(metric))])]
    for record in records:
        spreads.append(relative_range_pct([float(x[metric]) for x in record.get("runs", []) if _number(x.get(metric))]))
    return max(spreads)


def runs_spread_pct(runs: Sequence[Mapping[str, Any]], metric: str) -> float:
    """How far apart this run's runs lie for ``metric``."""
    return relative_range_pct([float(x[metric]) for x in runs if _number(x.get(metric))])


def noise_band_pct(records: Sequence[Mapping[str, Any]], metric: str,
                   runs: Sequence[Mapping[str, Any]] = ()) -> float:
    """The spread seen of ``metric``: across the history's figures, within each recorded result's runs, within ``runs``."""
    return max(history_band_pct(records, metric), runs_spread_pct(runs, metric))


# ----------------------------------------------------------------- the measurement's own health
SIM_SLIP_LIMIT_PCT = 3.0
"""The simulated engine's timeline stretched more than this: its figures are the machine's, not the model's."""
CLIENT_CPU_LIMIT_PCT = 90.0
"""The client process used more than this share of one core: it was (near) the bottleneck."""
LOOP_LAG_LIMIT_MS = 20.0
"""The client's event loop served a due timer later than this (p99): chunks were read that late.

A quiet loop reading 256 streams shows 4-10 ms; with two other processes spinning on a 2-core machine 17-40 ms."""
COALESCED_READS_LIMIT_PCT = 25.0
"""More than this share of the client's reads carried several chunks of one stream: they were read (or written) a
token or more late. A quiet 2-core machine shows under 1%, one with two spinning processes 1-10%."""
GPU_DISTORTING_REASONS = ("hw_slowdown", "hw_thermal", "sw_thermal", "hw_power_brake")
"""GPU clock limits that mean the node, not the engine, set the pace (a software power cap alone is normal at load)."""


def distortions(apparatus: Mapping[str, Any]) -> list[str]:
    """Why a run's measurement cannot be trusted, one phrase per cause (empty: it can).

    ``apparatus`` holds what was seen while the run ran: ``sim_slip_pct``,
    ``client`` (``cpu_pct``, ``loop_lag_p99_ms``), ``gpu_throttle_reasons``.
    """
    causes = []
    slip = apparatus.get("sim_slip_pct")
    if _number(slip) and slip > SIM_SLIP_LIMIT_PCT:
        causes.append(f"the simulated engine ran {slip:.0f}% behind its schedule (the machine is busy)")
    client = apparatus.get("client") or {}
    cpu = client.get("cpu_pct_max_process", client.get("cpu_pct"))
    if _number(cpu) and cpu > CLIENT_CPU_LIMIT_PCT:
        causes.append(f"the load generator used {cpu:.0f}% of a CPU core (it was the bottleneck; try "
                      f"--client-processes)")
    lag = client.get("loop_lag_p99_ms")
    if _number(lag) and lag > LOOP_LAG_LIMIT_MS:
        causes.append(f"the load generator read chunks up to {lag:.0f} ms late (p99 event-loop lag; the machine "
                      f"is busy)")
    coalesced = client.get("coalesced_reads_pct")
    if _number(coalesced) and coalesced > COALESCED_READS_LIMIT_PCT:
        causes.append(f"{coalesced:.0f}% of the load generator's reads carried several tokens of one stream (chunks "
                      f"were read late)")
    gpu = [r for r in apparatus.get("gpu_throttle_reasons") or () if r in GPU_DISTORTING_REASONS]
    if gpu:
        causes.append(f"the GPUs were throttled ({', '.join(gpu)})")
    return causes


@dataclass(frozen=True)
class Pooled:
    """A case's runs, pooled: the medians of the runs that count, and why the others do not."""

    metrics: Mapping[str, Any]  # medians over the counted runs (or over all runs, when none counted)
    runs: tuple[Mapping[str, Any], ...] = ()  # the counted runs' metrics
    distortion: str = ""  # every run was distorted: the causes seen
    left_out: int = 0  # distorted runs left out

    @classmethod
    def of(cls, runs: Sequence[Mapping[str, Any]], causes: Sequence[Sequence[str]]) -> "Pooled":
        """``runs``' metrics with each run's distortion causes (empty: the run counts).

        Failed requests are not a matter of timing: ``failed`` is the most any
        run failed, distorted or not, so that one run's failures are never
        voted away by the median.
        """
        counted = [r for r, c in zip(runs, causes) if not c]
        if counted:
            pooled = cls(median_metrics(counted), tuple(counted), "", len(runs) - len(counted))
        else:
            seen = list(dict.fromkeys(cause for c in causes for cause in c))
            distorted = len(runs)
            what = f"{distorted} of {distorted} runs distorted: " if distorted > 1 else ""
            pooled = cls(median_metrics(runs), (), what + ("; ".join(seen) or "no run was measured"), distorted)
        failed = [r["failed"] for r in runs if _number(r.get("failed"))]
        if failed and "failed" in pooled.metrics:
            pooled.metrics["failed"] = max(failed)  # type: ignore[index]
        return pooled


def provenance_changes(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """What differs between the newest recorded result and this run: engine version, command line, environment, GPUs.

    The case is compared all the same (an upgrade test is meant to change
    these); the verdict names what changed.
    """
    if not recorded:
        return []
    old_prov, new_prov = recorded.get("provenance", {}), current.get("provenance", {})
    out = []
    for key, label in (("engine_version", "engine version"), ("gpu_name", "GPU"), ("driver_version", "GPU driver")):
        old, new = old_prov.get(key), new_prov.get(key)
        if old and new and old != new:
            out.append(f"{label} {old} -> {new}")
    old_cmd, new_cmd = recorded.get("command"), current.get("command")
    if old_cmd and new_cmd and list(old_cmd) != list(new_cmd):
        removed = [w for w in old_cmd if w not in new_cmd]
        added = [w for w in new_cmd if w not in old_cmd]
        what = ", ".join([*(f"-{w}" for w in removed[:4]), *(f"+{w}" for w in added[:4])]) or "order"
        out.append(f"command line ({what})")
    old_env, new_env = old_prov.get("env"), new_prov.get("env")
    if isinstance(old_env, dict) and isinstance(new_env, dict) and old_env != new_env:
        keys = sorted(k for k in set(old_env) | set(new_env) if old_env.get(k) != new_env.get(k))
        out.append(f"environment ({', '.join(keys)})")
    return out


def effective_tolerances(gates: Mapping[str, float], file_data: Mapping[str, Any] | None, case_key: str) -> dict[str, float]:
    """Gated metrics with tolerances: settings, then the file, then the case."""
    tolerances = dict(gates)
    if file_data:
        tolerances.update(file_data.get("tolerances_pct", {}))
        tolerances.update(file_data.get("cases", {}).get(case_key, {}).get("tolerances_pct", {}))
    return tolerances


def compare(metrics: Mapping[str, float], entry: Mapping[str, Any] | None, tolerances: Mapping[str, float],
            runs: Sequence[Mapping[str, Any]] = (), history_limit: int | None = None) -> list[Verdict]:
    """Every gated metric of a case against a baseline case entry's history (its last ``history_limit``), or none."""
    records = _history(entry, history_limit)
    verdicts = []
    for metric, tol in sorted(tolerances.items()):
        current = metrics.get(metric)
        base, n = reference(records, metric)
        if base is None or current is None:
            verdicts.append(Verdict(metric, base, current, None, tol, MISSING, metric_direction(metric), tol, 0.0, n))
        else:
            verdicts.append(judge(metric, base, float(current), tol, noise_band_pct(records, metric, runs), n))
    return verdicts


def _history(entry: Mapping[str, Any] | None, limit: int | None) -> list[Mapping[str, Any]]:
    records = list(entry.get("history", [])) if entry else []
    return records[-limit:] if limit else records


def noisy_metrics(runs: Sequence[Mapping[str, Any]], entry: Mapping[str, Any] | None,
                  tolerances: Mapping[str, float], history_limit: int | None = None) -> list[str]:
    """Gated metrics whose runs lie further apart than the history and the tolerance allow (run the case again)."""
    records = _history(entry, history_limit)
    return [m for m, tol in sorted(tolerances.items())
            if runs_spread_pct(runs, m) > max(tol, history_band_pct(records, m)) + 1e-9]


def updated_verdicts(metrics: Mapping[str, float], entry: Mapping[str, Any] | None,
                     tolerances: Mapping[str, float], history_limit: int | None = None) -> list[Verdict]:
    """What an update changes, gated metrics shown as reference -> new result."""
    records = _history(entry, history_limit)
    out = []
    for metric, tol in sorted(tolerances.items()):
        base, n = reference(records, metric)
        cur = metrics.get(metric)
        change = change_pct(float(base), float(cur)) if base is not None and cur is not None else None
        out.append(Verdict(metric, base, cur, change, tol, UPDATED, metric_direction(metric), tol, 0.0, n))
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
    changes: tuple[str, ...] = ()  # what changed since the baseline was recorded (engine, command, environment, GPUs)
    noisy: tuple[str, ...] = ()  # gated metrics whose runs lay further apart than history and tolerance allow

    @property
    def failed(self) -> bool:
        return bool(self.message)

    @property
    def settled(self) -> bool:
        """Whether more runs could not change it: ok, missing, failed or updated, on runs no noisier than usual."""
        return self.status not in (REGRESSED, IMPROVED, INCONCLUSIVE) and not self.noisy


def judge_case(case_id: str, workload_key: str, pooled: Pooled, failure_reasons: Sequence[str],
               params: Mapping[str, Any], baseline: "BaselineRead", gates: Mapping[str, float], update: bool,
               current: Mapping[str, Any] | None = None, evidence: Sequence[str] = (),
               history_limit: int | None = None) -> Judgement:
    """A case's pooled runs against its baseline history (or, with ``update``, what recording them would change).

    ``current``: this run's record as an update would store it (provenance,
    command), to name what changed since the baseline; ``evidence``: lines of
    what the engine said about itself, shown beside a failing verdict.
    """
    metrics = pooled.metrics
    if not metrics.get("completed"):
        reasons = "; ".join(failure_reasons) or "no reason recorded"
        return Judgement(FAILED, (), f"no request of {case_id} completed ({metrics.get('failed', 0)} failed): {reasons}")
    if baseline.error:
        return Judgement(FAILED, (), baseline.error)
    if pooled.distortion:
        what = "no baseline was recorded" if update else "nothing was compared"
        return Judgement(INCONCLUSIVE, (), f"inconclusive: {pooled.distortion}; {what} (run it on a quiet machine, "
                                           f"or --inconclusive=skip)")
    tolerances = effective_tolerances(gates, baseline.data, workload_key)
    entry = (baseline.data or {}).get("cases", {}).get(workload_key)
    records = _history(entry, history_limit)
    changes = tuple(provenance_changes(records[-1] if records else None, current or {}))
    if update:
        return Judgement(UPDATED, tuple(updated_verdicts(metrics, entry, tolerances, history_limit)), "", changes)
    mismatch = workload_mismatch(entry, params)
    if mismatch:
        return Judgement(FAILED, (), (
            f"the baseline of {case_id} in {baseline.path} was measured with another workload, so it cannot be "
            "compared:\n  " + "\n  ".join(mismatch)
            + "\nrun the same workload, or record a new baseline with --update-baselines"))
    verdicts = tuple(compare(metrics, entry, tolerances, pooled.runs, history_limit))
    if not records:
        return Judgement(MISSING, verdicts,
                         f"no baseline for {case_id} in {baseline.path}; record one with --update-baselines")
    noisy = tuple(noisy_metrics(pooled.runs, entry, tolerances, history_limit))
    bad = [v.line() for v in verdicts if v.status in (REGRESSED, MISSING)]
    if bad:
        status = REGRESSED if any(v.status == REGRESSED for v in verdicts) else MISSING
        runs = f" (median of {len(pooled.runs)} runs)" if len(pooled.runs) > 1 else ""
        what = "regressed against" if status == REGRESSED else "has gated metrics missing from"
        message = f"{case_id} {what} {baseline.path}{runs}:\n" + "\n".join(bad)
        if changes:
            message += "\nchanged since the baseline: " + "; ".join(changes)
        if evidence:
            message += "\nthe engine says: " + "; ".join(evidence)
        return Judgement(status, verdicts, message, changes, noisy)
    status = IMPROVED if any(v.status == IMPROVED for v in verdicts) else OK
    return Judgement(status, verdicts, "", changes, noisy)


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
