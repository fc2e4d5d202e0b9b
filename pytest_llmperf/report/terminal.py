"""The terminal summary: one table per engine configuration (pure formatting)."""

from __future__ import annotations

from typing import Any, Iterable

from ..metrics import METRICS
from ..verdict import Verdict
from .case import CaseResult


def _unit(metric: str) -> str:
    return METRICS[metric].unit


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _change(verdict: Verdict | None) -> str:
    if verdict is None or verdict.change_pct is None:
        return "-"
    return f"{verdict.change_pct:+.1f}%"


def summary_tables(results: Iterable[CaseResult]) -> str:
    """One table per engine configuration."""
    from tabulate import tabulate

    by_config: dict[str, list[CaseResult]] = {}
    for r in results:
        by_config.setdefault(f"{r.engine}/{r.config}", []).append(r)
    blocks = []
    for config_id, rows in by_config.items():
        headers = ["workload", f"total {_unit('total_token_throughput')}", "change",
                   f"mean TPOT {_unit('mean_tpot_ms')}", "change", f"mean TTFT {_unit('mean_ttft_ms')}", "failed",
                   "spread", "status"]
        with_telemetry = any(r.telemetry_line for r in rows)
        if with_telemetry:
            headers.append("GPUs")
        table = [
            [
                r.workload,
                _num(r.metrics.get("total_token_throughput")),
                _change(r.verdict("total_token_throughput")),
                _num(r.metrics.get("mean_tpot_ms"), 2),
                _change(r.verdict("mean_tpot_ms")),
                _num(r.metrics.get("mean_ttft_ms")),
                r.metrics.get("failed", "-"),
                r.spread_text(),
                r.status + (f" (suspect: {r.suspect})" if r.suspect else "") + (" (colocated)" if r.colocated else ""),
            ]
            + ([r.telemetry_line or "-"] if with_telemetry else [])
            for r in rows
        ]
        version = next((r.engine_version for r in rows if r.engine_version), None)
        title = config_id + (f" (engine {version})" if version else "")
        where = next((r for r in rows if r.gpu_uuids or r.node.get("worker", "main") != "main"), None)
        if where is not None:  # side by side (xdist) or on part of the node: say where it ran
            place = [f"{len(where.gpu_uuids)} GPUs"] if where.gpu_uuids else []
            if where.node.get("worker", "main") != "main":
                place.append(f"{where.node.get('worker')} on {where.node.get('host')}, {where.node.get('source')}")
            title += f" [{'; '.join(place)}]"
        blocks.append(title + "\n" + tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
    return "\n\n".join(blocks)


def case_lines(result: CaseResult) -> list[tuple[str, bool]]:
    """What a case's row cannot say: confirming runs, runs left out as distorted, what changed, engine evidence."""
    out = []
    runs = len(result.runs)
    if result.confirm_runs:
        out.append((f"{result.id}: {result.confirm_runs} confirming run(s); judged on its runs pooled: "
                    f"{result.verdict_status or result.status}", False))
    distorted = int(result.apparatus.get("runs_distorted", 0))
    if distorted and result.verdict_status != "inconclusive":
        out.append((f"{result.id}: {distorted} of {runs} runs left out, their measurement distorted: "
                    + "; ".join(result.apparatus.get("causes", [])), True))
    if result.changes and result.status not in ("failed", "regressed"):  # a failure's message already has them
        out.append((f"{result.id}: compared although changed since the baseline: " + "; ".join(result.changes), False))
    if result.evidence and result.status not in ("failed", "regressed"):  # a failure's message already has them
        out.append((f"{result.id}: the engine says: " + "; ".join(result.evidence), False))
    return out


def summary_lines(session: Any) -> list[tuple[str, bool]]:
    """The summary after the tests: node verdicts, notes, tables, failures, baseline updates; (line, warn)."""
    out: list[tuple[str, bool]] = []
    for text in session.node_lines():
        out.append((text, False))
    out += [(f"note: {note}", True) for note in session.summary_notes()]
    results = list(session.results.values())
    if results:
        out.append((summary_tables(results), False))
        for result in results:
            if result.failure_reasons and result.metrics.get("failed"):
                out.append((f"{result.id}: {result.metrics['failed']} requests failed: "
                            + "; ".join(result.failure_reasons), True))
            out += [(line, warn) for line, warn in case_lines(result)]
    for update in session.updates:
        out.append((f"baseline updated: {update.case_id} -> {update.path}", False))
        out += [(f"    {line}", False) for line in update.lines]
    out += [(f"error: {problem}", True) for problem in session.write_problems]
    if session.settings.report_json and not any("JSON report" in p for p in session.write_problems):
        out.append((f"report written to {session.settings.report_json}", False))
    if session.settings.report_html and not any("HTML report" in p for p in session.write_problems):
        out.append((f"HTML report written to {session.settings.report_html}", False))
    if session.settings.report_md and not any("markdown summary" in p for p in session.write_problems):
        out.append((f"markdown summary written to {session.settings.report_md}", False))
    return [(session.redactor.scrub(text), warn) for text, warn in out]
