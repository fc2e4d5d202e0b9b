"""Virtual-time driver of the engine model: no sleeping, no IO.

``simulate(profile, requests)`` runs ``EngineModel`` to completion over
requests that arrive at given times and returns, per request, when each
output chunk came out. ``summarize`` turns that into the headline figures as
the reference client defines them (TTFT and E2E from arrival, TPOT over
requests with more than one token, ITL per chunk gap).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from .model import EngineModel, Profile, StepPlan, TokenEvent
from .steps import StepLimitExceeded, VirtualClock, run_steps, run_virtual


@dataclass(frozen=True)
class SimRequest:
    """One request for the simulation."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


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
    """Run figures, named and computed like the reference client's."""

    num_requests: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    total_token_throughput: float
    output_token_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    mean_itl_ms: float
    mean_e2e_ms: float
    num_steps: int
    num_preemptions: int


def _as_requests(requests: Iterable[SimRequest | tuple[float, int, int]]) -> list[SimRequest]:
    out = []
    for r in requests:
        out.append(r if isinstance(r, SimRequest) else SimRequest(float(r[0]), int(r[1]), int(r[2])))
    return out


def simulate(profile: Profile, requests: Iterable[SimRequest | tuple[float, int, int]], slowdown: float = 1.0,
             max_steps: int = 10_000_000) -> tuple[list[SimResult], EngineModel]:
    """Run every request to completion in virtual time; results in input order, and the model (for its counters).

    Requests arriving during a step join the engine when that step ends, as
    they would on a server whose scheduler loop picks them up between steps
    (the server runs the same loop, ``steps.run_steps``, on a real clock).
    """
    reqs = _as_requests(requests)
    model = EngineModel(profile, slowdown)
    for r in reqs:
        model.check_request(r.prompt_tokens, r.output_tokens)
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i].arrival_s, i))
    results = [SimResult(r.arrival_s, r.prompt_tokens, r.output_tokens, [], []) for r in reqs]
    nxt = 0

    def next_arrival_s() -> float | None:
        return reqs[order[nxt]].arrival_s if nxt < len(order) else None

    def admit(now_s: float) -> None:
        nonlocal nxt
        while nxt < len(order) and reqs[order[nxt]].arrival_s <= now_s:
            i = order[nxt]
            model.add_request(str(i), reqs[i].prompt_tokens, reqs[i].output_tokens)
            nxt += 1

    def record(end_s: float, plan: StepPlan, events: list[TokenEvent]) -> None:
        for ev in events:
            res = results[int(ev.request_id)]
            res.chunk_times_s.append(end_s)
            res.chunk_tokens.append(ev.new_tokens)

    clock = VirtualClock(next_arrival_s)
    try:
        run_virtual(run_steps(model, clock, record, admit=admit, max_steps=max_steps))
    except StepLimitExceeded:
        raise RuntimeError(f"simulation did not finish within {max_steps} steps; raise max_steps, or check that "
                           f"the profile can schedule every request") from None
    return results, model


def summarize(results: Sequence[SimResult], model: EngineModel | None = None) -> SimSummary:
    """Reference-style figures over a finished simulation (duration from the first arrival)."""
    if not results:
        raise ValueError("no results to summarize")
    start_s = min(r.arrival_s for r in results)
    duration_s = max(r.finish_s for r in results) - start_s
    n_in = sum(r.prompt_tokens for r in results)
    n_out = sum(sum(r.chunk_tokens) for r in results)
    ttfts = [r.ttft_s * 1000 for r in results]
    tpots = [(r.e2e_s - r.ttft_s) * 1000 / (r.output_tokens - 1) for r in results if r.output_tokens > 1]
    gaps_ms, n_gaps = 0.0, 0
    for r in results:
        if len(r.chunk_times_s) > 1:
            gaps_ms += (r.chunk_times_s[-1] - r.chunk_times_s[0]) * 1000
            n_gaps += len(r.chunk_times_s) - 1
    safe = duration_s if duration_s > 0 else float("inf")
    return SimSummary(
        num_requests=len(results),
        duration_s=duration_s,
        total_input_tokens=n_in,
        total_output_tokens=n_out,
        total_token_throughput=(n_in + n_out) / safe,
        output_token_throughput=n_out / safe,
        mean_ttft_ms=statistics.fmean(ttfts),
        median_ttft_ms=statistics.median(ttfts),
        mean_tpot_ms=statistics.fmean(tpots) if tpots else 0.0,
        median_tpot_ms=statistics.median(tpots) if tpots else 0.0,
        mean_itl_ms=gaps_ms / n_gaps if n_gaps else 0.0,
        mean_e2e_ms=statistics.fmean(r.e2e_s * 1000 for r in results),
        num_steps=model.num_steps if model else 0,
        num_preemptions=model.num_preemptions if model else 0,
    )
