"""Measurement: a running engine and a case -> what was measured. No judging.

``measure`` builds the workload's requests (aligned to the server's token
counts where that is how exact lengths are had), sends the warm-up and the
load, samples the GPUs meanwhile on a live node, computes the metrics and
the diagnostics (prompt lengths as the server counted them, warm-up
results), and notes whether the engine survived. It can be called again on
the same engine (a repeat): everything it needs comes in as values (the
engine's process handle is only asked whether it still runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .engines.lifecycle import RunningEngine
from .metrics import RequestRecord, compute_metrics, failure_reasons
from .suite import Case, Workload

TELEMETRY_INTERVAL_S = 0.5
PROMPT_MISMATCH_LIMIT_PCT = 1.0
WARMUP_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class MeasureOptions:
    request_timeout_s: float = 3600.0
    percentiles: tuple[float, ...] = (99.0,)
    goodput_slos_ms: Mapping[str, float] | None = None
    client_processes: int = 1
    tokenizer: Any = None  # builds prompts and counts text; None: the word tokenizer
    exact_tokenizer: bool = False  # the model's own tokenizer: prompts need no alignment through the server


@dataclass(frozen=True)
class LoadShape:
    """How the load was sent (for the results file in the reference layout)."""

    model: str
    endpoint: str
    num_prompts: int
    request_rate: float
    burstiness: float
    max_concurrency: int | None


@dataclass(frozen=True)
class Measurement:
    """What one run of a case measured; ``failure`` says why nothing could be measured."""

    metrics: Mapping[str, Any] = field(default_factory=dict)
    failure_reasons: tuple[str, ...] = ()
    records: tuple[RequestRecord, ...] = ()
    shape: LoadShape | None = None
    telemetry: Any = None  # TelemetrySummary while it ran (live GPUs only)
    prompts_aligned_by: str | None = None
    notes: tuple[str, ...] = ()
    engine_exit_code: int | None = None  # the engine exited during (or before) the load
    failure: str = ""  # the case could not be measured at all (the engine refuses the workload, is gone, ...)
    apparatus: Mapping[str, Any] = field(default_factory=dict)  # health of what measured it (client, sim, GPUs)
    engine_metrics: Mapping[str, Any] = field(default_factory=dict)  # what the engine said about itself meanwhile
    series: Mapping[str, Any] | None = None  # the run over time, for charts (``report.series.run_series``, run 1)

    @property
    def throttle_reasons(self) -> tuple[str, ...]:
        return tuple(self.telemetry.throttle_reasons) if self.telemetry is not None and self.telemetry.throttled else ()


def build_requests(workload: Workload, tokenizer: Any = None) -> list:
    """The workload's requests, from its dataset (random prompts, or its ShareGPT file)."""
    from .loadgen import datasets
    from .tokenizer import DEFAULT_TOKENIZER

    tokenizer = tokenizer or DEFAULT_TOKENIZER
    if workload.dataset == "random":
        assert workload.input_len is not None and workload.output_len is not None
        return datasets.random_requests(
            workload.num_prompts, workload.input_len, workload.output_len, workload.seed, workload.range_ratio,
            tokenizer=tokenizer,
        )
    path = Path(workload.dataset_path) if workload.dataset_path else datasets.SHAREGPT_SAMPLE_PATH
    return datasets.sharegpt_requests(path, workload.num_prompts, workload.seed, workload.output_len,
                                      tokenizer=tokenizer)


def _requests(engine: RunningEngine, workload: Workload, options: MeasureOptions) -> tuple[list, list, str | None]:
    """The measured requests, the warm-up requests (another seed, same shape), and how prompts were aligned.

    Random prompts on a server that counts tokens its own way (not the
    simulated engine, which counts words as the client does) are aligned
    through its ``/tokenize`` unless the model's tokenizer was given.
    """
    requests = build_requests(workload, options.tokenizer)
    warmup = []
    if workload.warmup_requests:
        warm = replace(workload, num_prompts=workload.warmup_requests, seed=workload.seed + WARMUP_SEED_OFFSET)
        warmup = build_requests(warm, options.tokenizer)
    if workload.dataset != "random" or options.exact_tokenizer or engine.config.engine == "sim":
        return requests, warmup, None
    from .http import ControlClient
    from .loadgen.alignment import align_through_server

    with ControlClient(engine.base_url, engine.http) as client:
        timeout_s = min(options.request_timeout_s, 300.0)
        requests, how = align_through_server(requests, client, engine.served_model, workload.seed, timeout_s)
        if warmup and how == "server /tokenize":
            warmup, _ = align_through_server(warmup, client, engine.served_model, workload.seed + 1, timeout_s)
    return requests, warmup, how


def refused_fields(engine: RunningEngine, workload: Workload, body: Mapping[str, Any]) -> list[str]:
    """Request fields the engine is known to reject (TensorRT-LLM's models forbid unknown ones)."""
    if engine.request_fields is None:
        return []
    return sorted(set(body) - engine.request_fields.get(workload.endpoint_path, frozenset()))


def measure(engine: RunningEngine, case: Case, options: MeasureOptions,
            progress: Callable[[Any], None] | None = None) -> Measurement:
    """Run ``case`` once on ``engine``: warm-up, load, metrics, diagnostics."""
    from .loadgen.client import build_body
    from .loadgen.run import LoadSpec, run_load
    from .report.series import run_series

    workload = case.workload
    died = engine.exit_code()
    if died is not None:
        where = f"; see {engine.log_path}" if engine.log_path else ""
        return Measurement(engine_exit_code=died,
                           failure=f"the engine of {engine.config.id} exited earlier (code {died}){where}")
    requests, warmup, aligned_by = _requests(engine, workload, options)
    spec = LoadSpec(
        base_url=engine.base_url, model=engine.served_model, requests=requests, endpoint=workload.endpoint_path,
        max_concurrency=workload.max_concurrency, ignore_eos=workload.ignore_eos,
        request_timeout_s=options.request_timeout_s, request_rate=workload.request_rate,
        burstiness=workload.burstiness, seed=workload.seed, warmup_requests=warmup,
        client_processes=options.client_processes, http=engine.http, tokenizer=options.tokenizer or _word(),
    )
    refused = refused_fields(engine, workload, build_body(spec.endpoint, spec.model, requests[0], spec.ignore_eos,
                                                          spec.extra_body))
    if refused:
        return Measurement(failure=f"{engine.config.engine} rejects request fields {refused} that workload "
                                   f"{workload.name} needs; change the workload")
    sampler = _sampler(engine)
    probe = _probe(engine)
    try:
        load = run_load(spec, progress)
    finally:
        try:
            telemetry = sampler.stop() if sampler is not None else None
        finally:
            engine_metrics = probe.stop()
    metrics = dict(compute_metrics(load.records, load.duration_s, options.percentiles, options.goodput_slos_ms,
                                   from_schedule=spec.finite_rate))
    notes = list(_prompt_length_notes(case, load.records, metrics))
    if load.warmup_records:
        warm_failed = [r for r in load.warmup_records if not r.success]
        metrics["warmup_completed"] = len(load.warmup_records) - len(warm_failed)
        if warm_failed:
            notes.append(f"{case.id}: {len(warm_failed)} of {len(load.warmup_records)} warm-up requests failed: "
                         + "; ".join(failure_reasons(load.warmup_records, limit=2)))
    if aligned_by and aligned_by != "server /tokenize":
        notes.append(f"{case.id}: prompt lengths were not aligned to the server's tokens: {aligned_by}")
    shape = LoadShape(spec.model, spec.endpoint, len(requests), spec.request_rate, spec.burstiness,
                      spec.max_concurrency)
    apparatus = apparatus_of(load, telemetry, probe.before, probe.after)
    series = run_series(1, load.records, sampler.samples if sampler is not None else (),
                        sampler.started_perf_s if sampler is not None else None, probe.timed_samples)
    return Measurement(metrics, tuple(failure_reasons(load.records)), tuple(load.records), shape, telemetry,
                       aligned_by, tuple(notes), engine.exit_code(), apparatus=apparatus,
                       engine_metrics=engine_metrics, series=series)


SIM_SCHEDULED = "llmperf_sim_scheduled_seconds_total"
SIM_BUSY = "llmperf_sim_busy_seconds_total"


def sim_slip_pct(before: Mapping[str, float] | None, after: Mapping[str, float] | None) -> float | None:
    """How far the simulated engine's timeline stretched over a run, in percent (None: not a sim, or idle).

    From its own counters of scheduled and actually elapsed busy time, read
    before and after the run: (busy / scheduled - 1) x 100.
    """
    if not before or not after or SIM_SCHEDULED not in after or SIM_BUSY not in after:
        return None
    scheduled_s = after[SIM_SCHEDULED] - before.get(SIM_SCHEDULED, 0.0)
    busy_s = after[SIM_BUSY] - before.get(SIM_BUSY, 0.0)
    if scheduled_s <= 0:
        return None
    return max(0.0, (busy_s / scheduled_s - 1.0) * 100.0)


def apparatus_of(load: Any, telemetry: Any, before: Mapping[str, float] | None,
                 after: Mapping[str, float] | None) -> dict[str, Any]:
    """The health of what measured a run: the client, the simulated engine's schedule, the GPUs."""
    out: dict[str, Any] = {}
    health = getattr(load, "client_health", None)
    if health is not None:
        out["client"] = health.to_json()
    slip = sim_slip_pct(before, after)
    if slip is not None:
        out["sim_slip_pct"] = round(slip, 3)
    if telemetry is not None:
        out["gpu_throttle_reasons"] = list(telemetry.throttle_reasons)
    return out


@dataclass(frozen=True)
class Warmup:
    """The requests sent once after a boot, before any case; left out of every figure."""

    requests: int
    completed: int
    duration_s: float
    workload: str
    failure_reasons: tuple[str, ...] = ()

    def line(self, config_id: str) -> str:
        failed = self.requests - self.completed
        text = (f"warm-up of {config_id}: {self.requests} requests shaped as {self.workload}, {self.completed} "
                f"completed in {self.duration_s:.1f} s (left out of every figure)")
        if failed:
            text += f"; {failed} failed: " + "; ".join(self.failure_reasons)
        return text


def warm_up(engine: RunningEngine, workload: Workload, requests: int, options: MeasureOptions) -> Warmup:
    """Send ``requests`` requests shaped as ``workload`` (other prompts: another seed) and wait for them all."""
    from .loadgen.run import LoadSpec, run_load

    shaped = replace(workload, num_prompts=requests, seed=workload.seed + 2 * WARMUP_SEED_OFFSET, warmup_requests=0)
    prompts = build_requests(shaped, options.tokenizer)
    spec = LoadSpec(
        base_url=engine.base_url, model=engine.served_model, requests=prompts, endpoint=workload.endpoint_path,
        max_concurrency=workload.max_concurrency, ignore_eos=workload.ignore_eos,
        request_timeout_s=options.request_timeout_s, seed=shaped.seed, http=engine.http,
        tokenizer=options.tokenizer or _word(),
    )
    load = run_load(spec)
    completed = sum(1 for r in load.records if r.success)
    return Warmup(len(prompts), completed, load.duration_s, workload.name,
                  tuple(failure_reasons(load.records, limit=2)) if completed < len(prompts) else ())


def _word() -> Any:
    from .tokenizer import DEFAULT_TOKENIZER

    return DEFAULT_TOKENIZER


def _probe(engine: RunningEngine) -> Any:
    """The engine's /metrics, scraped before, during and after the run (started here)."""
    from .engines import get_adapter
    from .engines.control import probe_for

    return probe_for(get_adapter(engine.config.engine), engine.base_url, engine.http).start()


def _sampler(engine: RunningEngine) -> Any:
    if not (engine.node_live and engine.gpu_uuids):
        return None
    from .telemetry import TelemetrySampler

    return TelemetrySampler(list(engine.gpu_uuids), interval_s=TELEMETRY_INTERVAL_S).start()


def _prompt_length_notes(case: Case, records: Sequence[RequestRecord], metrics: dict) -> list[str]:
    """Compare the prompt tokens the server reported with the dataset's (adds the diagnostic); a gap over 1% is noted."""
    from .loadgen.alignment import prompt_length_mismatch

    ok = [r for r in records if r.success]
    mismatch_pct, compared = prompt_length_mismatch([r.prompt_len for r in ok], [r.input_tokens for r in ok])
    if not compared:
        return []
    metrics["prompt_tokens_mismatch_pct"] = mismatch_pct
    if mismatch_pct <= PROMPT_MISMATCH_LIMIT_PCT:
        return []
    template = " (on the chat endpoint the chat template's tokens count too)" if case.workload.endpoint == "chat" else ""
    return [f"{case.id}: the server counted prompts {mismatch_pct:.1f}% away from the workload's token lengths "
            f"(mean over {compared} requests){template}; give --tokenizer with the model's tokenizer.json "
            f"for exact lengths"]
