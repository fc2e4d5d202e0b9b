"""Synthetic JSON reports and baseline files, shaped as the plugin writes them (for the compare and merge tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from pytest_llmperf.baselines import new_record
from pytest_llmperf.verdict import Pooled

MODEL = "org/model-x"
GPUS = "h200x8"
WORKLOAD = {"dataset": "random", "input_len": 64, "num_prompts": 24, "output_len": 12}


def run(n: int, tput: float, tpot: float, failed: int = 0, distorted: Sequence[str] = (), completed: int = 24,
        **extra: Any) -> dict[str, Any]:
    """One run of a case as a report holds it."""
    metrics = {"completed": completed, "failed": failed, "total_token_throughput": tput, "mean_tpot_ms": tpot,
               "mean_ttft_ms": 100.0, "total_input_tokens": 1536, **extra}
    return {"run": n, "confirming": False, "cache_reset": "/reset_prefix_cache", "metrics": metrics,
            "apparatus": {"sim_slip_pct": 9.0 if distorted else 0.1}, "distorted": list(distorted),
            "engine_metrics": {"counters": {"preemptions": n}}, "failure_reasons": []}


def case(case_id: str, runs: Sequence[dict[str, Any]] = (), status: str = "ok", outcome: str = "passed",
         workload: dict[str, Any] | None = None, baseline_file: str | None = None, date: str = "2026-01-01T00:00:00+00:00",
         message: str = "", **extra: Any) -> dict[str, Any]:
    """A case of a report: its runs pooled as the plugin pools them, its record, its baseline key."""
    engine, config, name = case_id.split("/")
    pooled = Pooled.of([r["metrics"] for r in runs], [r["distorted"] for r in runs])
    record = None
    if runs:
        record = new_record(pooled.metrics, [{k: v for k, v in r.items() if k != "total_input_tokens"}
                                             for r in pooled.runs],
                            ["python", "-m", "pytest_llmperf.sim", "serve", "--profile", config],
                            {"date": date, "engine_version": "0.1.0+sim", "gpus": GPUS},
                            runs[0]["engine_metrics"])
    distorted = sum(1 for r in runs if r["distorted"])
    return {"id": case_id, "engine": engine, "config": config, "workload": name, "outcome": outcome, "status": status,
            "metrics": dict(pooled.metrics), "verdicts": [], "message": message, "failure_reasons": [],
            "baseline_file": baseline_file, "engine_version": "0.1.0+sim" if runs else None, "runs": list(runs),
            "spread": {}, "confirm_runs": 0, "changes": [], "engine_evidence": [], "engine_metrics": {},
            "apparatus": {"worst": {"sim_slip_pct": 9.0 if distorted else 0.1}, "runs_distorted": distorted,
                          "runs": len(runs), "causes": sorted({c for r in runs for c in r["distorted"]})},
            "telemetry": None, "result_files": [],
            "baseline_key": {"gpus": GPUS, "model": MODEL, "engine": engine, "config": config, "workload": name},
            "workload_params": dict(workload or WORKLOAD), "tolerances_pct": {}, "record": record,
            "baseline_history": [], "series": {"run": 1, "requests": {}} if runs else None, **extra}


def report(cases: Sequence[dict[str, Any]], started_at: str = "2026-01-01T00:00:00+00:00", suite: str = "suite.toml",
           model: str = MODEL, gpus: str = GPUS, notes: Sequence[str] = (), **env: Any) -> dict[str, Any]:
    environment = {"plugin_version": "0.1.0", "started_at": started_at, "engines": ["sim"], "gpus": gpus,
                   "suite": suite, "model": model, "baseline_dir": "baselines", "update_baselines": False,
                   "sim_slowdown": 1.0, "gates_pct": {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0,
                                                      "failed": 0.0},
                   "node": {"sim": {"gpu_name": "NVIDIA H200", "source": "simulated node"}},
                   "engines_booted": [{"config": "sim/vllm-tp8", "version": "0.1.0+sim"}], "warmups": [],
                   "notes": list(notes), **env}
    return {"schema": "pytest-llmperf/report/2", "cases": list(cases), "environment": environment,
            "metric_units": {"total_token_throughput": "tok/s", "mean_tpot_ms": "ms"}, "baseline_updates": []}


def baseline_file(engine: str, config: str, cases: dict[str, list[tuple[float, float]]],
                  tolerances: dict[str, float] | None = None, workload: dict[str, Any] | None = None,
                  case_tolerances: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """A schema-2 baseline file: per case, its history as (throughput, TPOT) figures, oldest first."""
    data: dict[str, Any] = {"schema": 2, "engine": engine, "config": config, "gpus": GPUS, "model": MODEL, "cases": {}}
    if tolerances:
        data["tolerances_pct"] = tolerances
    for name, figures in cases.items():
        history = [{"metrics": {"completed": 24, "failed": 0, "total_token_throughput": t, "mean_tpot_ms": p},
                    "runs": [{"completed": 24, "failed": 0, "total_token_throughput": t, "mean_tpot_ms": p}],
                    "command": ["serve"], "provenance": {"date": f"2026-01-0{n + 1}T00:00:00+00:00"}}
                   for n, (t, p) in enumerate(figures)]
        data["cases"][name] = {"workload": dict(workload or WORKLOAD), "history": history}
        if case_tolerances and name in case_tolerances:
            data["cases"][name]["tolerances_pct"] = case_tolerances[name]
    return data


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def tree_path(root: Path, engine: str, config: str) -> Path:
    return root / GPUS / MODEL.replace("/", "__") / engine / f"{config}.json"
