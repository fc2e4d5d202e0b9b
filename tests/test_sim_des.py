"""The virtual-time driver, and the calibrated profiles against the seed's figures."""

from __future__ import annotations

import pytest

from pytest_llmperf.metrics import compute_metrics
from pytest_llmperf.sim.des import SimRequest, simulate, summarize, to_records
from pytest_llmperf.sim.model import Profile
from pytest_llmperf.sim.profiles import load_profile

TINY = Profile(name="tiny", step_base_ms=10.0, decode_ms_per_seq=1.0, prefill_ms_per_token=0.1,
               max_running_requests=4, kv_capacity_tokens=4000, chunked_prefill_tokens=256, max_context_tokens=2000)


def test_deterministic_and_exact_counts():
    reqs = [SimRequest(0.01 * i, 50 + 13 * i, 5 + i) for i in range(20)]
    a, _ = simulate(TINY, reqs)
    b, _ = simulate(TINY, reqs)
    assert [r.chunk_times_s for r in a] == [r.chunk_times_s for r in b]
    assert [sum(r.chunk_tokens) for r in a] == [5 + i for i in range(20)]


def test_single_request_timeline_matches_the_model_by_hand():
    # prefill 300 tokens in chunks of 256 + 44: steps of 10 + 25.6 ms and 10 + 4.4 ms, then 2 decodes of 11 ms.
    (res,), _ = simulate(TINY, [(1.0, 300, 3)])
    assert res.first_token_s == pytest.approx(1.0 + 0.0356 + 0.0144)
    assert res.chunk_times_s[1:] == pytest.approx([1.061, 1.072])
    assert res.ttft_s == pytest.approx(0.05)


def test_arrivals_wait_for_their_time_and_idle_gaps_are_skipped():
    results, _ = simulate(TINY, [(0.0, 10, 2), (5.0, 10, 2)])
    assert results[0].finish_s < 1.0
    assert results[1].first_token_s > 5.0 and results[1].ttft_s == pytest.approx(results[0].ttft_s)


def test_summary_figures_are_the_load_generators_metrics():
    results, model = simulate(TINY, [(0.0, 100, 10) for _ in range(8)])
    s = summarize(results, model)
    m = s.metrics
    assert m["completed"] == 8 and m["failed"] == 0
    assert m["total_input_tokens"] == 800 and m["total_output_tokens"] == 80
    assert m["duration"] == max(r.finish_s for r in results)
    assert m["total_token_throughput"] == pytest.approx(880 / m["duration"])
    assert m["output_throughput"] == pytest.approx(80 / m["duration"])
    assert m["mean_ttft_ms"] == pytest.approx(1000 * sum(r.ttft_s for r in results) / 8)
    assert m["mean_e2el_ms"] == pytest.approx(1000 * sum(r.e2e_s for r in results) / 8)
    assert m["mean_tpot_ms"] > 0 and m["p99_itl_ms"] >= m["median_itl_ms"] > 0
    assert (s.num_steps, s.num_preemptions) == (model.num_steps, model.num_preemptions)
    # the same function a measured run goes through, over the same records
    assert m == compute_metrics(to_records(results), m["duration"])


def test_records_are_sent_at_arrival_and_timed_by_their_chunks():
    (rec,) = to_records(simulate(TINY, [(1.0, 300, 3)])[0])
    assert rec.success and rec.start_s == rec.scheduled_s == 1.0
    assert (rec.prompt_len, rec.input_tokens, rec.expected_output_len, rec.output_tokens) == (300, 300, 3, 3)
    assert rec.ttft_s == pytest.approx(0.05) and rec.itl_s == pytest.approx([0.011, 0.011])
    assert rec.latency_s == pytest.approx(0.072) and rec.tpot_s == pytest.approx(0.011)


def test_pinned_simulation_figures():
    m = summarize(*simulate(TINY, PINNED_MIXED)).metrics
    # by hand from the pinned chunk times: TTFT and E2E from arrival, TPOT over requests of 2+ tokens, ITL per gap
    assert m["duration"] == 1.0383999999999998
    assert m["mean_ttft_ms"] == pytest.approx((71.2 + 67.2 + 160.0 + 159.0 + 16.4) / 5, rel=1e-12)
    assert m["mean_tpot_ms"] == pytest.approx((37.4 + 36.266666666666666 + 11.0 + 11.0) / 4, rel=1e-12)
    assert m["mean_itl_ms"] == pytest.approx((74.8 + 108.8 + 11.0 + 22.0) / 8, rel=1e-12)
    assert m["total_token_throughput"] == pytest.approx((1314 + 13) / 1.0383999999999998, rel=1e-12)


def test_slowdown_stretches_the_timeline_exactly():
    reqs = [(0.0, 120, 8) for _ in range(6)]
    fast, _ = simulate(TINY, reqs)
    slow, _ = simulate(TINY, reqs, slowdown=2.0)
    for f, s in zip(fast, slow):
        assert s.chunk_times_s == pytest.approx([2 * t for t in f.chunk_times_s])


# Exact figures of small simulations, recorded before the DES and the server shared one step loop
# (sim/steps.py): any change to the loop's semantics or arithmetic shows here, to the last bit.
PINNED_MIXED = [(0.0, 300, 3), (0.004, 40, 4), (0.02, 900, 2), (0.021, 10, 1), (1.0, 64, 3)]
PINNED_MIXED_CHUNKS_S = [
    [0.0712, 0.1086, 0.14600000000000002],
    [0.0712, 0.1086, 0.14600000000000002, 0.18000000000000002],
    [0.18000000000000002, 0.19100000000000003],
    [0.18000000000000002],
    [1.0164, 1.0273999999999999, 1.0383999999999998],
]
PINNED_DP = [(0.001 * i, 400 + 50 * i, 300 + 20 * i) for i in range(6)]
# per request: first two chunk times, last chunk time, chunks
PINNED_DP_CHUNKS_S = [
    (0.11832000000000001, 0.37323225, 6.366317250000001, 300),
    (0.1794, 0.35253, 6.846233250000001, 320),
    (0.24048, 0.37323225, 7.4034270000000015, 340),
    (0.3012, 0.35253, 7.7688112500000015, 360),
    (0.35253, 0.37323225, 10.418670000000004, 380),
    (6.998573250000001, 7.017837000000001, 13.949846250000004, 400),  # admitted once its whole output fits
]


def test_pinned_simulation_arrivals_during_steps_and_an_idle_gap():
    results, model = simulate(TINY, PINNED_MIXED)
    assert [r.chunk_times_s for r in results] == PINNED_MIXED_CHUNKS_S
    assert [r.chunk_tokens for r in results] == [[1] * len(c) for c in PINNED_MIXED_CHUNKS_S]
    assert (model.num_steps, model.num_preemptions) == (9, 0)


def test_pinned_simulation_two_ranks_prefill_first_preemptions_and_slowdown():
    dp = TINY.replace(name="tiny-dp", dp_size=2, scheduler="prefill_first", kv_capacity_tokens=2000,
                      decode_attn_ms_per_ktoken=0.5, moe_ms_per_token=0.01)
    results, model = simulate(dp, PINNED_DP, slowdown=1.5)
    got = [(r.chunk_times_s[0], r.chunk_times_s[1], r.chunk_times_s[-1], len(r.chunk_times_s)) for r in results]
    assert got == PINNED_DP_CHUNKS_S
    assert [sum(r.chunk_tokens) for r in results] == [300 + 20 * i for i in range(6)]
    assert (model.num_steps, model.num_preemptions) == (726, 1)


def test_a_simulation_that_cannot_finish_stops_at_the_step_limit():
    stuck = TINY.replace(name="stuck", chunked_prefill_tokens=1, spec_draft_tokens=1)  # no room for a decode
    with pytest.raises(RuntimeError, match="did not finish within 50 steps"):
        simulate(stuck, [(0.0, 1, 5)], max_steps=50)


def test_rejects_requests_the_profile_cannot_serve():
    with pytest.raises(ValueError, match="maximum context length is 2000"):
        simulate(TINY, [(0.0, 1990, 20)])


# How close the shipped profiles come to the seed's figures is tests/test_sim_twin.py's business.


# ----------------------------------------------------------------- the API front
def test_the_front_hands_requests_to_the_scheduler_one_after_another():
    front = TINY.replace(name="front", frontend_ms_per_request=5.0)
    results, _ = simulate(front, [(0.0, 40, 2)] * 3 + [(1.0, 40, 2)])
    alone, _ = simulate(TINY, [(0.0, 40, 2)])
    # each request waits for the ones before it at the front (5 ms each), then for the engine
    assert results[0].ttft_s >= alone[0].ttft_s + 0.005 - 1e-12
    assert results[1].ttft_s > results[0].ttft_s and results[2].ttft_s >= results[1].ttft_s  # joins between steps
    assert results[3].ttft_s == pytest.approx(alone[0].ttft_s + 0.005)  # the front was idle again by then


def test_the_front_tokenizes_each_prompt_at_its_own_cost():
    front = TINY.replace(name="front", frontend_us_per_prompt_token=100.0)  # 0.1 ms per prompt token
    results, _ = simulate(front, [(0.0, 1000, 2), (0.0, 10, 2)])
    alone, _ = simulate(TINY, [(0.0, 10, 2)])
    assert results[1].ttft_s >= 0.1 + 0.001 + alone[0].ttft_s - 1e-12  # behind the 1000-token prompt, then its own


def test_the_front_sends_chunks_in_order_no_faster_than_its_output_worker():
    front = TINY.replace(name="front", frontend_us_per_chunk=4000.0)  # 250 chunks per second at most
    reqs = [(0.0, 10, 30)] * 8
    slow, _ = simulate(front, reqs)
    fast, _ = simulate(TINY, reqs)
    chunks = sorted(t for r in slow for t in r.chunk_times_s)
    assert all(b - a >= 0.004 - 1e-12 for a, b in zip(chunks, chunks[1:]))
    for s_, f_ in zip(slow, fast):
        assert s_.chunk_tokens == f_.chunk_tokens  # the engine's steps do not change
        assert all(ts >= tf for ts, tf in zip(s_.chunk_times_s, f_.chunk_times_s))
    m = summarize(slow).metrics
    assert m["max_output_tokens_per_s"] <= 250


def test_slowdown_stretches_the_front_too():
    front = TINY.replace(name="front", frontend_ms_per_request=3.0, frontend_us_per_chunk=2000.0)
    reqs = [(0.0, 120, 8) for _ in range(6)]
    fast, _ = simulate(front, reqs)
    slow, _ = simulate(front, reqs, slowdown=2.0)
    for f, s_ in zip(fast, slow):
        assert s_.chunk_times_s == pytest.approx([2 * t for t in f.chunk_times_s])


# ----------------------------------------------------------------- prefix cache
def test_distinct_prompts_keep_the_figures_of_a_run_without_keys():
    # The prefix cache must not move a workload without repeated prompts, to the last bit.
    dp = TINY.replace(name="tiny-dp", dp_size=2, scheduler="prefill_first", kv_capacity_tokens=2000,
                      decode_attn_ms_per_ktoken=0.5, moe_ms_per_token=0.01)
    for profile, reqs, slowdown in ((TINY, PINNED_MIXED, 1.0), (dp, PINNED_DP, 1.5)):
        keyed = [SimRequest(*r, prefix_key=f"prompt-{i}") for i, r in enumerate(reqs)]
        plain, plain_model = simulate(profile, reqs, slowdown=slowdown)
        cached, cached_model = simulate(profile, keyed, slowdown=slowdown)
        assert [r.chunk_times_s for r in cached] == [r.chunk_times_s for r in plain]
        assert summarize(cached, cached_model) == summarize(plain, plain_model)
        assert cached_model.prefix_cache_hits == 0
        assert cached_model.prefix_cache_queries == sum(r[1] for r in reqs)


def test_repeated_prompts_hit_the_cache_and_finish_sooner():
    # The same 4 prompts twice, the second round after the first has finished.
    first = [SimRequest(0.0, 300 + i, 4, prefix_key=f"p{i}") for i in range(4)]
    again = [SimRequest(5.0, r.prompt_tokens, 4, prefix_key=r.prefix_key) for r in first]
    results, model = simulate(TINY, first + again)
    cold, warm = results[:4], results[4:]
    assert model.prefix_cache_hits == sum(r.prompt_tokens - 1 for r in again)
    assert max(r.ttft_s for r in warm) < min(r.ttft_s for r in cold)
    assert sum(r.e2e_s for r in warm) < sum(r.e2e_s for r in cold)
    # tuples carry a key as their fourth item
    tupled, tupled_model = simulate(TINY, [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_key)
                                           for r in first + again])
    assert [r.chunk_times_s for r in tupled] == [r.chunk_times_s for r in results]
