"""Virtual-time driver of the engine model: no sleeping, no IO.

``simulate(profile, requests)`` runs ``EngineModel`` to completion over
requests that arrive at given times (the step loop of ``steps``, on a
virtual clock) and returns, per request, when each output chunk came out.
``summarize`` turns that into ``RequestRecord``s (sent at arrival) and the
load generator's own metrics (``metrics.compute_metrics``): the same keys
and definitions as a measured run, beside the model's step and preemption
counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..metrics import RequestRecord, compute_metrics
from .model import EngineModel, Profile, StepPlan, TokenEvent
from .steps import StepLimitExceeded, VirtualClock, run_steps, run_virtual


@dataclass(frozen=True)
class SimRequest:
    """One request for the simulation."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_key: str | None = None
    """Names the prompt for the engine's prefix cache (the server passes a hash of the prompt text); requests
    with the same key repeat the same prompt and may hit. None: never hits (a request given as a tuple)."""


@dataclass
class SimResult:
    """When one request's output came out (virtual seconds from time 0)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    chunk_times_s: list[float]
    chunk_tokens: list[int]

    @property
    def first_token_s(self) -> float:
        return self.chunk_times_s[0]

    @property
    def finish_s(self) -> float:
        return self.chunk_times_s[-1]

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s


@dataclass(frozen=True)
class SimSummary:
    """A finished simulation's figures: the load generator's metrics, and the model's own counters beside them."""

    metrics: dict[str, float | int]
    """``pytest_llmperf.metrics.compute_metrics`` over the simulated requests: same keys, same definitions."""
    num_steps: int
    num_preemptions: int


def _as_requests(requests: Iterable[SimRequest | tuple]) -> list[SimRequest]:
    """SimRequests, or tuples (arrival_s, prompt_tokens, output_tokens[, prefix_key])."""
    out = []
    for r in requests:
        if not isinstance(r, SimRequest):
            r = SimRequest(float(r[0]), int(r[1]), int(r[2]), r[3] if len(r) > 3 else None)
        out.append(r)
    return out


def simulate(profile: Profile, requests: Iterable[SimRequest | tuple], slowdown: float = 1.0,
             max_steps: int = 10_000_000) -> tuple[list[SimResult], EngineModel]:
    """Run every request to completion in virtual time; results in input order, and the model (for its counters).

    Requests arriving during a step join the engine when that step ends, as
    they would on a server whose scheduler loop picks them up between steps
    (the server runs the same loop, ``steps.run_steps``, on a real clock).
    Requests sharing a ``prefix_key`` hit the prefix cache as they would on
    the server.
    """
    reqs = _as_requests(requests)
    model = EngineModel(profile, slowdown)
    for r in reqs:
        model.check_request(r.prompt_tokens, r.output_tokens)
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i].arrival_s, i))
    results = [SimResult(r.arrival_s, r.prompt_tokens, r.output_tokens, [], []) for r in reqs]
    ready_s = {i: model.frontend.request_ready_s(reqs[i].arrival_s, reqs[i].prompt_tokens) for i in order}  # API front
    nxt = 0

    def next_arrival_s() -> float | None:
        return ready_s[order[nxt]] if nxt < len(order) else None

    def admit(now_s: float) -> None:
        nonlocal nxt
        while nxt < len(order) and ready_s[order[nxt]] <= now_s:
            i = order[nxt]
            model.add_request(str(i), reqs[i].prompt_tokens, reqs[i].output_tokens, reqs[i].prefix_key)
            nxt += 1

    sent_s = model.frontend.chunk_sent_s

    def record(end_s: float, plan: StepPlan, events: list[TokenEvent]) -> None:
        for ev in events:
            res = results[int(ev.request_id)]
            res.chunk_times_s.append(sent_s(end_s))
            res.chunk_tokens.append(ev.new_tokens)

    clock = VirtualClock(next_arrival_s)
    try:
        run_virtual(run_steps(model, clock, record, admit=admit, max_steps=max_steps))
    except StepLimitExceeded:
        raise RuntimeError(f"simulation did not finish within {max_steps} steps; raise max_steps, or check that "
                           f"the profile can schedule every request") from None
    return results, model


def to_records(results: Sequence[SimResult]) -> list[RequestRecord]:
    """The simulated requests as the load generator records them: sent at arrival, timed by their chunks."""
    records = []
    for r in results:
        rec = RequestRecord(prompt_len=r.prompt_tokens, expected_output_len=r.output_tokens, start_s=r.arrival_s,
                            scheduled_s=r.arrival_s, input_tokens=r.prompt_tokens)
        times = r.chunk_times_s
        if times:
            rec.success = True
            rec.ttft_s = times[0] - r.arrival_s
            rec.itl_s = [b - a for a, b in zip(times, times[1:])]
            rec.latency_s = times[-1] - r.arrival_s
            rec.output_tokens = sum(r.chunk_tokens)
        else:
            rec.error = "no output: the simulation did not finish this request"
        records.append(rec)
    return records


def summarize(results: Sequence[SimResult], model: EngineModel | None = None,
              percentiles: Sequence[float] = (99,)) -> SimSummary:
    """The run's metrics as the load generator computes them (duration from the first arrival to the last chunk)."""
    if not results:
        raise ValueError("no results to summarize")
    start_s = min(r.arrival_s for r in results)
    duration_s = max((r.finish_s for r in results if r.chunk_times_s), default=start_s) - start_s
    metrics = compute_metrics(to_records(results), duration_s, percentiles)
    return SimSummary(metrics, model.num_steps if model else 0, model.num_preemptions if model else 0)
