"""One case as the reports show it: what it measured, how it was judged, how pytest saw it.

Only the session writes these; every report format reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ..verdict import IMPROVED, INCONCLUSIVE, MISSING, REGRESSED, UPDATED, Verdict


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
    runs: list[dict[str, Any]] = field(default_factory=list)  # every run: metrics, apparatus, engine metrics, reset
    spread: dict[str, dict[str, float]] = field(default_factory=dict)  # per metric over the counted runs
    verdict_status: str = ""  # what the verdict said (ok / regressed / improved / missing / inconclusive / updated)
    changes: list[str] = field(default_factory=list)  # what changed since the baseline was recorded
    evidence: list[str] = field(default_factory=list)  # what the engine said, against the baseline's recording
    engine_metrics: dict[str, Any] = field(default_factory=dict)  # the representative run's engine metrics summary
    apparatus: dict[str, Any] = field(default_factory=dict)  # health of what measured it, worst over the runs
    confirm_runs: int = 0  # runs added to confirm a verdict
    result_files: list[str] = field(default_factory=list)  # --results-dir: one per run
    current_record: dict[str, Any] | None = None  # the result as a baseline update would record it
    baseline_key: dict[str, str] = field(default_factory=dict)  # gpus, model, engine, config, workload
    workload_params: dict[str, Any] = field(default_factory=dict)  # what the baseline file's case "workload" holds
    tolerances_pct: dict[str, float] = field(default_factory=dict)  # the configured tolerances that applied
    baseline_history: list[dict[str, Any]] = field(default_factory=list)  # [{date, metrics}] judged against
    series: dict[str, Any] | None = None  # the representative run over time, for charts (report.series)
    node: dict[str, Any] = field(default_factory=dict)  # where it ran: host, worker, the node check's source
    gpu_uuids: list[str] = field(default_factory=list)  # the GPUs its engine was leased
    colocated_with: list[str] = field(default_factory=list)  # other engines running on the node meanwhile
    lease_wait_s: float = 0.0  # how long its configuration waited for its GPUs before booting

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
        if self.verdict_status == INCONCLUSIVE and self.outcome in ("failed", "skipped"):
            return INCONCLUSIVE
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

    def spread_text(self) -> str:
        """How far apart the counted runs lay: ``3 runs, cv 0.4%`` (the widest CV of the gated metrics), or "-"."""
        gated = [v.metric for v in self.verdicts] or ["total_token_throughput", "mean_tpot_ms"]
        cvs = [self.spread[m]["cv_pct"] for m in gated if m in self.spread]
        n = max((int(s.get("n", 0)) for s in self.spread.values()), default=0)
        if n < 2 or not cvs:
            return "-" if n < 2 else f"{n} runs"
        return f"{n} runs, cv {max(cvs):.1f}%"

    @property
    def colocated(self) -> bool:
        return bool(self.colocated_with)

    def to_wire(self) -> dict[str, Any]:
        """Every field as plain data, for the trip from an xdist worker to the controller (``from_wire``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["verdicts"] = [asdict(v) for v in self.verdicts]
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "CaseResult":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["verdicts"] = [Verdict(**v) for v in values.get("verdicts", [])]
        return cls(**values)

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
            "runs": self.runs,
            "spread": self.spread,
            "confirm_runs": self.confirm_runs,
            "changes": self.changes,
            "engine_evidence": self.evidence,
            "engine_metrics": self.engine_metrics,
            "apparatus": self.apparatus,
            "result_files": self.result_files,
            "baseline_key": self.baseline_key,
            "workload_params": self.workload_params,
            "tolerances_pct": self.tolerances_pct,
            "record": self.current_record,
            "baseline_history": self.baseline_history,
            "series": self.series,
            "node": self.node,
            "gpu_uuids": self.gpu_uuids,
            "colocated": self.colocated,
            "colocated_with": self.colocated_with,
            "lease_wait_s": self.lease_wait_s,
            **({"requests": self.requests} if self.requests is not None else {}),
        }
