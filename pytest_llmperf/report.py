"""Reports: the terminal summary table and the JSON report.

Pure formatting over ``CaseResult``s; the plugin decides where they go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .files import atomic_write_text
from .baselines import IMPROVED, MISSING, REGRESSED, UPDATED, Verdict


@dataclass
class CaseResult:
    id: str
    engine: str
    config: str
    workload: str
    outcome: str = "not run"  # passed / failed / error / skipped / xfailed / not run (interrupted first)
    metrics: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    failure_reasons: list[str] = field(default_factory=list)
    message: str = ""
    baseline_file: str | None = None
    engine_version: str | None = None
    log_path: str | None = None
    telemetry: dict[str, Any] | None = None  # GPU telemetry summary while the case ran (real GPUs only)
    telemetry_line: str = ""
    throttled: bool = False  # thermal or power clock limits were seen while it ran
    requests: list[dict[str, Any]] | None = None  # per-request records (--save-requests)
    result_file: str | None = None  # the case's saved result (--results-dir)
    prompts_aligned_by: str | None = None  # how random prompts got their token lengths, when not built exactly

    @property
    def suspect(self) -> str | None:
        """Why a regression verdict may be the node's fault rather than the engine's."""
        if self.throttled and self.status == REGRESSED:
            return "GPU throttled"
        return None

    @property
    def status(self) -> str:
        """One word for the table: what the verdicts (or the outcome) say."""
        statuses = {v.status for v in self.verdicts}
        if self.outcome in ("error", "skipped", "xfailed", "not run"):
            return self.outcome
        for word in (REGRESSED, MISSING):
            if word in statuses:
                return word
        if self.outcome == "failed":
            return "failed"
        if UPDATED in statuses:
            return UPDATED
        if IMPROVED in statuses:
            return IMPROVED
        return "ok"

    def verdict(self, metric: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.metric == metric), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "engine": self.engine,
            "config": self.config,
            "workload": self.workload,
            "outcome": self.outcome,
            "status": self.status,
            "metrics": self.metrics,
            "verdicts": [v.to_json() for v in self.verdicts],
            "failure_reasons": self.failure_reasons,
            "message": self.message,
            "baseline_file": self.baseline_file,
            "engine_version": self.engine_version,
            "log_path": self.log_path,
            "telemetry": self.telemetry,
            "suspect": self.suspect,
            "result_file": self.result_file,
            "prompts_aligned_by": self.prompts_aligned_by,
            **({"requests": self.requests} if self.requests is not None else {}),
        }


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
        headers = ["workload", "total tok/s", "change", "mean TPOT ms", "change", "mean TTFT ms", "failed", "status"]
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
                r.status + (f" (suspect: {r.suspect})" if r.suspect else ""),
            ]
            + ([r.telemetry_line or "-"] if with_telemetry else [])
            for r in rows
        ]
        version = next((r.engine_version for r in rows if r.engine_version), None)
        title = config_id + (f" (engine {version})" if version else "")
        blocks.append(title + "\n" + tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
    return "\n\n".join(blocks)


def json_report(results: Iterable[CaseResult], environment: Mapping[str, Any]) -> dict[str, Any]:
    return {"cases": [r.to_json() for r in results], "environment": dict(environment)}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically so a reader never sees half a report."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
