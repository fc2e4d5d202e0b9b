"""One performance run: node checks, engine boots, cases, results.

The plugin's fixtures and hooks call into a ``PerfRun``; it holds no pytest
objects, so the flow can be read (and tested) apart from pytest's glue.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .baselines import (
    MISSING,
    REGRESSED,
    baseline_path,
    compare,
    effective_tolerances,
    read_baseline,
    update_case,
    updated_verdicts,
    workload_mismatch,
)
from .engines import get_adapter
from .engines.base import LOCALHOST, EngineProcess, free_port
from .report import CaseResult
from .settings import Settings
from .suite import Case, EngineConfig, Suite, Workload
from .topology import NodeVerdict, check_node


class CaseFailure(AssertionError):
    """A case measured, but its verdict is a failure; the message says why."""


class NodeUnfit(RuntimeError):
    """The node does not fit the GPU spec; nothing may boot."""


@dataclass
class RunningEngine:
    config: EngineConfig
    base_url: str
    version: str
    log_path: Path
    command: list[str]
    ready_s: float


@dataclass
class BaselineUpdate:
    case_id: str
    path: Path
    lines: list[str]


@dataclass
class PerfRun:
    settings: Settings
    suite: Suite
    cases: list[Case]
    results: dict[str, CaseResult] = field(default_factory=dict)
    engines_booted: list[dict[str, Any]] = field(default_factory=list)
    updates: list[BaselineUpdate] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _node_verdicts: dict[str, NodeVerdict] | None = None

    def __post_init__(self) -> None:
        for case in self.cases:
            self.results[case.id] = CaseResult(case.id, case.config.engine, case.config.name, case.workload.name)

    @property
    def gpus(self) -> str:
        """The spec string naming the baseline tree."""
        if self.settings.gpus is not None:
            return str(self.settings.gpus)
        return self.suite.gpus or "any"

    # ----------------------------------------------------------- node check
    def node_verdicts(self) -> dict[str, NodeVerdict]:
        """Check the node for every selected engine, once, before any boot."""
        if self._node_verdicts is None:
            from .gpus import parse_gpu_spec

            spec = self.settings.gpus or parse_gpu_spec(self.gpus)
            verdicts = {}
            for engine in sorted({c.config.engine for c in self.cases}):
                snapshot, source = get_adapter(engine).node_snapshot()
                verdicts[engine] = check_node(spec, snapshot, source)
            self._node_verdicts = verdicts
        return self._node_verdicts

    def require_node(self) -> None:
        bad = [v for v in self.node_verdicts().values() if not v.ok]
        if bad:
            raise NodeUnfit("\n".join(v.describe() for v in bad))

    # ----------------------------------------------------------- engines
    @contextlib.contextmanager
    def engine(self, config: EngineConfig, log_dir: Path) -> Iterator[RunningEngine]:
        """Boot ``config`` (after the node check), yield it, stop it on every path."""
        self.require_node()
        adapter = get_adapter(config.engine)
        port = free_port()
        argv = adapter.argv(config, LOCALHOST, str(port), self.settings.sim_slowdown)
        log_path = Path(log_dir) / f"{config.engine}-{config.name}.log"
        base_url = f"http://{LOCALHOST}:{port}"
        process = EngineProcess(argv, adapter.env(config), log_path, base_url, adapter.ready_path)
        for result in self.results.values():
            if (result.engine, result.config) == (config.engine, config.name):
                result.log_path = str(log_path)
        try:
            process.start()
            ready_s = process.wait_ready(self.settings.startup_timeout_s)
            version = adapter.version(base_url)
            self.engines_booted.append(
                {"config": config.id, "version": version, "ready_s": round(ready_s, 3), "log_path": str(log_path), "argv": argv}
            )
            yield RunningEngine(config, base_url, version, log_path, adapter.display_argv(config, self.settings.sim_slowdown), ready_s)
        finally:
            process.stop()

    # ----------------------------------------------------------- cases
    def run_case(self, engine: RunningEngine, workload: Workload) -> CaseResult:
        """Measure one workload on a running engine and judge it.

        Raises CaseFailure when the verdict is a failure; the result is
        recorded either way.
        """
        from .loadgen.run import LoadSpec, run_load
        from .metrics import compute_metrics, failure_reasons

        case = Case(engine.config, workload)
        result = self.results[case.id]
        result.engine_version = engine.version
        requests = build_requests(workload)
        load = run_load(
            LoadSpec(
                base_url=engine.base_url,
                model=engine.config.model,
                requests=requests,
                endpoint=workload.endpoint_path,
                max_concurrency=workload.max_concurrency,
                ignore_eos=workload.ignore_eos,
                request_timeout_s=self.settings.request_timeout_s,
            )
        )
        metrics = compute_metrics(load.records, load.duration_s)
        result.metrics = dict(metrics)
        result.failure_reasons = failure_reasons(load.records)
        self._judge(case, engine, result)
        return result

    def _judge(self, case: Case, engine: RunningEngine, result: CaseResult) -> None:
        config, workload = case.config, case.workload
        path = baseline_path(self.settings.baseline_dir, self.gpus, config.model, config.engine, config.name)
        result.baseline_file = str(path)
        if not result.metrics.get("completed"):
            reasons = "; ".join(result.failure_reasons) or "no reason recorded"
            result.message = f"no request of {case.id} completed ({result.metrics.get('failed', 0)} failed): {reasons}"
            raise CaseFailure(result.message)
        try:
            data = read_baseline(path)
        except ValueError as exc:
            result.message = str(exc)
            raise CaseFailure(result.message) from None
        tolerances = effective_tolerances(self.settings.gates, data, workload.name)
        entry = (data or {}).get("cases", {}).get(workload.name)
        if self.settings.update_baselines:
            header = {"engine": config.engine, "config": config.name, "gpus": self.gpus, "model": config.model}
            new_entry = {
                "workload": workload.params(),
                "command": engine.command,
                "metrics": result.metrics,
                "provenance": {
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "plugin_version": __version__,
                    "engine_version": engine.version,
                    "gpus": self.gpus,
                },
            }
            old = update_case(path, header, workload.name, new_entry)
            result.verdicts = updated_verdicts(result.metrics, old, tolerances)
            self.updates.append(BaselineUpdate(case.id, path, [v.line() for v in result.verdicts]))
            return
        mismatch = workload_mismatch(entry, workload.params())
        if mismatch:
            result.verdicts = []
            result.message = (
                f"the baseline of {case.id} in {path} was measured with another workload, so it cannot be compared:\n  "
                + "\n  ".join(mismatch)
                + "\nrun the same workload, or record a new baseline with --update-baselines"
            )
            raise CaseFailure(result.message)
        result.verdicts = compare(result.metrics, entry, tolerances)
        lines = [v.line() for v in result.verdicts if v.status in (REGRESSED, MISSING)]
        if entry is None:
            result.message = f"no baseline for {case.id} in {path}; record one with --update-baselines"
            raise CaseFailure(result.message)
        if lines:
            result.message = f"{case.id} regressed against {path}:\n" + "\n".join(lines)
            raise CaseFailure(result.message)

    # ----------------------------------------------------------- report
    def environment(self) -> dict[str, Any]:
        s = self.settings
        return {
            "plugin_version": __version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "started_at": self.started_at,
            "engines": list(s.engines),
            "gpus": self.gpus,
            "suite": self.suite.source,
            "model": self.suite.model,
            "baseline_dir": str(s.baseline_dir),
            "update_baselines": s.update_baselines,
            "num_prompts_override": s.num_prompts,
            "sim_slowdown": s.sim_slowdown,
            "gates_pct": dict(s.gates),
            "request_timeout_s": s.request_timeout_s,
            "node": {k: {"ok": v.ok, "source": v.source, "problems": list(v.problems)} for k, v in (self._node_verdicts or {}).items()},
            "engines_booted": self.engines_booted,
        }


def build_requests(workload: Workload) -> list:
    """The workload's requests, from its dataset."""
    from .loadgen import datasets

    if workload.dataset == "random":
        assert workload.input_len is not None and workload.output_len is not None
        return datasets.random_requests(
            workload.num_prompts, workload.input_len, workload.output_len, workload.seed, workload.range_ratio
        )
    path = Path(workload.dataset_path) if workload.dataset_path else datasets.SHAREGPT_SAMPLE_PATH
    return datasets.sharegpt_requests(path, workload.num_prompts, workload.seed, workload.output_len)
