"""The session: runs the stages for the plugin and is the one writer of results.

plugin -> session -> stages. The session checks the node once (``node.gate``),
boots or attaches each configuration (``engines.lifecycle``), measures each
case (``measure``), judges it (``verdict``) and keeps what each stage
returned, plus the outcome pytest reports for each item (``record_outcome``,
the plugin's one call back). At the end it writes the baseline updates and
the reports. Nothing below it knows about pytest; nothing writes a
``CaseResult`` but the session.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .baselines import PendingUpdates, baseline_path, read_for
from .engines import get_adapter
from .engines.base import launch_for
from .engines.lifecycle import BootRecord, EngineStartError, RunningEngine, attach, boot, tail
from .gpus import parse_gpu_spec
from .measure import MeasureOptions, Measurement, measure
from .node.gate import EngineNeeds, NodeGate
from .node.leases import LeaseError
from .report.case import CaseResult
from .secrets import Redactor
from .settings import Settings
from .suite import Case, EngineConfig, ResolvedSuite
from .verdict import (FAIL, GO, INCONCLUSIVE, UNEXPECTED, UPDATED, XFAIL, expected_failure_policy, judge_case,
                      unexpectedly_working_note, version_matches)


NOISY_GATE_FACTOR = 3.0  # a noise band this many times the tolerance is said in the summary


class UnexpectedlyWorking(UserWarning):
    """A configuration marked as a known failure ran: the failure may be fixed."""


class EngineVersionDrift(UserWarning):
    """The engine is another release than the configuration was written for."""


class UsageProblem(ValueError):
    """The run cannot start as asked; the message says why, in one line."""


class NodeDirty(RuntimeError):
    """An engine's GPUs were not freed after it stopped: nothing else may boot; the message says which."""


@dataclass(frozen=True)
class ItemOutcome:
    """What a pytest item should do: pass, fail or xfail, with the message."""

    kind: str  # "pass" | "fail" | "xfail" | "skip"
    message: str = ""


@dataclass(frozen=True)
class EngineUp:
    """A configuration's engine for its items: running, or why not (``expected``: a known failure)."""

    engine: RunningEngine | None
    failure: str = ""
    expected: bool = False


@dataclass(frozen=True)
class BaselineUpdate:
    case_id: str
    path: Path
    lines: tuple[str, ...]


class Session:
    """One run of the plugin: settings, the resolved cases, and everything recorded about them."""

    def __init__(self, settings: Settings, resolved: ResolvedSuite, tokenizer: Any = None):
        self.settings = settings
        self.resolved = resolved
        self.tokenizer = tokenizer
        self.redactor = Redactor(settings.http.secrets(), keys=[settings.http.api_key or ""])
        for config in resolved.configs():
            self.redactor.add(_config_secrets(config))
        self.cases = {c.id: c for c in resolved.cases}
        self.results = {c.id: CaseResult(c.id, c.config.engine, c.config.name, c.workload.name) for c in resolved.cases}
        self.gate = NodeGate(settings.gpus or parse_gpu_spec(resolved.gpus), _needs(resolved.cases),
                             spec_given=settings.gpus is not None, recorded=settings.gpu_snapshot,
                             free_timeout_s=settings.gpu_free_timeout_s, leased_now=self._leased_now)
        self.boots: list[BootRecord] = []
        self.notes: list[str] = list(resolved.notes)
        self.unexpectedly_working: dict[str, str] = {}
        self.updates: list[BaselineUpdate] = []
        self.write_problems: list[str] = []
        self._pending = PendingUpdates(settings.baseline_history)
        self._warned_working: set[str] = set()
        self.warmups: list[Any] = []
        self.progress: Any = None  # the live progress line: for_case(case_id) -> callback, clear()
        self.say: Any = None  # a line for the user now (a wait for GPUs), or None to keep quiet
        self.role = "single"  # "worker" (an xdist worker: measures, writes nothing) or "controller" (only writes)
        self.worker_id = "main"
        self.worker_states: dict[str, dict[str, Any]] = {}  # the controller's: what each worker said of its run
        self._pending_wire: dict[str, list[dict[str, Any]]] = {}  # a worker's baseline updates, per case
        self._leases: dict[str, Any] = {}  # configuration id -> its running engine's GPU lease (colocation)
        self.crashes: list[tuple[str, str]] = []  # the controller's: (worker, case) of each worker that died
        self.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def select(self, case_ids: set[str]) -> None:
        """Keep only the cases pytest selected (``-k``, deselection): reports and the node check follow."""
        self.results = {k: r for k, r in self.results.items() if k in case_ids}
        self.gate.engines = _needs([self.cases[k] for k in self.results])

    # ----------------------------------------------------------- engines
    @contextlib.contextmanager
    def engine(self, config: EngineConfig, log_dir: Path) -> Iterator[EngineUp]:
        """The configuration's engine, booted (or attached) after the node check, stopped on every path."""
        unfit = self.gate.unfit(config.engine)
        node = self.gate.node(config.engine)
        for result in self._results_of(config):
            result.node = self._node_of(config.engine)
        if unfit:
            yield EngineUp(None, unfit)
            return
        adapter = get_adapter(config.engine)
        timeout_s = self.settings.startup_timeout_s or adapter.startup_timeout_s
        log_path = Path(log_dir) / f"{config.engine}-{config.name}.log"
        for result in self._results_of(config):
            result.log_path = str(log_path) if adapter.boots else None
        entered = False
        try:
            with self._lease(config, adapter, node) as lease:
                launch = self._launch(config, adapter, lease.uuids if lease is not None else None)
                if lease is not None:
                    launch = replace(launch, extra_ports=tuple(zip(adapter.port_flags(config),
                                                                   map(str, lease.ports[1:]))))
                if adapter.boots:
                    manager = boot(config, adapter, launch, log_path, self.settings.http, timeout_s, self.redactor,
                                   node.live, self.gate.gpu_release(config.engine, launch.gpu_uuids, config.id),
                                   port=lease.port if lease is not None else None)
                else:
                    manager = attach(config, adapter, launch, self.settings.http, timeout_s, node.live)
                with manager as (engine, record):
                    entered = True
                    self._note_boot(config, adapter, launch, record)
                    for result in self._results_of(config):
                        result.gpu_uuids = list(launch.gpu_uuids)
                        result.lease_wait_s = round(lease.waited_s, 3) if lease is not None else 0.0
                    self._warm_up(engine, config)
                    yield EngineUp(engine)
        except (EngineStartError, OSError, LeaseError) as exc:
            if entered:
                raise
            message = (str(exc) if isinstance(exc, (EngineStartError, LeaseError))
                       else f"cannot boot {config.id}: {exc}")
        except self.gate.not_freed:  # after the stop; the gate is marked: nothing else may boot
            raise NodeDirty(self.gate.dirty or "GPUs not freed") from None
        else:
            return
        finally:
            self._leases.pop(config.id, None)
        kind, message = expected_failure_policy(config.id, config.expected_failure, message)
        if kind == XFAIL and adapter.boots:
            message += f" (log: {log_path})"
        yield EngineUp(None, self.redactor.scrub(message), expected=kind == XFAIL)

    def _launch(self, config: EngineConfig, adapter: Any, gpu_uuids: tuple[str, ...] | None = None) -> Any:
        """How ``config`` launches in this run: its leased GPUs (else the checked ones), the chat template and
        slowdown given."""
        uuids = gpu_uuids if gpu_uuids is not None else self.gate.node(config.engine).gpu_uuids
        return launch_for(config, adapter, gpu_uuids=uuids, chat_template=self.settings.chat_template,
                          slowdown=self.settings.sim_slowdown)

    @contextlib.contextmanager
    def _lease(self, config: EngineConfig, adapter: Any, node: Any) -> Iterator[Any]:
        """The configuration's GPUs, leased among those the node check picked, for the engine's whole life
        (boot to freed); None where there is nothing to lease (an external endpoint, a node without UUIDs)."""
        candidates = node.gpu_uuids
        if not (adapter.boots and candidates):
            yield None
            return
        from .node.leases import lease_gpus

        count = config.gpus or len(candidates)
        label = config.id if self.role == "single" else f"{config.id} ({self.worker_id})"
        lock_dir = self._lock_dir()
        with lease_gpus(lock_dir, candidates, count, label, node.all_uuids or candidates, on_wait=self.say,
                        ports=1 + len(adapter.port_flags(config))) as lease:
            if node.live:
                self._wait_leased_gpus_free(config, lease.uuids, node.pids_at_check)
            if lease.waited_s >= 1.0:
                self.notes.append(f"{config.id} waited {lease.waited_s:.0f} s for {count} GPUs held by other "
                                  f"engines on the node")
            self._leases[config.id] = (lease, lock_dir, tuple(node.all_uuids or candidates))
            yield lease

    def _lock_dir(self) -> Path:
        import os

        from .node.leases import lock_dir_for

        return lock_dir_for(str(self.settings.gpu_lock_dir) if self.settings.gpu_lock_dir else None, os.environ)

    def _leased_now(self) -> set[str]:
        """The GPUs leased to other engines now (other workers of this run, other runs), and those of a lease whose
        holder died without ending it: its engine may still be letting go of them (a lease waits for that)."""
        from .node.leases import read_records

        return {u for r in read_records(self._lock_dir()) if r.ended is None for u in r.uuids}

    def _wait_leased_gpus_free(self, config: EngineConfig, uuids: tuple[str, ...], accepted_pids: Any = ()) -> None:
        """Live GPUs just leased: wait until no process holds them. A lease outlives its holder only as long as
        its holder: the engine of a worker that died may still be letting go of these GPUs."""
        from .node.freed import GpusNotFreed, wait_gpus_freed
        from .node.nvml import NoGpuDriver

        try:
            waited_s = wait_gpus_freed(list(uuids), self.settings.gpu_free_timeout_s, ignore_pids=accepted_pids)
        except GpusNotFreed as exc:
            message = (f"{config.id}: the GPUs it leased are still in use (by the engine of a worker that died?), so "
                       f"nothing else boots here: {exc}")
            self.gate.mark_dirty(message)  # as after an engine of ours: every later boot of this worker is refused
            raise LeaseError(message) from None
        except (NoGpuDriver, RuntimeError, OSError):  # NVML read the node at the check; a hiccup here is no failure
            return
        if waited_s >= 1.0:
            self.notes.append(f"{config.id} waited {waited_s:.0f} s for processes to let go of the GPUs it leased")

    def _node_of(self, engine: str) -> dict[str, Any]:
        """Where this engine's cases run: host, xdist worker, and the node check's source."""
        import socket

        verdict = self.gate.node(engine).verdict
        return {"host": socket.gethostname(), "worker": self.worker_id, "source": verdict.source}

    def _note_boot(self, config: EngineConfig, adapter: Any, launch: Any, record: BootRecord) -> None:
        self.boots.append(record)
        for result in self._results_of(config):
            result.engine_version = record.version
        for note in adapter.notes(config, launch):
            if note not in self.notes:
                self.notes.append(note)
        if config.engine_version and not version_matches(config.engine_version, record.version):
            message = (f"{config.id} was written for {config.engine} {config.engine_version} but met "
                       f"{record.version}: flags drift between releases, check the command line")
            self.notes.append(message)
            warnings.warn(EngineVersionDrift(message), stacklevel=3)
        if config.expected_failure:
            self.unexpectedly_working[config.id] = config.expected_failure

    def _warm_up(self, engine: RunningEngine, config: EngineConfig) -> None:
        """Warm a freshly booted engine up with requests shaped as its first selected workload (no figure kept)."""
        from .engines import default_warmup_requests
        from .measure import warm_up

        first = next((self.cases[k] for k in self.results if self.cases[k].config == config), None)
        if first is None:
            return
        count = config.warmup_requests
        if count is None:  # the engine's default, never more than the workload itself sends
            count = min(default_warmup_requests(config.engine), first.workload.num_prompts)
        if not count:
            return
        done = warm_up(engine, first.workload, count, self._options())
        self.warmups.append(done)
        self.notes.append(self.redactor.scrub(done.line(config.id)))

    def _results_of(self, config: EngineConfig) -> list[CaseResult]:
        return [r for r in self.results.values() if (r.engine, r.config) == (config.engine, config.name)]

    # ----------------------------------------------------------- cases
    def _options(self) -> MeasureOptions:
        return MeasureOptions(self.settings.request_timeout_s, self.settings.percentiles,
                              self.settings.goodput_slos_ms, self.settings.client_processes, self.tokenizer,
                              exact_tokenizer=self.settings.tokenizer_path is not None)

    def run_case(self, engine: RunningEngine, case: Case) -> ItemOutcome:
        """Run ``case`` on ``engine`` (its repeats, then confirmation runs while a verdict is not settled), judge it.

        Each run starts from reset caches where the engine allows it. The
        case's figures are the medians of its runs; runs whose measurement
        was distorted do not count. A regressed, improved or inconclusive
        verdict is re-run up to ``--confirm`` times and judged again on all
        its runs pooled.
        """
        result = self.results[case.id]
        neighbours = self._neighbours(case.config)
        runs: list[Measurement] = []
        for _ in range(case.workload.repeats):
            runs.append(self._run_once(engine, case, len(runs) + 1, confirm=False))
            if _broken(runs[-1]):
                break
        stop = self._trouble(engine, case, runs[-1], result)
        if stop is not None:
            return stop
        judgement = self._judge(case, engine, runs, result)
        confirms = 0
        while not judgement.settled and confirms < self.settings.confirm:
            confirms += 1
            runs.append(self._run_once(engine, case, len(runs) + 1, confirm=True))
            stop = self._trouble(engine, case, runs[-1], result)
            if stop is not None:
                return stop
            judgement = self._judge(case, engine, runs, result)
        result.confirm_runs = confirms
        result.colocated_with = neighbours()
        if result.colocated_with:
            self._note_colocated(case.config)
            if judgement.failed and judgement.status != INCONCLUSIVE and self.settings.colocated == "warn":
                self.notes.append(f"{case.id}: not failed, as --colocated=warn asks: {judgement.message}")
                return ItemOutcome("pass")
        if judgement.status == INCONCLUSIVE:
            if self.settings.inconclusive == "skip":
                return self._outcome(result, "skip", judgement.message)
            return self._outcome(result, FAIL, judgement.message)
        if judgement.failed:
            return self._outcome(result, FAIL, judgement.message)
        if judgement.status == UPDATED:
            self._pend_update(case, engine, runs, judgement)
        return ItemOutcome("pass")

    def _note_colocated(self, config: EngineConfig) -> None:
        """One note per configuration: which of its cases ran beside which other engines."""
        mine = [r for r in self._results_of(config) if r.colocated_with]
        others = list(dict.fromkeys(o for r in mine for o in r.colocated_with))
        prefix = f"{config.id}: "
        note = (f"{prefix}{', '.join(r.workload for r in mine)} ran while {', '.join(others)} ran on the same node "
                f"(marked colocated): their figures may carry its noise")
        self.notes = [n for n in self.notes if not (n.startswith(prefix) and "(marked colocated)" in n)] + [note]

    def _neighbours(self, config: EngineConfig) -> Any:
        """Started with a case: a call that says which other engines ran on the node since (none without a lease)."""
        import time

        held = self._leases.get(config.id)
        if held is None:
            return lambda: []
        from .node.leases import colocated_with, live_others, read_records

        lease, lock_dir, node_uuids = held
        start = time.time()
        live = live_others(read_records(lock_dir), lease.record_id, node_uuids)

        def since() -> list[str]:
            return colocated_with(read_records(lock_dir), lease.record_id, node_uuids, start, time.time(), live)

        return since

    def _run_once(self, engine: RunningEngine, case: Case, number: int, confirm: bool) -> Measurement:
        """One run of ``case``: caches reset, measured, recorded as one of the case's runs."""
        reset = self._reset_caches(engine)
        label = f"{case.id} run {number}" + (" (confirming)" if confirm else "")
        progress = self.progress.for_case(label) if self.progress is not None else None
        try:
            measurement = measure(engine, case, self._options(), progress)
        finally:
            if self.progress is not None:
                self.progress.clear()
        self._record_run(case, engine, measurement, number, confirm, reset)
        return measurement

    def _reset_caches(self, engine: RunningEngine) -> str:
        """Reset the engine's caches before a run, where it allows it; what happened, in a few words."""
        from .engines.control import reset_caches

        adapter = get_adapter(engine.config.engine)
        if not adapter.boots:  # a server we did not start may be shared: its caches are not ours to drop
            note = (f"{engine.config.id}: caches of an external endpoint are not reset between runs; runs after the "
                    f"first may find them warm")
            if note not in self.notes:
                self.notes.append(note)
            return "none (external endpoint)"
        outcome = reset_caches(engine.base_url, engine.http, adapter)
        if not outcome.done and outcome.note:
            note = f"{engine.config.id}: {outcome.note}"
            if note not in self.notes:
                self.notes.append(note)
        return outcome.route if outcome.done and outcome.route else f"none ({outcome.note})" if outcome.note else "none"

    def _trouble(self, engine: RunningEngine, case: Case, measurement: Measurement,
                 result: CaseResult) -> ItemOutcome | None:
        """What the item does when the engine is gone or refuses the workload (None: go on and judge)."""
        config = case.config
        if measurement.failure and measurement.engine_exit_code is None:
            return self._outcome(result, FAIL, measurement.failure)  # the engine refuses the workload
        trouble = ""
        if measurement.engine_exit_code is not None:
            trouble = measurement.failure or (
                f"the engine exited with code {measurement.engine_exit_code} during {case.id}; last lines of "
                f"{engine.log_path}:\n" + tail(engine.log_path))
        elif not measurement.metrics.get("completed"):  # never pooled with runs that measured something
            reasons = "; ".join(self.redactor.scrub(r) for r in measurement.failure_reasons) or "no reason recorded"
            trouble = (f"no request of {case.id} completed ({measurement.metrics.get('failed', 0)} failed): "
                       f"{reasons}")
        kind, message = expected_failure_policy(config.id, config.expected_failure, trouble)
        if kind == UNEXPECTED:
            if config.id not in self._warned_working:
                self._warned_working.add(config.id)
                warnings.warn(UnexpectedlyWorking(f"{case.id} {message}"), stacklevel=3)
            return None
        if kind != GO:
            if trouble:
                self.unexpectedly_working.pop(config.id, None)
            result.verdict_status = ""  # whatever an earlier run's verdict said, the case ends here
            result.verdicts = []
            return self._outcome(result, kind, message)
        return None

    def _record_run(self, case: Case, engine: RunningEngine, measurement: Measurement, number: int, confirm: bool,
                    reset: str) -> None:
        """Keep one run of a case: its figures, the health of what measured it, what the engine said."""
        from .verdict import distortions

        result = self.results[case.id]
        result.engine_version = engine.version
        causes = distortions(measurement.apparatus)
        result.runs.append({
            "run": number, "confirming": confirm, "cache_reset": reset,
            "metrics": dict(measurement.metrics), "apparatus": dict(measurement.apparatus),
            "distorted": causes, "engine_metrics": dict(measurement.engine_metrics),
            "failure_reasons": [self.redactor.scrub(r) for r in measurement.failure_reasons],
        })
        self.notes.extend(n for n in measurement.notes if n not in self.notes)
        if measurement.telemetry is not None:
            result.telemetry = measurement.telemetry.to_dict()
            result.telemetry_line = measurement.telemetry.line()
            result.throttled = result.throttled or bool(measurement.telemetry.throttled)
        result.prompts_aligned_by = measurement.prompts_aligned_by
        if measurement.records and (self.settings.save_requests or self.settings.results_dir is not None):
            self._save_records(case, measurement, number)

    def _save_records(self, case: Case, measurement: Measurement, number: int) -> None:
        from .report.json import write_json
        from .report.reference import request_records, result_file_name, result_json

        result = self.results[case.id]
        if self.settings.save_requests:
            result.requests = (result.requests or []) + [
                {**r, "run": number} for r in self.redactor.scrub_data(request_records(measurement.records))]
        if self.settings.results_dir is not None:
            data = result_json(case, case.config.engine, measurement.shape, measurement.metrics,
                               self.settings.percentiles,
                               measurement.records if self.settings.save_requests else None,
                               tokenizer_id=getattr(self.tokenizer, "name", "word"))
            name = result_file_name(case)
            if number > 1:
                name = name[: -len(".json")] + f".run{number}.json"
            path = Path(self.settings.results_dir) / name
            write_json(path, self.redactor.scrub_data(data))
            result.result_files.append(str(path))
            result.result_file = result.result_files[0]

    def _current_record(self, case: Case, engine: RunningEngine, metrics: Any, runs: Any,
                        engine_metrics: Any) -> dict[str, Any]:
        """This run's result as a baseline history record: figures, runs, command, provenance."""
        from .baselines import new_record
        from .metrics import gateable_metrics

        node = self.gate.node(case.config.engine)
        provenance = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "plugin_version": __version__, "engine_version": engine.version, "gpus": case.gpus,
                      "gpu_name": node.gpu_name, "driver_version": node.driver_version,
                      "env": _fingerprints(dict(case.config.env))}
        gated = set(gateable_metrics()) | set(self.settings.gates)
        slim_runs = [{k: v for k, v in r.items() if k in gated} for r in runs]
        return self.redactor.scrub_data(new_record(metrics, slim_runs, engine.command, provenance, engine_metrics))

    def _judge(self, case: Case, engine: RunningEngine, runs: list[Measurement], result: CaseResult) -> Any:
        """The case's runs so far, pooled and judged against the baseline history; kept on its result."""
        from .engine_metrics import evidence_lines
        from .verdict import Pooled, distortions, effective_tolerances, run_spread

        path = baseline_path(self.settings.baseline_dir, *case.baseline_key[:4])
        result.baseline_file = str(path)
        baseline = read_for(path)
        causes = [distortions(m.apparatus) for m in runs]
        pooled = Pooled.of([m.metrics for m in runs], causes)
        counted = [m for m, c in zip(runs, causes) if not c] or runs
        representative = _representative(counted, pooled.metrics)
        entry = (baseline.data or {}).get("cases", {}).get(case.workload.name)
        records = (entry or {}).get("history", [])
        recorded_engine = records[-1].get("engine_metrics") if records else None
        evidence = evidence_lines(recorded_engine or {}, representative.engine_metrics or {})
        current = self._current_record(case, engine, pooled.metrics, pooled.runs, representative.engine_metrics)
        reasons = [self.redactor.scrub(r) for r in representative.failure_reasons]
        judgement = judge_case(case.id, case.workload.name, pooled, reasons, case.workload.params(), baseline,
                               self.settings.gates, self.settings.update_baselines, current, evidence,
                               self.settings.baseline_history)
        self._note_noisy_gates(case, judgement)
        result.metrics = dict(pooled.metrics)
        result.spread = run_spread(pooled.runs or [m.metrics for m in runs])
        result.failure_reasons = reasons
        result.verdicts = list(judgement.verdicts)
        result.verdict_status = judgement.status
        result.changes = list(judgement.changes)
        result.evidence = list(evidence)
        result.engine_metrics = dict(representative.engine_metrics or {})
        result.apparatus = _apparatus_summary(runs, causes)
        result.current_record = current
        result.baseline_key = dict(zip(("gpus", "model", "engine", "config", "workload"), case.baseline_key))
        result.workload_params = dict(case.workload.params())
        result.tolerances_pct = effective_tolerances(self.settings.gates, baseline.data, case.workload.name)
        limit = self.settings.baseline_history
        result.baseline_history = [{"date": (r.get("provenance") or {}).get("date"), "metrics": dict(r.get("metrics", {}))}
                                   for r in (records[-limit:] if limit else records)]
        result.series = ({**representative.series, "run": runs.index(representative) + 1}
                         if representative.series else None)
        differing = {(m.metrics.get("completed"), m.metrics.get("failed")) for m in runs}
        if len(differing) > 1:
            note = (f"{case.id}: its runs differ in completed/failed requests: "
                    + ", ".join(f"run {n}: {c} completed, {f} failed"
                                for n, (c, f) in enumerate(((m.metrics.get('completed'), m.metrics.get('failed'))
                                                            for m in runs), 1)))
            self.notes = [n for n in self.notes if not n.startswith(f"{case.id}: its runs differ")] + [note]
        return judgement

    def _note_noisy_gates(self, case: Case, judgement: Any) -> None:
        """Say so when a gated metric's noise band is far wider than its tolerance: the gate is blunt there."""
        for v in judgement.verdicts:
            configured = v.configured_pct if v.configured_pct is not None else v.tolerance_pct
            if configured and v.band_pct > NOISY_GATE_FACTOR * configured:
                note = (f"{case.id}: {v.metric} varies by {v.band_pct:.0f}% between runs (its noise band), over "
                        f"{NOISY_GATE_FACTOR:g}x its {configured:g}% tolerance: this workload cannot gate it that "
                        f"finely; more prompts or repeats narrow the band")
                prefix = f"{case.id}: {v.metric} varies by"
                self.notes = [n for n in self.notes if not n.startswith(prefix)] + [note]

    def _pend_update(self, case: Case, engine: RunningEngine, runs: list[Measurement], judgement: Any) -> None:
        gpus, model, engine_name, config_name, workload = case.baseline_key
        result = self.results[case.id]
        path = Path(result.baseline_file or baseline_path(self.settings.baseline_dir, *case.baseline_key[:4]))
        header = {"engine": engine_name, "config": config_name, "gpus": gpus, "model": model}
        self._pending.add(path, header, workload, case.workload.params(), result.current_record)
        lines = [v.line() for v in judgement.verdicts]
        if judgement.changes:
            lines.append("changed since the last recording: " + "; ".join(judgement.changes))
        self.updates.append(BaselineUpdate(case.id, path, tuple(lines)))
        if self.role == "worker":  # the controller writes it (case_wire)
            self._pending_wire.setdefault(case.id, []).append(
                {"path": str(path), "header": header, "workload": workload, "params": case.workload.params(),
                 "record": result.current_record, "lines": lines})
        throttled = sorted({r for m in runs for r in m.throttle_reasons})
        if throttled:
            self.notes.append(f"{case.id}: the baseline was recorded while GPU clocks were limited "
                              f"({', '.join(throttled)}); consider recording it again")

    def _outcome(self, result: CaseResult, kind: str, message: str) -> ItemOutcome:
        """The item's outcome, its message scrubbed (the one place every case message passes)."""
        result.message = self.redactor.scrub(message)
        return ItemOutcome(kind, result.message)

    # ----------------------------------------------------------- from pytest
    def record_outcome(self, case_id: str, outcome: str, message: str = "") -> None:
        """What pytest made of an item: passed / failed / error / skipped / xfailed (the plugin's one call)."""
        result = self.results.get(case_id)
        if result is None:
            return
        if result.outcome in ("error", "xfailed") and outcome != "xfailed":
            return  # a teardown report after a setup error or an xfail changes nothing
        result.outcome = outcome
        if message and (outcome in ("xfailed", "skipped") or not result.message):
            result.message = self.redactor.scrub(message)

    # ----------------------------------------------------------- across xdist
    def case_wire(self, case_id: str) -> dict[str, Any] | None:
        """A worker's word on one case for the controller: its result and its baseline update (plain data)."""
        result = self.results.get(case_id)
        if result is None:
            return None
        return {"result": result.to_wire(), "updates": self._pending_wire.pop(case_id, [])}

    def worker_state(self) -> dict[str, Any]:
        """A worker's word on its run so far: notes, boots, warm-ups, its node as checked."""
        import dataclasses
        import socket

        notes = [self.redactor.scrub(n) for n in dict.fromkeys(n for n in [*self.notes, self.gate.dirty] if n)]
        return {"worker": self.worker_id, "host": socket.gethostname(), "notes": notes,
                "boots": [b.to_json() for b in self.boots], "warmups": [dataclasses.asdict(w) for w in self.warmups],
                "unexpectedly_working": dict(self.unexpectedly_working), "node": self.gate.to_json(),
                "baseline_dir": str(self.settings.baseline_dir),
                "node_lines": [v.describe() for v in self.gate.verdicts(check=False).values()]}

    def absorb_case(self, wire: dict[str, Any]) -> None:
        """The controller takes a worker's case as its own: the result, and the baseline update to write."""
        result = CaseResult.from_wire(wire["result"])
        case = self.cases.get(result.id)
        # Baselines live in the controller's tree, wherever the worker's checkout is.
        path = baseline_path(self.settings.baseline_dir, *case.baseline_key[:4]) if case is not None else None
        self.results[result.id] = result  # its baseline_file: the file it was judged against, on its worker
        for update in wire.get("updates", []):
            target = path or Path(update["path"])
            self._pending.add(target, update["header"], update["workload"], update["params"], update["record"])
            self.updates.append(BaselineUpdate(result.id, target, tuple(update["lines"])))

    def worker_died(self, worker: str, case_id: str, unrun: list[str] = ()) -> None:
        """The controller heard that ``worker`` died while running ``case_id``; ``unrun``: its configuration's
        cases it never ran, which carry where the configuration ran as the crashed case does."""
        self.crashes.append((worker, case_id))
        crashed = self.results.get(case_id)
        for other in unrun:
            result = self.results.get(other)
            if crashed is not None and result is not None:
                result.node, result.gpu_uuids, result.log_path = dict(crashed.node), list(crashed.gpu_uuids), \
                    crashed.log_path

    def _name_unrun(self) -> None:
        """After a worker died, cases nobody ran say why (pytest-xdist stops handing out work once it restarts
        no more workers: --max-worker-restart)."""
        if not self.crashes:
            return
        unrun = [r for r in self.results.values() if r.outcome == "not run" and not r.message]
        if not unrun:
            return
        worker, case_id = self.crashes[-1]
        for result in unrun:
            result.message = (f"not run: no worker ran it after worker {worker} died while running {case_id} "
                              f"(pytest-xdist hands out no more cases once --max-worker-restart is reached, or the "
                              f"run was interrupted)")
        self.notes.append(f"{len(unrun)} case(s) were not run after worker {worker} died: " + ", ".join(r.id for r in unrun))

    def absorb_worker(self, state: dict[str, Any]) -> None:
        worker = str(state.get("worker"))
        if state.get("baseline_dir") not in (None, str(self.settings.baseline_dir)) and worker not in self.worker_states:
            self.notes.append(f"{worker} judged against the baselines in {state['baseline_dir']}, but this run "
                              f"writes baselines to {self.settings.baseline_dir}: run every worker from the same "
                              f"checkout path (or give --baseline-dir as an absolute path present on every node)")
        self.worker_states[worker] = dict(state)
        self.unexpectedly_working.update(state.get("unexpectedly_working") or {})

    def node_lines(self) -> list[str]:
        """The node verdicts, each once; under xdist each worker's, named by worker and host where they differ."""
        if not self.worker_states:
            return list(dict.fromkeys(v.describe() for v in self.gate.verdicts(check=False).values()))
        hosts = {s.get("host") for s in self.worker_states.values()}
        lines: dict[str, list[str]] = {}
        for worker, state in sorted(self.worker_states.items()):
            for text in state.get("node_lines", []):
                lines.setdefault(text, []).append(worker if len(hosts) == 1 else f"{worker} on {state.get('host')}")
        distinct = len(lines) > 1 or len(hosts) > 1
        return [f"{', '.join(workers)}: {text}" if distinct else text for text, workers in lines.items()]

    # ----------------------------------------------------------- the end
    def summary_notes(self) -> list[str]:
        """What the summary must say beyond the tables."""
        workers = [n for state in self.worker_states.values() for n in state.get("notes", [])]
        notes = list(dict.fromkeys(n for n in [*self.notes, self.gate.dirty, *workers] if n))
        notes += [unexpectedly_working_note(c, r) for c, r in self.unexpectedly_working.items()]
        return [self.redactor.scrub(n) for n in notes]

    def dry_run(self) -> tuple[list[str], bool]:
        """What --dry-run prints for the selected cases, and whether the node fits every engine."""
        from .plan import describe, plan_lines

        selected = [self.cases[k] for k in self.results]
        plans = []
        for config in dict.fromkeys(c.config for c in selected):
            adapter = get_adapter(config.engine)
            plans.append(describe(config, adapter, self._launch(config, adapter),
                                  [c.workload for c in selected if c.config == config]))
        verdicts = self.gate.verdicts()
        lines = plan_lines(plans, {engine: v.describe() for engine, v in verdicts.items()})
        return [self.redactor.scrub(line) for line in lines], all(v.ok for v in verdicts.values())

    def finish(self) -> None:
        """Write the baseline updates this run measured, then the JSON report; problems are kept to be shown.

        An xdist worker writes nothing: the controller writes what every worker reported.
        """
        if self.role == "worker":
            return
        self._name_unrun()
        failed = self._pending.write()
        self.write_problems = [self.redactor.scrub(p) for p in failed.values()]
        for update in [u for u in self.updates if u.path in failed]:  # not updated after all
            self.updates.remove(update)
            result = self.results.get(update.case_id)
            if result is not None:
                result.outcome = "failed"
                result.message = self.redactor.scrub(f"its baseline update was not written: {failed[update.path]}")
        import os

        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        settings = self.settings
        if not (settings.report_json or settings.report_html or settings.report_md or step_summary):
            return
        report = self.report()
        if settings.report_json:
            from .report.json import write_json

            self._write("the JSON report", settings.report_json, lambda: write_json(settings.report_json, report))
        if settings.report_html:
            from .report.html import HtmlReportUnavailable, write_html

            self._write("the HTML report", settings.report_html, lambda: write_html(settings.report_html, report),
                        said=(HtmlReportUnavailable,))
        if settings.report_md or step_summary:
            from .report import markdown

            made: list[str] = []
            self._write("the markdown summary", settings.report_md or step_summary,
                        lambda: made.append(self.redactor.scrub(markdown.markdown_summary(report))))
            if not made:
                return
            text = made[0]
            if settings.report_md:
                from .files import atomic_write_text

                self._write("the markdown summary", settings.report_md,
                            lambda: atomic_write_text(Path(settings.report_md), text))
            if step_summary:
                self._write("the summary to GITHUB_STEP_SUMMARY", step_summary,
                            lambda: self._append_step_summary(step_summary, text))

    def _write(self, what: str, path: Any, write: Any, said: tuple[type[Exception], ...] = ()) -> None:
        """Run one writer; whatever it raises becomes one line among the write problems (the others still run).

        ``said``: errors whose message is already the user's line (no exception name before it).
        """
        try:
            write()
        except OSError as exc:
            self.write_problems.append(f"cannot write {what} {path}: {exc.strerror or exc}")
        except Exception as exc:  # a report that cannot be written must not lose the others, nor crash the run
            reason = str(exc) if isinstance(exc, said) else f"{type(exc).__name__}: {exc}"
            self.write_problems.append(self.redactor.scrub(f"cannot write {what} {path}: {reason}"))

    def _append_step_summary(self, path: str, text: str) -> None:
        """Append to the CI page's summary, cut to what is left of its limit; a note when nothing fits."""
        import os

        from .report.markdown import STEP_SUMMARY_LIMIT_BYTES, cut_to

        used = os.path.getsize(path) if os.path.exists(path) else 0
        where = str(self.settings.report_json or self.settings.report_md or "")
        fitted = cut_to(text, STEP_SUMMARY_LIMIT_BYTES - used, where)
        if fitted is None:
            self.notes.append(f"the summary was not added to GITHUB_STEP_SUMMARY: the step's summary already holds "
                              f"{used:,} bytes of its {STEP_SUMMARY_LIMIT_BYTES:,}")
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(fitted)

    def report(self) -> dict[str, Any]:
        """The run as one plain dict (the JSON report): what every report format is written from."""
        from .report.json import json_report

        updates = [{"case": u.case_id, "path": str(u.path), "lines": list(u.lines)} for u in self.updates]
        return self.redactor.scrub_data(json_report(self.results.values(), self.environment(), updates))

    def environment(self) -> dict[str, Any]:
        from .report.json import environment

        return self.redactor.scrub_data(environment(self))


def _fingerprints(env: dict[str, str]) -> dict[str, str]:
    """The configuration's environment for provenance: names, and a short hash of each value (never the value:
    a baseline file is committed, and a secret need not be named like one)."""
    import hashlib

    return {k: "sha256:" + hashlib.sha256(v.encode()).hexdigest()[:12] for k, v in sorted(env.items())}


def _broken(measurement: Measurement) -> bool:
    """Whether further runs of the case are pointless (nothing measured, the engine gone, nothing completed)."""
    return bool(measurement.failure) or measurement.engine_exit_code is not None or not measurement.metrics.get(
        "completed")


def _representative(runs: list[Measurement], pooled: Any) -> Measurement:
    """The run whose total token throughput lies closest to the pooled median (its engine metrics stand for the case)."""
    target = pooled.get("total_token_throughput")
    if target is None:
        return runs[-1]
    return min(runs, key=lambda m: abs(float(m.metrics.get("total_token_throughput", 0.0)) - float(target)))


def _apparatus_summary(runs: list[Measurement], causes: list[list[str]]) -> dict[str, Any]:
    """The health of what measured the case over its runs: the worst of each figure, and the runs distorted."""
    worst: dict[str, Any] = {}
    for m in runs:
        for key, value in _flatten(m.apparatus).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                worst[key] = max(worst.get(key, value), value)
    return {"worst": worst, "runs_distorted": sum(1 for c in causes if c), "runs": len(runs),
            "causes": list(dict.fromkeys(c for cs in causes for c in cs))}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _needs(cases: Any) -> dict[str, EngineNeeds]:
    """What the node gate needs to know of each engine of ``cases``: from its adapter, and its largest configuration."""
    largest: dict[str, int | None] = {}
    for case in cases:
        engine, gpus = case.config.engine, case.config.gpus
        if engine not in largest:
            largest[engine] = gpus
        elif largest[engine] is not None:
            largest[engine] = None if gpus is None else max(gpus, largest[engine])  # type: ignore[type-var]
    return {e: EngineNeeds(get_adapter(e).uses_gpus, get_adapter(e).node_source(), largest[e]) for e in sorted(largest)}


def _config_secrets(config: EngineConfig) -> list[str]:
    from .secrets import argv_secrets, env_secrets

    return [*env_secrets(dict(config.env)), *argv_secrets(config.args)]


def start_session(settings: Settings) -> Session:
    """Settings -> the resolved suite, checked as far as it can be before anything boots -> a session.

    UsageProblem (one line) for a suite that cannot run, a recorded node with
    real engines, baselines that could not be written, a bad tokenizer, an
    HTML report asked for without plotly.
    """
    from .baselines import unwritable
    from .suite import SuiteError, resolve

    try:
        resolved = resolve(settings)
    except SuiteError as exc:
        raise UsageProblem(str(exc)) from None
    if settings.gpu_snapshot is not None:
        from .node.snapshot import load_snapshot

        try:
            load_snapshot(settings.gpu_snapshot)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        real = sorted({c.engine for c in resolved.configs() if get_adapter(c.engine).uses_gpus})
        if real and not settings.dry_run:
            raise UsageProblem(f"--gpu-snapshot checks a recorded node, but {', '.join(real)} would boot on this "
                               f"machine's GPUs: use it with --dry-run (or the sim); real runs check the live node")
    if settings.report_html is not None and not settings.dry_run:
        from .report.html import HtmlReportUnavailable, require_plotly

        try:
            require_plotly()  # before anything is measured, not after an hour of it
        except HtmlReportUnavailable as exc:
            raise UsageProblem(str(exc)) from None
    if settings.update_baselines:
        problem = unwritable(baseline_path(settings.baseline_dir, *c.baseline_key[:4]) for c in resolved.cases)
        if problem:
            raise UsageProblem(f"--update-baselines: {problem}")
    tokenizer = None
    if settings.tokenizer_path is not None:
        from .hf_tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(settings.tokenizer_path)  # a bad tokenizer.json stops the run before any boot
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    else:
        from .tokenizer import DEFAULT_TOKENIZER

        tokenizer = DEFAULT_TOKENIZER
    return Session(settings, resolved, tokenizer)
