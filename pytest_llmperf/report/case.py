"""One case as the reports show it: what it measured, how it was judged, how pytest saw it.

Only the session writes these; every report format reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..verdict import IMPROVED, MISSING, REGRESSED, UPDATED, Verdict


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
