"""One performance run: node checks, engine boots, cases, results.

The plugin's fixtures and hooks call into a ``PerfRun``; it holds no pytest
objects, so the flow can be read (and tested) apart from pytest's glue.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

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
from .engines.base import LOCALHOST, PORT_PLACEHOLDER, EngineProcess, EngineStartError, Launch, free_port, tail
from .report import CaseResult
from .settings import Settings
from .suite import Case, EngineConfig, Suite, Workload
from .node.check import NodeVerdict, check_node
from .node.freed import GpusBefore, GpusNotFreed, record_gpus_before, wait_gpus_freed


TELEMETRY_INTERVAL_S = 0.5
PROMPT_MISMATCH_LIMIT_PCT = 1.0


class CaseFailure(AssertionError):
    """A case measured, but its verdict is a failure; the message says why."""


class NodeUnfit(RuntimeError):
    """The node does not fit the GPU spec; nothing may boot."""


class UnexpectedlyWorking(UserWarning):
    """A configuration marked as a known failure ran: the failure may be fixed."""


class EngineVersionDrift(UserWarning):
    """The engine is another release than the configuration was written for."""


class ExpectedFailure(Exception):
    """A configuration the suite marks as known to fail did fail; the message says how."""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)[:300]


def version_matches(expected: str, found: str) -> bool:
    """Whether the engine version met is the release a configuration was written for."""
    return found == expected or found.startswith(expected + "+")


@dataclass
class RunningEngine:
    config: EngineConfig
    base_url: str
    version: str
    log_path: Path | None
    command: list[str]
    ready_s: float
    served_model: str = ""  # the name requests carry
    gpu_uuids: tuple[str, ...] = ()  # the checked GPUs it runs on
    node_live: bool = False  # the GPUs are this machine's, read through NVML (telemetry possible)
    request_fields: Mapping[str, frozenset[str]] | None = None  # accepted request fields per endpoint (None: any)
    process: EngineProcess | None = None  # None: not ours (an external endpoint)


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
    notes: list[str] = field(default_factory=list)  # things the summary must say (version drift, ...)
    unexpectedly_working: dict[str, str] = field(default_factory=dict)  # config id -> its expected failure
    node_dirty: str | None = None  # set when an engine's GPUs were not freed: nothing else may boot
    _node_verdicts: dict[str, NodeVerdict] | None = None
    _node_live: dict[str, bool] = field(default_factory=dict)
    progress: Any = None  # the plugin's live progress line: for_case(case_id) -> callback, clear()
    _tokenizer: Any = None

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
        """Check the node for every selected engine, once, before any boot.

        The node is read from ``--gpu-snapshot`` when given, from the recorded
        snapshot for the simulated engine, and from live NVML for real engines.
        An external endpoint is checked only when ``--gpus`` is given.
        """
        if self._node_verdicts is None:
            from .gpus import parse_gpu_spec
            from .node.snapshot import hardware_only
            from .node.sources import LiveNvml, NodeReading, RecordedFile

            spec = self.settings.gpus or parse_gpu_spec(self.gpus)
            live: NodeReading | None = None
            snapshot_file = self.settings.gpu_snapshot
            recorded = RecordedFile(snapshot_file).read() if snapshot_file is not None else None
            verdicts = {}
            # Only the engines of the selected cases (-k may leave some out).
            for engine in sorted({r.engine for r in self.results.values()}):
                adapter = get_adapter(engine)
                self._node_live[engine] = False
                if recorded is not None:
                    reading = recorded
                elif engine == "sim":
                    reading = adapter.node_source().read()
                elif not adapter.uses_gpus and self.settings.gpus is None:
                    verdicts[engine] = NodeVerdict("-", "not checked: an external endpoint is checked only with --gpus")
                    continue
                else:
                    if live is None:
                        live = LiveNvml.from_environment().read()
                    reading = live
                if reading.snapshot is None:
                    verdicts[engine] = NodeVerdict(str(spec), reading.source, (reading.error,))
                    continue
                snapshot, source = reading.snapshot, reading.source
                if reading.live and adapter.uses_gpus:
                    self._node_live[engine] = True
                elif reading.live:
                    # An endpoint's own processes are not foreign: check the hardware only.
                    snapshot = hardware_only(snapshot)
                    source += ", hardware only (external endpoint)"
                verdicts[engine] = check_node(spec, snapshot, source)
            self._node_verdicts = verdicts
        return self._node_verdicts

    def require_node(self, engine: str | None = None) -> None:
        """NodeUnfit unless the node fits (for ``engine``, or for every selected engine)."""
        if self.node_dirty:
            raise NodeUnfit(self.node_dirty)
        verdicts = self.node_verdicts()
        bad = [v for e, v in verdicts.items() if not v.ok and engine in (None, e)]
        if bad:
            raise NodeUnfit("\n".join(v.describe() for v in bad))

    def launch(self, config: EngineConfig, port: str = PORT_PLACEHOLDER) -> Launch:
        """How ``config`` is launched: model, served name, template, the checked GPUs."""
        verdict = (self._node_verdicts or {}).get(config.engine)
        adapter = get_adapter(config.engine)
        served = self.settings.served_model_name or config.option("served_model_name")
        return Launch(
            host=LOCALHOST,
            port=port,
            model=self.settings.model or config.model,
            served_model_name=served if adapter.takes_served_model_name else None,
            chat_template=self.settings.chat_template,
            slowdown=self.settings.sim_slowdown,
            gpu_uuids=tuple(getattr(verdict, "gpu_uuids", ()) or ()) if verdict is not None and verdict.ok else (),
        )

    def plan(self, configs: list[EngineConfig]) -> list[str]:
        """What --dry-run prints: per configuration, argv, environment, workloads; then the node verdicts."""
        import shlex

        verdicts = self.node_verdicts()
        lines: list[str] = []
        for config in configs:
            adapter = get_adapter(config.engine)
            launch = self.launch(config)
            lines.append(f"{config.id}" + (f" -- {config.description}" if config.description else ""))
            if adapter.boots:
                lines.append("  command: " + shlex.join(adapter.argv(config, launch)))
                env = adapter.env(config, launch)
                lines.append("  environment: " + (" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) or "(inherited only)"))
                missing = adapter.missing_executable(config)
                if missing:
                    lines.append(f"  warning: {missing}")
            else:
                lines.append(f"  endpoint: {adapter.base_url(config)} (already running; nothing is launched)")
            if config.engine_version:
                lines.append(f"  written for: {config.engine} {config.engine_version}")
            if config.expected_failure:
                lines.append(f"  expected to fail: {config.expected_failure}")
            for note in adapter.notes(config, launch):
                lines.append(f"  note: {note}")
            workloads = [self.effective_workload(c.workload) for c in self.cases if c.config == config]
            lines.append("  workloads: " + ", ".join(f"{w.name} ({_describe_workload(w)})" for w in workloads))
        lines.append("")
        for engine, verdict in sorted(verdicts.items()):
            lines.append(f"node check for {engine}: " + verdict.describe())
        return lines

    # ----------------------------------------------------------- engines
    @contextlib.contextmanager
    def engine(self, config: EngineConfig, log_dir: Path) -> Iterator[RunningEngine]:
        """Boot ``config`` (after the node check), yield it, stop it on every path.

        A configuration marked ``expected_failure`` that fails to boot raises
        ExpectedFailure; one that boots is noted as unexpectedly working.
        """
        self.require_node(config.engine)
        adapter = get_adapter(config.engine)
        live = self._node_live.get(config.engine, False)
        if not adapter.boots:
            yield self._attach(config, adapter, live)
            return
        port = free_port()
        launch = self.launch(config, str(port))
        argv = adapter.argv(config, launch)
        log_path = Path(log_dir) / f"{config.engine}-{config.name}.log"
        base_url = f"http://{LOCALHOST}:{port}"
        process = EngineProcess(argv, adapter.env(config, launch), log_path, base_url, adapter.ready_path)
        for result in self._results_of(config):
            result.log_path = str(log_path)
        # Processes already on the GPUs (below the foreign-process limit) are not the engine's: never waited for.
        before = self._gpus_before(launch) if (adapter.uses_gpus and live) else GpusBefore()
        try:
            try:
                process.start()
                ready_s = process.wait_ready(self.settings.startup_timeout_s or adapter.startup_timeout_s)
            except EngineStartError as exc:
                if config.expected_failure:
                    raise ExpectedFailure(
                        f"{config.id} failed as expected ({config.expected_failure}); seen: {_first_line(str(exc))} "
                        f"(log: {log_path})"
                    ) from None
                raise
            version = adapter.version(base_url)
            served = self._served_model(base_url, launch, config)
            self._note_boot(config, adapter, launch, version)
            self.engines_booted.append(
                {"config": config.id, "version": version, "version_expected": config.engine_version or None,
                 "ready_s": round(ready_s, 3), "log_path": str(log_path), "argv": argv,
                 "env": adapter.env(config, launch), "served_model": served, "gpu_uuids": list(launch.gpu_uuids)}
            )
            yield RunningEngine(config, base_url, version, log_path, adapter.display_argv(config, launch), ready_s,
                                served, launch.gpu_uuids, live, adapter.request_fields, process)
        except Exception:
            process.stop()
            try:
                self._wait_gpus_freed(config, adapter, launch, live, before)
            except NodeUnfit as exc:  # the failure that came first stays the item's; the next boot is refused
                self.notes.append(str(exc))
            raise
        except BaseException:  # Ctrl-C: stop the engine, do not wait on NVML
            process.stop()
            raise
        else:
            process.stop()
            self._wait_gpus_freed(config, adapter, launch, live, before)

    def _results_of(self, config: EngineConfig) -> list[CaseResult]:
        return [r for r in self.results.values() if (r.engine, r.config) == (config.engine, config.name)]

    def _attach(self, config: EngineConfig, adapter: Any, live: bool) -> RunningEngine:
        """An already-running endpoint: wait until it answers, read its version and model."""
        import requests

        base_url = adapter.base_url(config)
        launch = self.launch(config)
        url = base_url + "/health"
        timeout_s = self.settings.startup_timeout_s or adapter.startup_timeout_s
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        with requests.Session() as http:
            http.trust_env = False
            while True:
                try:
                    # ready: /health 200; a server without /health (404) is ready once /v1/models answers
                    status = http.get(url, timeout=5).status_code
                    if status == 404:
                        url = base_url + "/v1/models"
                        status = http.get(url, timeout=5).status_code
                    if status == 200:
                        break
                    last = f"HTTP {status}"
                except requests.RequestException as exc:
                    last = type(exc).__name__
                if time.monotonic() >= deadline:
                    raise EngineStartError(f"endpoint {base_url} is not ready: {url} did not answer 200 within "
                                           f"{timeout_s:g} s (last: {last})")
                time.sleep(0.5)
        version = adapter.version(base_url)
        served = self._served_model(base_url, launch, config)
        self._note_boot(config, adapter, launch, version)
        self.engines_booted.append({"config": config.id, "version": version, "endpoint": base_url, "served_model": served})
        return RunningEngine(config, base_url, version, None, [base_url], 0.0, served, launch.gpu_uuids, live,
                             adapter.request_fields)

    def _note_boot(self, config: EngineConfig, adapter: Any, launch: Launch, version: str) -> None:
        for note in adapter.notes(config, launch):
            if note not in self.notes:
                self.notes.append(note)
        if config.engine_version and not version_matches(config.engine_version, version):
            message = (f"{config.id} was written for {config.engine} {config.engine_version} but met {version}: "
                       f"flags drift between releases, check the command line")
            self.notes.append(message)
            warnings.warn(EngineVersionDrift(message), stacklevel=2)
        if launch.served_model_name is None and (self.settings.served_model_name or config.option("served_model_name")) \
                and not adapter.takes_served_model_name:
            self.notes.append(f"{config.id}: {config.engine} takes no served model name; requests carry the name "
                              f"it lists in /v1/models")
        if config.expected_failure:
            self.unexpectedly_working[config.id] = config.expected_failure

    def summary_notes(self) -> list[str]:
        """What the summary must say beyond the tables."""
        notes = list(self.notes)
        for config_id, reason in self.unexpectedly_working.items():
            notes.append(f"{config_id} started although it is expected to fail ({reason}): the known failure may be "
                         f"fixed; its cases ran normally. Record baselines for it and drop expected_failure")
        return notes

    def _served_model(self, base_url: str, launch: Launch, config: EngineConfig) -> str:
        """The model name requests carry: given, or what /v1/models lists."""
        if launch.served_model_name:
            return launch.served_model_name
        import requests

        fallback = launch.model or config.model
        try:
            with requests.Session() as http:
                http.trust_env = False
                data = http.get(base_url + "/v1/models", timeout=10).json().get("data", [])
            ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (requests.RequestException, ValueError, AttributeError):
            return fallback
        for candidate in (launch.model, config.model):
            if candidate in ids:
                return candidate
        return ids[0] if ids else fallback

    @staticmethod
    def _gpus_before(launch: Launch) -> GpusBefore:
        """Processes and memory on the engine's GPUs before it boots: never waited for after it stops."""
        return record_gpus_before(launch.gpu_uuids)

    def _wait_gpus_freed(self, config: EngineConfig, adapter: Any, launch: Launch, live: bool,
                         before: GpusBefore = GpusBefore()) -> None:
        if not (adapter.uses_gpus and live and launch.gpu_uuids):
            return
        try:
            wait_gpus_freed(list(launch.gpu_uuids), self.settings.gpu_free_timeout_s, ignore_pids=before.pids,
                            memory_before_mib=before.memory_used_mib)
        except GpusNotFreed as exc:
            self.node_dirty = f"after {config.id} stopped, its GPUs were not freed, so nothing else may boot: {exc}"
            raise NodeUnfit(self.node_dirty) from None

    # ----------------------------------------------------------- cases
    def run_case(self, engine: RunningEngine, workload: Workload) -> CaseResult:
        """Measure one workload on a running engine and judge it.

        Raises CaseFailure when the verdict is a failure; the result is
        recorded either way.
        """
        from .loadgen.run import LoadSpec, run_load
        from .metrics import compute_metrics, failure_reasons

        from .loadgen.client import build_body

        case = Case(engine.config, workload)
        result = self.results[case.id]
        workload = self.effective_workload(workload)
        case = Case(engine.config, workload)
        result.engine_version = engine.version
        died = engine.process.exit_code() if engine.process is not None else None
        if died is not None:
            message = f"the engine of {engine.config.id} exited earlier (code {died}); see {engine.log_path}"
            if engine.config.expected_failure:
                raise ExpectedFailure(f"{engine.config.id} failed as expected ({engine.config.expected_failure}); "
                                      f"seen: {message}")
            result.message = message
            raise CaseFailure(message)
        requests, warmup = self._requests(engine, workload, result)
        spec = LoadSpec(
            base_url=engine.base_url,
            model=engine.served_model or engine.config.model,
            requests=requests,
            endpoint=workload.endpoint_path,
            max_concurrency=workload.max_concurrency,
            ignore_eos=workload.ignore_eos,
            request_timeout_s=self.settings.request_timeout_s,
            request_rate=workload.request_rate,
            burstiness=workload.burstiness,
            seed=workload.seed,
            warmup_requests=warmup,
            client_processes=self.settings.client_processes,
            tokenizer=self.tokenizer(),
        )
        if engine.request_fields is not None:
            sent = set(build_body(spec.endpoint, spec.model, requests[0], spec.ignore_eos, spec.extra_body))
            refused = sorted(sent - engine.request_fields.get(spec.endpoint, frozenset()))
            if refused:
                result.message = (f"{engine.config.engine} rejects request fields {refused} that workload "
                                  f"{workload.name} needs; change the workload")
                raise CaseFailure(result.message)
        sampler = None
        if engine.node_live and engine.gpu_uuids:
            from .telemetry import TelemetrySampler

            sampler = TelemetrySampler(list(engine.gpu_uuids), interval_s=TELEMETRY_INTERVAL_S)
            sampler.start()
        progress = self.progress.for_case(case.id) if self.progress is not None else None
        try:
            load = run_load(spec, progress)
        finally:
            if self.progress is not None:
                self.progress.clear()
            if sampler is not None:
                summary = sampler.stop()
                result.telemetry = summary.to_dict()
                result.telemetry_line = summary.line()
                result.throttled = bool(summary.throttled)
        metrics = compute_metrics(load.records, load.duration_s, self.settings.percentiles,
                                  self.settings.goodput_slos_ms, from_schedule=spec.finite_rate)
        self._check_prompt_lengths(case, load.records, metrics)
        result.metrics = dict(metrics)
        result.failure_reasons = failure_reasons(load.records)
        if load.warmup_records:
            warm_failed = sum(1 for r in load.warmup_records if not r.success)
            result.metrics["warmup_completed"] = len(load.warmup_records) - warm_failed
            if warm_failed:
                self.notes.append(f"{case.id}: {warm_failed} of {len(load.warmup_records)} warm-up requests failed: "
                                  + "; ".join(failure_reasons(load.warmup_records, limit=2)))
        self._save_result(case, engine, spec, result, load.records)
        died = engine.process.exit_code() if engine.process is not None else None
        if died is not None:
            message = (f"the engine exited with code {died} during {case.id}; last lines of {engine.log_path}:\n"
                       + tail(engine.log_path))
            if engine.config.expected_failure:
                self.unexpectedly_working.pop(engine.config.id, None)
                raise ExpectedFailure(f"{engine.config.id} failed as expected ({engine.config.expected_failure}); "
                                      f"seen: {_first_line(message)}")
            result.message = message
            raise CaseFailure(message)
        if engine.config.expected_failure:
            if not metrics.get("completed"):
                reasons = "; ".join(result.failure_reasons) or "no reason recorded"
                self.unexpectedly_working.pop(engine.config.id, None)
                raise ExpectedFailure(f"{engine.config.id} failed as expected ({engine.config.expected_failure}); "
                                      f"seen: no request completed: {reasons[:300]}")
            warnings.warn(UnexpectedlyWorking(
                f"{case.id} ran although {engine.config.id} is expected to fail ({engine.config.expected_failure})"
            ), stacklevel=2)
        self._judge(case, engine, result)
        return result

    def effective_workload(self, workload: Workload) -> Workload:
        """The workload as run: --dataset-path replaces a ShareGPT workload's file."""
        if self.settings.dataset_path is not None and workload.dataset == "sharegpt":
            from dataclasses import replace as _replace

            return _replace(workload, dataset_path=str(self.settings.dataset_path))
        return workload

    def tokenizer(self) -> Any:
        """The tokenizer given with --tokenizer (loaded once), else the word tokenizer."""
        if self._tokenizer is None:
            if self.settings.tokenizer_path is not None:
                from .hf_tokenizer import load_tokenizer

                self._tokenizer = load_tokenizer(self.settings.tokenizer_path)
            else:
                from .tokenizer import DEFAULT_TOKENIZER

                self._tokenizer = DEFAULT_TOKENIZER
        return self._tokenizer

    def _requests(self, engine: RunningEngine, workload: Workload, result: CaseResult) -> tuple[list, list]:
        """The workload's measured requests and its warm-up requests (another seed, same shape).

        Random prompts are built with --tokenizer when given; otherwise, on a
        server with a tokenize route (not the simulated engine, which counts
        words as the client does), they are aligned to its token counts.
        """
        tokenizer = self.tokenizer()
        requests = build_requests(workload, tokenizer, self.settings.dataset_path)
        warmup = []
        if workload.warmup_requests:
            from dataclasses import replace as _replace

            warm = _replace(workload, num_prompts=workload.warmup_requests, seed=workload.seed + 1_000_003)
            warmup = build_requests(warm, tokenizer, self.settings.dataset_path)
        if workload.dataset == "random" and self.settings.tokenizer_path is None and engine.config.engine != "sim":
            from .loadgen.alignment import align_to_server, server_token_counter

            counter = server_token_counter(engine.base_url, engine.served_model or engine.config.model,
                                           timeout_s=min(self.settings.request_timeout_s, 300.0))
            if counter is not None:
                requests = align_to_server(requests, counter, workload.seed)
                warmup = align_to_server(warmup, counter, workload.seed + 1) if warmup else warmup
                result.prompts_aligned_by = "server /tokenize"
            else:
                result.prompts_aligned_by = "word tokenizer (the server has no /tokenize; give --tokenizer)"
        return requests, warmup

    def _check_prompt_lengths(self, case: Case, records: list, metrics: dict) -> None:
        """Compare the prompt tokens the server reported with the dataset's; flag a gap over 1%."""
        from .loadgen.alignment import prompt_length_mismatch

        ok = [r for r in records if r.success]
        mismatch_pct, compared = prompt_length_mismatch([r.prompt_len for r in ok], [r.input_tokens for r in ok])
        if not compared:
            return
        metrics["prompt_tokens_mismatch_pct"] = mismatch_pct
        if mismatch_pct > PROMPT_MISMATCH_LIMIT_PCT:
            template = " (on the chat endpoint the chat template's tokens count too)" \
                if case.workload.endpoint == "chat" else ""
            self.notes.append(
                f"{case.id}: the server counted prompts {mismatch_pct:.1f}% away from the workload's token lengths "
                f"(mean over {compared} requests){template}; give --tokenizer with the model's tokenizer.json "
                f"for exact lengths")

    def _save_result(self, case: Case, engine: RunningEngine, spec: Any, result: CaseResult, records: list) -> None:
        """The per-case result in the reference layout (--results-dir) and per-request records (--save-requests)."""
        from .results import request_records, result_json, result_file_name

        if self.settings.save_requests:
            result.requests = request_records(records)
        if self.settings.results_dir is None:
            return
        data = result_json(case, engine.config.engine, spec, result.metrics, self.settings.percentiles,
                           records if self.settings.save_requests else None,
                           tokenizer_id=getattr(self.tokenizer(), "name", "word"))
        from .report import write_json

        path = Path(self.settings.results_dir) / result_file_name(case)
        write_json(path, data)
        result.result_file = str(path)

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
            if result.throttled:
                self.notes.append(f"{case.id}: the baseline was recorded while GPU clocks were limited "
                                  f"({', '.join((result.telemetry or {}).get('throttle_reasons', []))}); consider recording it again")
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
            suspect = ""
            if result.throttled:
                reasons = ", ".join((result.telemetry or {}).get("throttle_reasons", []))
                suspect = f"suspect: GPU throttled ({reasons}) during {case.id}; the regression may be the node's\n"
            result.message = suspect + f"{case.id} regressed against {path}:\n" + "\n".join(lines)
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
            "node": {
                k: {"ok": v.ok, "source": v.source, "problems": list(v.problems), "gpu_indices": list(v.gpu_indices),
                    "gpu_uuids": list(getattr(v, "gpu_uuids", ()) or ()), "live": self._node_live.get(k, False)}
                for k, v in (self._node_verdicts or {}).items()
            },
            "engines_booted": self.engines_booted,
            "notes": self.summary_notes(),
            "unexpectedly_working": dict(self.unexpectedly_working),
            "model_override": s.model,
            "chat_template": str(s.chat_template) if s.chat_template else None,
            "gpu_snapshot": str(s.gpu_snapshot) if s.gpu_snapshot else None,
            "endpoint": s.endpoint,
        }


def build_requests(workload: Workload, tokenizer: Any = None, dataset_path: Path | None = None) -> list:
    """The workload's requests, from its dataset (``dataset_path`` overrides a ShareGPT workload's file)."""
    from .loadgen import datasets
    from .tokenizer import DEFAULT_TOKENIZER

    tokenizer = tokenizer or DEFAULT_TOKENIZER
    if workload.dataset == "random":
        assert workload.input_len is not None and workload.output_len is not None
        return datasets.random_requests(
            workload.num_prompts, workload.input_len, workload.output_len, workload.seed, workload.range_ratio,
            tokenizer=tokenizer,
        )
    path = dataset_path or (Path(workload.dataset_path) if workload.dataset_path else datasets.SHAREGPT_SAMPLE_PATH)
    return datasets.sharegpt_requests(path, workload.num_prompts, workload.seed, workload.output_len,
                                      tokenizer=tokenizer)


def _describe_workload(workload: Workload) -> str:
    if workload.dataset == "random":
        text = f"random {workload.input_len}/{workload.output_len} x {workload.num_prompts}"
    else:
        source = Path(workload.dataset_path).name if workload.dataset_path else "bundled sample"
        text = f"{workload.dataset} x {workload.num_prompts} from {source}"
    if not math.isinf(workload.request_rate):
        text += f" at {workload.request_rate:g} req/s (burstiness {workload.burstiness:g})"
    if workload.max_concurrency:
        text += f", at most {workload.max_concurrency} in flight"
    if workload.warmup_requests:
        text += f", {workload.warmup_requests} warm-up"
    return text
