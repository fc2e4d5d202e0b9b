"""Merging JSON reports (pure): one report from several runs of one suite (a CI matrix, a SLURM array).

Nothing here reads or writes a file: the reports come in as values, the
baseline each case is judged against through an injected ``read_baseline``
(case dict -> ``baselines.BaselineRead``), and a ``Merged`` goes out: the
merged report and the baseline records an update would write.

- Cases from different reports are unioned, in the order first met.
- A case measured in several reports is kept as repeats: every run pooled
  (``verdict.Pooled``, distorted runs left out as in the plugin), and judged
  again (``verdict.judge_case``) against its baseline history. When no
  baseline can be read, its runs are pooled but not judged again, and a
  note says so. A case measured in one report only keeps its verdict.
- Reports of other suites, models or GPU specs are refused (``MergeError``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Mapping, Sequence

from .compare import InputError, pooled_runs, report_problem
from .verdict import INCONCLUSIVE, REGRESSED, UPDATED, judge_case, run_spread

# The order of how bad a status is, worst first: a case not judged again keeps the worst of its sources'.
WORST_FIRST = ("regressed", "failed", "error", "missing", "inconclusive", "not run", "improved", "updated", "xfailed",
               "ok", "skipped")
MUST_AGREE = (("suite", "suites"), ("model", "models"), ("gpus", "GPU specs"))
KEY_FIELDS = ("gpus", "model", "engine", "config", "workload")


class MergeError(InputError):
    """Reports that cannot be merged; the message names both files and what differs, in one line."""


@dataclass(frozen=True)
class PendingRecord:
    """A baseline record to write: the file (from the case's baseline key), the case's name in it, what it holds."""

    case_id: str
    key: Mapping[str, str]  # gpus, model, engine, config, workload
    workload: Mapping[str, Any]
    record: Mapping[str, Any]
    lines: tuple[str, ...] = ()  # what the update changes, one line per gated metric


@dataclass(frozen=True)
class Merged:
    report: dict[str, Any]
    updates: tuple[PendingRecord, ...] = ()  # with update: the records to write
    refused: tuple[str, ...] = ()  # with update: cases not recorded, each with why
    pooled: tuple[str, ...] = ()  # cases measured in several reports, their runs pooled
    notes: tuple[str, ...] = field(default_factory=tuple)  # what this merge adds to the report's notes

    @property
    def regressed(self) -> list[str]:
        return [c["id"] for c in self.report["cases"] if c.get("status") == REGRESSED]


# ----------------------------------------------------------------- checks
def suite_name(source: Any) -> str:
    """A suite as merges tell it apart: its file's name (the same suite checked out under two paths is one)."""
    return PurePath(str(source)).name if source else ""


def check_reports(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """MergeError unless every report is one, of the same suite, model and GPU spec, and none is given twice."""
    for label, data in reports:
        problem = report_problem(data)
        if problem:
            raise MergeError(f"{label}: {problem}")
    first_label, first = reports[0]
    env0 = first["environment"]
    for label, data in reports[1:]:
        env = data["environment"]
        for key, what in MUST_AGREE:
            mine, theirs = env0.get(key), env.get(key)
            if key == "suite":
                mine, theirs = suite_name(mine), suite_name(theirs)
            if mine != theirs:
                raise MergeError(f"cannot merge {label} into {first_label}: they ran different {what} "
                                 f"({key} {theirs!r} in {label}, {mine!r} in {first_label})")
    seen: dict[str, str] = {}
    for label, data in reports:
        fingerprint = json.dumps([data["environment"].get("started_at"), data["cases"]], sort_keys=True, default=str)
        if fingerprint in seen:
            raise MergeError(f"{label} is the same report as {seen[fingerprint]}: merging it twice would count its "
                             f"runs twice")
        seen[fingerprint] = label


def _workload_differs(sources: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    (label0, case0), *rest = sources
    params0 = case0.get("workload_params")
    for label, case in rest:
        params = case.get("workload_params")
        if params0 is not None and params is not None and params != params0:
            keys = sorted(k for k in set(params0) | set(params) if params0.get(k) != params.get(k))
            what = ", ".join(f"{k}: {params0.get(k)!r} in {label0}, {params.get(k)!r} in {label}" for k in keys)
            return f"cannot merge {label} into {label0}: they measured {case0['id']} with different workloads ({what})"
    return ""


# ----------------------------------------------------------------- the merge
def merge_reports(reports: Sequence[tuple[str, Mapping[str, Any]]],
                  read_baseline: Callable[[Mapping[str, Any]], Any] | None = None,
                  history_limit: int = 5, update: bool = False, baseline_dir: str | None = None) -> Merged:
    """One report from ``reports`` (label, content), and with ``update`` the baseline records to write.

    ``read_baseline(case)``: the ``BaselineRead`` a case is judged against
    (None: no baseline can be read here). With ``update`` every measured case
    is judged as an update (``judge_case``'s ``update``): the inconclusive,
    the distorted and the failed are refused, the rest are recorded.
    """
    check_reports(reports)
    by_id: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for label, data in reports:
        for case in data["cases"]:
            by_id.setdefault(case["id"], []).append((label, case))
    for sources in by_id.values():
        problem = _workload_differs(sources)
        if problem:
            raise MergeError(problem)
    env = merged_environment(reports)
    gates = dict(env.get("gates_pct") or _default_gates())  # the gates the runs were judged with
    notes: list[str] = []
    cases, updates, refused, pooled_ids = [], [], [], []
    for case_id, sources in by_id.items():
        measured = [(label, c) for label, c in sources if c.get("runs")]
        if len(measured) >= 2:
            case, note = _pooled_case(measured, read_baseline, gates, history_limit)
            pooled_ids.append(case_id)
        else:
            (label, case) = measured[0] if measured else sources[0]
            case, note = dict(case), ""
        unmeasured = [(label, c) for label, c in sources if not c.get("runs")]
        if measured and unmeasured:
            where = ", ".join(f"{label} ({c.get('status') or c.get('outcome')}: "
                              f"{_first_line(c.get('message') or '') or 'not measured'})" for label, c in unmeasured)
            note = " ".join(x for x in (note, f"{case_id} was also in {where}, where it measured nothing") if x)
        if not measured and len(sources) > 1:
            note = (f"{case_id} is in {', '.join(label for label, _ in sources)} and was measured in none of them; "
                    f"kept as {sources[0][0]} has it ({case.get('status') or case.get('outcome')})")
        if note:
            notes.append(note)
        if update and case.get("runs"):
            pending, why = _update_for(case, read_baseline, gates, history_limit, env)
            if pending is None:
                refused.append(f"{case_id}: {why}")
            else:
                updates.append(pending)
                # as an update run shows it: what recording the case changes
                case.update(status=UPDATED, verdicts=list(why), outcome="passed", message="")
        cases.append(case)
    env["notes"] = list(dict.fromkeys([*env.get("notes", []), *notes]))
    env["update_baselines"] = update
    if baseline_dir is not None:
        env["baseline_dir"] = baseline_dir
    units: dict[str, str] = {}
    for _, data in reports:
        units.update(data.get("metric_units") or {})
    baseline_updates = [u for _, data in reports for u in data.get("baseline_updates") or []]
    report = {"schema": "pytest-llmperf/report/2", "cases": cases, "environment": env, "metric_units": units,
              "baseline_updates": baseline_updates}
    return Merged(report, tuple(updates), tuple(refused), tuple(pooled_ids), tuple(notes))


def _default_gates() -> dict[str, float]:
    from .settings import DEFAULT_GATES

    return dict(DEFAULT_GATES)


def merged_environment(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The first report's environment with the others' engines, boots, warm-ups and notes added, and the sources."""
    env = dict(reports[0][1]["environment"])
    envs = [data["environment"] for _, data in reports]
    env["engines"] = list(dict.fromkeys(e for x in envs for e in x.get("engines") or []))
    env["engines_booted"] = [b for x in envs for b in x.get("engines_booted") or []]
    env["warmups"] = [w for x in envs for w in x.get("warmups") or []]
    env["notes"] = list(dict.fromkeys(n for x in envs for n in x.get("notes") or []))
    working: dict[str, Any] = {}
    for x in envs:
        working.update(x.get("unexpectedly_working") or {})
    env["unexpectedly_working"] = working
    nodes: dict[str, Any] = {}
    for x in envs:
        for engine, node in (x.get("node") or {}).items():
            nodes.setdefault(engine, node)
    env["node"] = nodes
    starts = [x.get("started_at") for x in envs if x.get("started_at")]
    env["started_at"] = min(starts) if starts else None
    env["merged_from"] = [_source(label, data["environment"]) for label, data in reports]
    for key in ("sim_slowdown", "num_prompts_override", "plugin_version", "gates_pct"):
        values = {json.dumps(x.get(key), sort_keys=True) for x in envs}
        if len(values) > 1:
            what = ", ".join(f"{label}: {json.dumps(data['environment'].get(key), sort_keys=True)}"
                             for label, data in reports)
            env["notes"].append(f"the merged reports differ in {key} ({what}); the first one's is kept here")
    return env


def _source(label: str, env: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"file": label, "started_at": env.get("started_at")}
    node = env.get("node_name") or env.get("hostname")
    if not node:
        names = {n.get("hostname") or n.get("name") for n in (env.get("node") or {}).values() if isinstance(n, Mapping)}
        node = ", ".join(sorted(n for n in names if n)) or None
    if node:
        out["node"] = node
    return out


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _renumbered_runs(measured: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    runs = []
    for label, case in measured:
        for run in case.get("runs") or []:
            runs.append({**run, "run": len(runs) + 1, "source": label, "source_run": run.get("run")})
    return runs


def _representative(runs: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """The counted run whose total token throughput lies closest to the pooled median (as the plugin picks it)."""
    counted = [r for r in runs if not r.get("distorted")] or list(runs)
    target = metrics.get("total_token_throughput")
    if target is None:
        return counted[-1]
    return min(counted, key=lambda r: abs(float((r.get("metrics") or {}).get("total_token_throughput", 0.0))
                                          - float(target)))


def _apparatus(measured: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    worst: dict[str, Any] = {}
    total = distorted = 0
    causes: list[str] = []
    for _, case in measured:
        app = case.get("apparatus") or {}
        for key, value in (app.get("worst") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                worst[key] = max(worst.get(key, value), value)
        total += int(app.get("runs", len(case.get("runs") or [])))
        distorted += int(app.get("runs_distorted", 0))
        causes += list(app.get("causes") or [])
    return {"worst": worst, "runs_distorted": distorted, "runs": total, "causes": list(dict.fromkeys(causes))}


def baseline_key_of(case: Mapping[str, Any], env: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Where a case's baseline lives: its ``baseline_key``, else from its engine, config, workload and the run's."""
    key = dict(case.get("baseline_key") or {})
    env = env or {}
    fallback = {"gpus": env.get("gpus"), "model": env.get("model"), "engine": case.get("engine"),
                "config": case.get("config"), "workload": case.get("workload")}
    return {k: key.get(k) or fallback[k] for k in KEY_FIELDS}


def _pooled_case(measured: Sequence[tuple[str, Mapping[str, Any]]], read_baseline: Callable[..., Any] | None,
                 gates: Mapping[str, float], history_limit: int) -> tuple[dict[str, Any], str]:
    """A case measured in several reports: its runs pooled and judged again (when its baseline can be read)."""
    from .metrics import gateable_metrics

    labels = [label for label, _ in measured]
    first = measured[0][1]
    runs = _renumbered_runs(measured)
    pooled = pooled_runs({"runs": runs})
    rep = _representative(runs, pooled.metrics)
    rep_case = next(c for label, c in measured if label == rep["source"])
    case = dict(first)
    case["runs"] = runs
    case["metrics"] = dict(pooled.metrics)
    case["spread"] = run_spread(pooled.runs or [r.get("metrics") or {} for r in runs])
    case["merged_from"] = labels
    case["confirm_runs"] = sum(int(c.get("confirm_runs") or 0) for _, c in measured)
    case["apparatus"] = _apparatus(measured)
    case["failure_reasons"] = list(dict.fromkeys(r for _, c in measured for r in c.get("failure_reasons") or []))
    case["changes"] = list(dict.fromkeys(x for _, c in measured for x in c.get("changes") or []))
    case["engine_metrics"] = dict(rep.get("engine_metrics") or rep_case.get("engine_metrics") or {})
    case["engine_evidence"] = list(rep_case.get("engine_evidence") or [])
    case["telemetry"] = rep_case.get("telemetry")
    case["series"] = _series(runs, rep["source"], rep_case.get("series"))
    case["result_files"] = [f for _, c in measured for f in c.get("result_files") or []]
    case["result_file"] = next(iter(case["result_files"]), None)
    versions = list(dict.fromkeys(c.get("engine_version") for _, c in measured if c.get("engine_version")))
    case["engine_version"] = versions[0] if len(versions) == 1 else ", ".join(versions) or None
    if any("requests" in c for _, c in measured):  # --save-requests: each request's run, numbered as merged
        number = {(r["source"], r["source_run"]): r["run"] for r in runs}
        case["requests"] = [{**q, "run": number.get((label, q.get("run")), q.get("run"))}
                            for label, c in measured for q in c.get("requests") or []]
    gated = set(gateable_metrics()) | set(gates)
    record = _merged_record(measured, pooled, gated, case["engine_metrics"], labels)
    case["record"] = record
    baseline = read_baseline(case) if read_baseline is not None else None
    what = f"{case['id']}: measured in {len(measured)} reports ({', '.join(labels)}): {len(runs)} runs pooled"
    if baseline is None or baseline.error or baseline.data is None:
        why = ("no baseline file is known for it" if baseline is None else baseline.error
               or f"its baseline file {baseline.path} does not exist here")
        case["status"] = min((c.get("status") or "ok" for _, c in measured), key=_badness)
        case["verdicts"] = []
        case["outcome"] = "failed" if case["status"] in ("regressed", "failed", "missing", "inconclusive") else "passed"
        case["message"] = (f"its runs from {', '.join(labels)} were pooled but not judged again: {why}; "
                           f"the status is the worst of theirs")
        return case, f"{what}, not judged again ({why}); its status is the worst of the reports' ({case['status']})"
    key = baseline_key_of(case)
    judgement = judge_case(case["id"], key["workload"], pooled, case["failure_reasons"],
                           case.get("workload_params") or {}, baseline, gates, False, record,
                           case["engine_evidence"], history_limit)
    _apply(case, judgement, baseline, gates, history_limit)
    case["suspect"] = next((c["suspect"] for _, c in measured if c.get("suspect")), None) \
        if case["status"] == REGRESSED else None
    return case, f"{what} and judged again against {baseline.path}: {case['status']}"


def _badness(status: str) -> int:
    return WORST_FIRST.index(status) if status in WORST_FIRST else len(WORST_FIRST)


def _apply(case: dict[str, Any], judgement: Any, baseline: Any, gates: Mapping[str, float],
           history_limit: int) -> None:
    from .verdict import effective_tolerances

    key = baseline_key_of(case)
    case["status"] = judgement.status
    case["verdicts"] = [v.to_json() for v in judgement.verdicts]
    case["message"] = judgement.message
    case["outcome"] = "failed" if judgement.failed else "passed"
    case["changes"] = list(dict.fromkeys([*case.get("changes", []), *judgement.changes]))
    case["baseline_file"] = str(baseline.path)
    case["tolerances_pct"] = effective_tolerances(gates, baseline.data, key["workload"])
    entry = (baseline.data or {}).get("cases", {}).get(key["workload"]) or {}
    records = list(entry.get("history", []))
    records = records[-history_limit:] if history_limit else records
    case["baseline_history"] = [{"date": (r.get("provenance") or {}).get("date"), "metrics": dict(r.get("metrics", {}))}
                                for r in records]


def _series(runs: Sequence[Mapping[str, Any]], label: str, series: Mapping[str, Any] | None) -> Any:
    """The representative source's series, its run numbered as merged."""
    if not series:
        return None
    number = next((r["run"] for r in runs if r["source"] == label and r["source_run"] == series.get("run")), None)
    return {**series, "run": number} if number is not None else dict(series)


def _merged_record(measured: Sequence[tuple[str, Mapping[str, Any]]], pooled: Any, gated: set[str],
                   engine_metrics: Mapping[str, Any], labels: Sequence[str]) -> dict[str, Any] | None:
    """The pooled result as a baseline history record: the newest source record's command and provenance."""
    from .baselines import new_record

    records = [c["record"] for _, c in measured if c.get("record")]
    if not records:
        return None
    newest = max(records, key=lambda r: str((r.get("provenance") or {}).get("date") or ""))
    provenance = {**(newest.get("provenance") or {}), "merged_from": list(labels)}
    runs = [{k: v for k, v in r.items() if k in gated} for r in pooled.runs]
    return new_record(pooled.metrics, runs, newest.get("command") or [], provenance, engine_metrics)


def _update_for(case: dict[str, Any], read_baseline: Callable[..., Any] | None, gates: Mapping[str, float],
                history_limit: int, env: Mapping[str, Any]) -> tuple[Any, Any]:
    """(PendingRecord, the update's verdicts as JSON), or (None, why the case is not recorded)."""
    from .baselines import BaselineRead

    runs = case.get("runs") or []
    if not case.get("record"):
        return None, "nothing was measured that a baseline could record"
    if case.get("status") == INCONCLUSIVE or (runs and all(r.get("distorted") for r in runs)):
        return None, "inconclusive: every run's measurement was distorted"
    key = baseline_key_of(case, env)
    baseline = read_baseline(case) if read_baseline is not None else None
    if baseline is None:
        baseline = BaselineRead(PurePath(case.get("baseline_file") or "baseline"), None)  # type: ignore[arg-type]
    judgement = judge_case(case["id"], key["workload"], pooled_runs(case), case.get("failure_reasons") or [],
                           case.get("workload_params") or {}, baseline, gates, True, case["record"], (), history_limit)
    if judgement.status != UPDATED:
        return None, _first_line(judgement.message) or judgement.status
    lines = tuple(v.line() for v in judgement.verdicts)
    if judgement.changes:
        lines += ("changed since the last recording: " + "; ".join(judgement.changes),)
    pending = PendingRecord(case["id"], key, dict(case.get("workload_params") or {}), case["record"], lines)
    return pending, [v.to_json() for v in judgement.verdicts]
