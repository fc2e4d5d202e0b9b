"""Comparing two sets of results (pure): a "before" and an "after", each a JSON report or a baseline tree.

Nothing here reads a file: the edge (``__main__``) reads the report or the
baseline files and hands their content over; a ``Comparison`` comes back,
with renderers for text, markdown and JSON.

Each side is brought to the shape the gate reads, a history of recorded
results per case (``{"metrics", "runs"}``):

- a JSON report's case is one result: its pooled figures, and the runs that
  counted (``verdict.Pooled``: a run whose measurement was distorted does not);
- a baseline file's case is its history (the last ``history_limit``).

A gated metric is then judged by ``verdict.judge``: the reference is
``verdict.reference`` over the "before" side, the figure compared the same over
the "after" side (a report's own figure), and the noise band the widest spread
either side carries (``verdict.history_band_pct``), so the tolerance applied is
the wider of the configured one and that band, as in the plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .verdict import (IMPROVED, INCONCLUSIVE, MISSING, OK, REGRESSED, Pooled, Verdict, effective_tolerances,
                      history_band_pct, judge, reference, workload_mismatch)

REPORT, TREE = "report", "baseline tree"
REPORT_SCHEMA_PREFIX = "pytest-llmperf/report/"
REPORT_SCHEMA_READ = 2  # the newest report schema this version reads


class InputError(ValueError):
    """An input that cannot be compared or merged; the message names the file and the cause, in one line."""


@dataclass(frozen=True)
class SideCase:
    """One case of a side: its recorded results (oldest first), the workload they measured, why they cannot count."""

    id: str
    records: tuple[Mapping[str, Any], ...] = ()  # [{"metrics": {...}, "runs": [{...}, ...]}]
    workload: Mapping[str, Any] | None = None  # the workload's parameters (None: not known)
    workload_key: str = ""  # the case's name in its baseline file
    file_data: Mapping[str, Any] | None = None  # a tree's baseline file (its tolerances apply)
    unmeasured: str = ""  # why there are no figures ("" when there are)
    distortion: str = ""  # every run was distorted: the causes ("" when some run counted)
    tolerances_pct: Mapping[str, float] | None = None  # a report's: the tolerances the plugin applied to it


@dataclass(frozen=True)
class Side:
    """A JSON report or a baseline tree, as the comparison reads it."""

    label: str  # the path as given
    kind: str  # REPORT or TREE
    cases: Mapping[str, SideCase]
    gpus: str | None = None
    model: str | None = None

    def describe(self) -> str:
        what = ", ".join(x for x in (self.gpus, self.model) if x)
        return f"{self.label} ({self.kind}, {_cases(len(self.cases))}{', ' + what if what else ''})"


def _cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


# ----------------------------------------------------------------- sides from content
def report_problem(data: Any) -> str:
    """Why ``data`` is not a JSON report of this plugin ("" when it is one)."""
    if not isinstance(data, dict):
        return "not a JSON report (expected an object)"
    schema = data.get("schema")
    if schema is not None:
        if not isinstance(schema, str) or not schema.startswith(REPORT_SCHEMA_PREFIX):
            return f"not a pytest-llmperf JSON report (schema {schema!r})"
        version = schema[len(REPORT_SCHEMA_PREFIX):]
        if version.isdigit() and int(version) > REPORT_SCHEMA_READ:
            return f"report schema {schema} is newer than this version reads; upgrade pytest-llmperf"
    if not isinstance(data.get("cases"), list) or not isinstance(data.get("environment"), dict):
        return "not a JSON report (--report-json writes one: expected \"cases\" as a list and an \"environment\")"
    env = data["environment"]
    for key, kind in ENVIRONMENT_TYPES.items():
        if env.get(key) is not None and not isinstance(env[key], kind):
            return f"environment.{key}: expected {_KIND_WORDS[kind]}"
    for n, case in enumerate(data["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("id"), str):
            return f"cases[{n}]: expected an object with an \"id\""
        for key, kind in CASE_TYPES.items():
            if case.get(key) is not None and not isinstance(case[key], kind):
                return f"case {case['id']}: {key}: expected {_KIND_WORDS[kind]}"
        for run in case.get("runs") or []:
            if not isinstance(run, dict) or not isinstance(run.get("metrics", {}), dict) or not isinstance(
                    run.get("distorted", []), list):
                return (f"case {case['id']}: every run must be an object with \"metrics\" as an object and "
                        f"\"distorted\" as a list")
    return ""


# The types of what compare and merge read from a report, where present (null is taken as absent).
ENVIRONMENT_TYPES = {"engines": list, "engines_booted": list, "warmups": list, "notes": list, "node": dict,
                     "gates_pct": dict, "unexpectedly_working": dict}
CASE_TYPES = {"metrics": dict, "runs": list, "workload_params": dict, "baseline_key": dict, "record": dict,
              "apparatus": dict, "failure_reasons": list, "changes": list, "result_files": list, "series": dict,
              "message": str, "status": str, "baseline_file": str}
_KIND_WORDS = {list: "a list", dict: "an object", str: "a string"}


def is_baseline_file(data: Any) -> bool:
    """Whether ``data`` looks like a baseline file (an object of cases by name, schema an integer if given)."""
    return (isinstance(data, dict) and isinstance(data.get("cases"), dict)
            and isinstance(data.get("schema", 1), int) and not isinstance(data.get("schema", 1), bool))


def _numeric(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def pooled_runs(case: Mapping[str, Any]) -> Pooled:
    """A report case's runs pooled as the plugin pooled them (each run's metrics with its distortion causes)."""
    runs = case.get("runs") or []
    return Pooled.of([dict(r.get("metrics") or {}) for r in runs], [list(r.get("distorted") or []) for r in runs])


def side_of_report(label: str, data: Mapping[str, Any]) -> Side:
    """A JSON report as a side: each case one recorded result (its figures and the runs that counted)."""
    problem = report_problem(data)
    if problem:
        raise InputError(f"{label}: {problem}")
    cases: dict[str, SideCase] = {}
    for case in data["cases"]:
        metrics = _numeric(case.get("metrics", {}))
        pooled = pooled_runs(case)
        unmeasured = "" if metrics else f"not measured ({case.get('status') or case.get('outcome') or 'no figures'})"
        distortion = pooled.distortion if case.get("runs") else ""
        if not distortion and case.get("status") == INCONCLUSIVE:
            distortion = case.get("message") or "every run was distorted"
        record = {"metrics": metrics, "runs": [_numeric(r) for r in pooled.runs]}
        key = case.get("baseline_key") or {}
        tolerances = {k: float(v) for k, v in (case.get("tolerances_pct") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        cases[case["id"]] = SideCase(case["id"], (record,) if metrics else (), case.get("workload_params") or None,
                                     key.get("workload") or case.get("workload") or "", None, unmeasured, distortion,
                                     tolerances or None)
    env = data["environment"]
    return Side(label, REPORT, cases, env.get("gpus"), env.get("model"))


def side_of_tree(label: str, files: Sequence[tuple[str, Mapping[str, Any]]], history_limit: int | None = None) -> Side:
    """Baseline files (path, content read and upgraded to the current schema) as a side: each case its history.

    A case is named ``engine/config/workload`` as in a report, the engine and
    configuration from the file's header, else from its place in the tree
    (``.../<engine>/<config>.json``).
    """
    from pathlib import PurePath

    cases: dict[str, SideCase] = {}
    where: dict[str, str] = {}
    gpus, models = set(), set()
    for path, data in files:
        p = PurePath(path)
        engine, config = data.get("engine") or p.parent.name, data.get("config") or p.stem
        if data.get("gpus"):
            gpus.add(str(data["gpus"]))
        if data.get("model"):
            models.add(str(data["model"]))
        for name, entry in data.get("cases", {}).items():
            case_id = f"{engine}/{config}/{name}"
            if case_id in cases:
                raise InputError(f"{label}: {case_id} is in two baseline files ({where[case_id]} and {path}); "
                                 f"give the directory of one GPU spec and model")
            records = list(entry.get("history", []))
            records = records[-history_limit:] if history_limit else records
            where[case_id] = str(path)
            cases[case_id] = SideCase(case_id, tuple(records), entry.get("workload"), name, data,
                                      "" if records else "no recorded result")
    return Side(label, TREE, cases, ", ".join(sorted(gpus)) or None, ", ".join(sorted(models)) or None)


# ----------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class Row:
    """One gated metric of one case: before, after, change, the tolerance applied and the verdict."""

    case: str
    verdict: Verdict
    inconclusive: str = ""  # why the verdict does not count (every run of a side distorted)

    @property
    def status(self) -> str:
        return INCONCLUSIVE if self.inconclusive else self.verdict.status

    def to_json(self) -> dict[str, Any]:
        from .metrics import metric_def

        v = self.verdict
        found = metric_def(v.metric)
        return {"case": self.case, "metric": v.metric, "unit": found.unit if found else "", "a": v.baseline,
                "b": v.current, "change_pct": v.change_pct, "tolerance_pct": v.tolerance_pct,
                "configured_pct": v.configured_pct, "band_pct": v.band_pct, "tolerance_from": v.tolerance_from,
                "history_n": v.history_n, "status": self.status,
                **({"inconclusive": self.inconclusive} if self.inconclusive else {})}


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    gates: Mapping[str, float]
    rows: tuple[Row, ...] = ()
    only_in_a: tuple[str, ...] = ()
    only_in_b: tuple[str, ...] = ()
    not_compared: tuple[tuple[str, str], ...] = ()  # (case, why)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def common(self) -> int:
        return len(set(self.a.cases) & set(self.b.cases))

    @property
    def regressed(self) -> dict[str, list[str]]:
        """Cases with a regressed metric, each with those metrics (in the table's order)."""
        out: dict[str, list[str]] = {}
        for row in self.rows:
            if row.status == REGRESSED:
                out.setdefault(row.case, []).append(row.verdict.metric)
        return out


def _tolerances(before: SideCase, gates: Mapping[str, float], named: frozenset[str]) -> dict[str, float]:
    """What gates a case, as the plugin gated it: a baseline file's tolerances over the gates (as in a run); a
    report's recorded tolerances, except for the metrics ``--gate`` named (``named``), over the gates."""
    if before.file_data:
        return effective_tolerances(gates, before.file_data, before.workload_key)
    tolerances = dict(gates)
    for metric, pct in (before.tolerances_pct or {}).items():
        if metric not in named:
            tolerances[metric] = pct
    return tolerances


def compare_sides(a: Side, b: Side, gates: Mapping[str, float], history_limit: int | None = None,
                  named: frozenset[str] = frozenset()) -> Comparison:
    """Every case of both sides, each gated metric judged as the plugin judges it; the rest listed.

    ``gates``: the default gates with ``--gate`` applied; ``named``: the metrics ``--gate`` named (set or off).
    """
    rows: list[Row] = []
    not_compared: list[tuple[str, str]] = []
    # in a report's order where there is one (a tree's is its files')
    first, other = (b, a) if a.kind == TREE and b.kind == REPORT else (a, b)
    common = [c for c in first.cases if c in other.cases]
    for case_id in common:
        before, after = a.cases[case_id], b.cases[case_id]
        why = _why_not(before, after)
        if why:
            not_compared.append((case_id, why))
            continue
        tolerances = _tolerances(before, gates, named)
        distortion = "; ".join(f"{side}: {c.distortion}" for side, c in (("A", before), ("B", after)) if c.distortion)
        for metric, tol in sorted(tolerances.items(), key=lambda kv: _metric_rank(kv[0])):
            rows.append(Row(case_id, _judge(metric, tol, before.records, after.records, history_limit), distortion))
    notes = []
    if a.gpus and b.gpus and a.gpus != b.gpus:
        notes.append(f"A was measured on {a.gpus}, B on {b.gpus}")
    if a.model and b.model and a.model != b.model:
        notes.append(f"A measured {a.model}, B {b.model}")
    if not common:
        notes.append(f"no cases in common: A has {len(a.cases)}, B has {len(b.cases)}; nothing was compared")
    return Comparison(a, b, dict(gates), tuple(rows), tuple(c for c in a.cases if c not in b.cases),
                      tuple(c for c in b.cases if c not in a.cases), tuple(not_compared), tuple(notes))


def _why_not(before: SideCase, after: SideCase) -> str:
    if before.unmeasured or after.unmeasured:
        return "; ".join(f"{side}: {c.unmeasured}" for side, c in (("A", before), ("B", after)) if c.unmeasured)
    if before.workload is not None and after.workload is not None:
        mismatch = workload_mismatch({"workload": before.workload}, after.workload)
        if mismatch:
            return "measured with another workload (" + "; ".join(m.replace("baseline", "A").replace(
                "this run", "B") for m in mismatch) + ")"
    return ""


def _judge(metric: str, tolerance_pct: float, before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
           history_limit: int | None) -> Verdict:
    from .metrics import metric_direction

    if history_limit:
        before, after = before[-history_limit:], after[-history_limit:]
    ref, n = reference(before, metric)
    current, _ = reference(after, metric)
    if ref is None or current is None:
        return Verdict(metric, ref, current, None, tolerance_pct, MISSING, metric_direction(metric), tolerance_pct,
                       0.0, n)
    band = max(history_band_pct(before, metric), history_band_pct(after, metric))
    return judge(metric, ref, current, tolerance_pct, band, n)


# Gated metrics in the order a reader looks for them (as the reports show them); others by name, failed last.
METRIC_ORDER = ("total_token_throughput", "mean_tpot_ms", "output_throughput", "request_throughput", "mean_ttft_ms")


def _metric_rank(metric: str) -> tuple[int, str]:
    if metric in METRIC_ORDER:
        return METRIC_ORDER.index(metric), metric
    return len(METRIC_ORDER) + (1 if metric == "failed" else 0), metric


# ----------------------------------------------------------------- rendering
def _num(value: float | None, metric: str = "") -> str:
    from .metrics import metric_def

    if value is None:
        return "-"
    value = float(value)
    found = metric_def(metric)
    if found is not None and found.unit in ("requests", "tokens") and value.is_integer():
        return f"{value:,.0f}"
    digits = 0 if abs(value) >= 10000 else 1 if abs(value) >= 100 else 2
    return f"{value:,.{digits}f}"


def _change(v: Verdict) -> str:
    return "n/a" if v.change_pct is None else f"{v.change_pct:+.1f}%"


def _tolerance(v: Verdict) -> str:
    text = f"{round(v.tolerance_pct, 1):g}%"
    return text + " (noise band)" if v.tolerance_from == "noise band" else text


def _metric_label(metric: str) -> str:
    from .metrics import metric_def

    found = metric_def(metric)
    return f"{metric} ({found.unit})" if found and found.unit else metric


HEADERS = ("case", "metric", "A", "B", "change", "tolerance", "verdict")


def table_rows(comparison: Comparison) -> list[list[str]]:
    out, last = [], None
    for row in comparison.rows:
        v = row.verdict
        out.append([row.case if row.case != last else "", _metric_label(v.metric), _num(v.baseline, v.metric),
                    _num(v.current, v.metric), _change(v), _tolerance(v), row.status])
        last = row.case
    return out


def summary_lines(comparison: Comparison) -> list[str]:
    """What follows the table: cases on one side only, cases not compared, why some are inconclusive, the outcome."""
    c = comparison
    lines = []
    if c.only_in_a:
        lines.append(f"only in A ({len(c.only_in_a)}): " + ", ".join(c.only_in_a))
    if c.only_in_b:
        lines.append(f"only in B ({len(c.only_in_b)}): " + ", ".join(c.only_in_b))
    for case, why in c.not_compared:
        lines.append(f"not compared: {case}: {why}")
    for case, why in dict.fromkeys((r.case, r.inconclusive) for r in c.rows if r.inconclusive):
        lines.append(f"inconclusive (not gated): {case}: {why}")
    missing = [f"{r.case} {r.verdict.metric}" for r in c.rows if r.status == MISSING]
    if missing:
        lines.append("gated metrics not on both sides (not gated): " + ", ".join(missing))
    lines.extend(c.notes)
    regressed = c.regressed
    judged = {r.case for r in c.rows}
    if regressed:
        lines.append(f"{len(regressed)} of {_cases(len(judged))} regressed: "
                     + "; ".join(f"{case} ({', '.join(metrics)})" for case, metrics in regressed.items()))
    elif judged:
        improved = sorted({r.case for r in c.rows if r.status == IMPROVED})
        lines.append(f"no regression in {_cases(len(judged))}"
                     + (f"; improved: {', '.join(improved)}" if improved else ""))
    return lines


def render_text(comparison: Comparison) -> str:
    from tabulate import tabulate

    lines = [f"A (before): {comparison.a.describe()}", f"B (after):  {comparison.b.describe()}"]
    if comparison.rows:
        lines += ["", tabulate(table_rows(comparison), headers=HEADERS, disable_numparse=True,
                               colalign=("left", "left", "right", "right", "right", "left", "left"))]
    tail = summary_lines(comparison)
    return "\n".join(lines + ([""] + tail if tail else [])) + "\n"


def _cell(value: Any) -> str:
    text = " ".join(str(value).split())
    for ch in ("\\", "|", "<", ">", "*", "_", "`", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text


def render_markdown(comparison: Comparison) -> str:
    c = comparison
    regressed = c.regressed
    head = (f"## pytest-llmperf compare: {len(regressed)} regressed" if regressed
            else "## pytest-llmperf compare: no regression")
    lines = [head, "", f"- A (before): {_cell(c.a.describe())}", f"- B (after): {_cell(c.b.describe())}", ""]
    if c.rows:
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join(("---", "---", "---:", "---:", "---:", "---", "---")) + "|")
        for cells in table_rows(c):
            cells[-1] = f"**{cells[-1]}**" if cells[-1] == REGRESSED else cells[-1]
            lines.append("| " + " | ".join(_cell(x) if i < 6 else x for i, x in enumerate(cells)) + " |")
        lines.append("")
    lines += [f"- {_cell(line)}" for line in summary_lines(c)]
    return "\n".join(lines).rstrip() + "\n"


def to_json(comparison: Comparison) -> dict[str, Any]:
    c = comparison

    def side(s: Side) -> dict[str, Any]:
        return {"path": s.label, "kind": s.kind, "gpus": s.gpus, "model": s.model, "cases": len(s.cases)}

    return {"a": side(c.a), "b": side(c.b), "gates_pct": dict(c.gates), "rows": [r.to_json() for r in c.rows],
            "only_in_a": list(c.only_in_a), "only_in_b": list(c.only_in_b),
            "not_compared": [{"case": case, "why": why} for case, why in c.not_compared],
            "regressed": c.regressed, "notes": list(c.notes), "ok": not c.regressed,
            "statuses": {s: sum(1 for r in c.rows if r.status == s) for s in (OK, REGRESSED, IMPROVED, MISSING,
                                                                             INCONCLUSIVE)}}
