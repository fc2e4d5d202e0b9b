"""The JSON report, written atomically so a reader never sees half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..files import atomic_write_text
from .case import CaseResult


REPORT_SCHEMA = "pytest-llmperf/report/2"


def json_report(results: Iterable[CaseResult], environment: Mapping[str, Any],
                baseline_updates: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The cases, the run's environment, the baseline updates written, and the unit of every metric the cases carry.

    Every other report (markdown, HTML) and the compare and merge commands read this dict.
    """
    from ..metrics import metric_def

    cases = [r.to_json() for r in results]
    names = sorted({name for case in cases for name in case["metrics"]})
    units = {name: d.unit for name in names if (d := metric_def(name)) is not None}
    return {"schema": REPORT_SCHEMA, "cases": cases, "environment": dict(environment), "metric_units": units,
            "baseline_updates": [dict(u) for u in baseline_updates]}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically so a reader never sees half a report; strict JSON (a non-finite figure is left out)."""
    from ..baselines import finite_data

    atomic_write_text(path, json.dumps(finite_data(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def environment(session: Any) -> dict[str, Any]:
    """What the run was: plugin, platform, settings that shape figures, the node, the engines booted, notes."""
    import dataclasses
    import platform
    import sys

    from .. import __version__

    s = session.settings
    workers = [state for _, state in sorted(session.worker_states.items())]  # under xdist, what each worker said
    return {
        "plugin_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),  # which node of a CI matrix or array job (merge names its sources by it)
        "started_at": session.started_at,
        "engines": list(s.engines),
        "gpus": session.resolved.gpus,
        "suite": session.resolved.suite.source,
        "model": session.resolved.suite.model,
        "baseline_dir": str(s.baseline_dir),
        "update_baselines": s.update_baselines,
        "num_prompts_override": s.num_prompts,
        "sim_slowdown": s.sim_slowdown,
        "gates_pct": dict(s.gates),
        "request_timeout_s": s.request_timeout_s,
        "http": s.http.describe(),
        "node": session.gate.to_json() if not workers else _workers_nodes(workers),
        "engines_booted": [b.to_json() for b in session.boots] + [b for w in workers for b in w.get("boots", [])],
        "warmups": [dataclasses.asdict(w) for w in session.warmups] + [x for w in workers for x in w.get("warmups", [])],
        "workers": [{"worker": w.get("worker"), "host": w.get("host"), "node": w.get("node", {})} for w in workers],
        "notes": session.summary_notes(),
        "unexpectedly_working": dict(session.unexpectedly_working),
        "model_override": s.model,
        "chat_template": str(s.chat_template) if s.chat_template else None,
        "gpu_snapshot": str(s.gpu_snapshot) if s.gpu_snapshot else None,
        "endpoint": s.endpoint,
    }


def _workers_nodes(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The node check of every worker: one entry per engine when they all met the same node, else one per engine
    and worker (``sim (gw1 on node-2)``), so a report of several nodes names each."""
    checked = [w for w in workers if w.get("node")]  # a worker that ran nothing checked nothing
    nodes = [w["node"] for w in checked]
    if not nodes or all(n == nodes[0] for n in nodes):
        return dict(nodes[0]) if nodes else {}
    return {f"{engine} ({w.get('worker')} on {w.get('host')})": node for w in checked for engine, node in w["node"].items()}
