"""The twin: step costs from the hardware, plausibility of every shipped profile, and its figures against the seed."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from pytest_llmperf.sim import calibration as cal
from pytest_llmperf.sim.__main__ import main as sim_main
from pytest_llmperf.sim.des import SimRequest, simulate, summarize
from pytest_llmperf.sim.hardware import DEEPSEEK_V32, H200, Efficiency, Layout, RankLoad, StepCoster, kv_capacity_tokens
from pytest_llmperf.sim.profiles import list_profiles, load_profile

PROFILES = list_profiles()
EFF = Efficiency(gemm=0.3, attention=0.2, memory=0.8, nvlink=0.7, layer_latency_us=100, cpu_ms_per_step=1,
                 cpu_us_per_seq=10)


# -- the model's arithmetic ------------------------------------------------------------------


def test_the_architecture_adds_up_to_deepseek_v3s_parameter_count():
    assert DEEPSEEK_V32.total_params == pytest.approx(671e9, rel=0.02)
    # active per token: attention, dense FFNs, shared + 8 routed experts, the LM head
    active = (DEEPSEEK_V32.attention_params + DEEPSEEK_V32.dense_ffn_params + DEEPSEEK_V32.lm_head_params
              + DEEPSEEK_V32.moe_layers * 8 * DEEPSEEK_V32.expert_params)
    assert active == pytest.approx(37e9, rel=0.05)


def test_experts_touched_grow_as_the_batch_covers_them_not_linearly():
    m = DEEPSEEK_V32
    assert m.experts_touched(0) == 0
    assert m.experts_touched(1) == pytest.approx(8)
    assert m.experts_touched(2) == pytest.approx(8 + 8 * (1 - 8 / 256))
    assert m.experts_touched(100) == pytest.approx(256 * (1 - (1 - 8 / 256) ** 100))
    assert 250 < m.experts_touched(200) < 256
    assert m.experts_touched(10_000) == pytest.approx(256)


@pytest.mark.parametrize("start,count", [(0, 1), (0, 5000), (100, 50), (2000, 100), (2047, 2), (5000, 300), (0, 2048)])
def test_selected_pairs_match_a_token_by_token_count(start, count):
    brute = sum(min(pos + 1, 2048) for pos in range(start, start + count))
    assert DEEPSEEK_V32.selected_pairs(start, count) == pytest.approx(brute)


def test_tp_replicates_the_latent_kv_and_dp_attention_splits_it():
    tp = kv_capacity_tokens(DEEPSEEK_V32, H200, Layout(attention_tp=8))
    dp = kv_capacity_tokens(DEEPSEEK_V32, H200, Layout(attention_tp=1))
    # each DP rank holds the whole attention weights, so a little less per rank, but eight ranks in all
    assert dp < tp < 8 * dp
    assert 100 * 128_100 > 8 * dp  # a hundred 128k prompts never fit the node at once


def test_step_cost_grows_with_tokens_context_and_stays_sublinear_in_decode_batch():
    coster = StepCoster(DEEPSEEK_V32, H200, Layout(), EFF)

    def decode(seqs: int, ctx: int) -> float:
        sel = min(ctx, 2048)
        return coster.step_s([RankLoad(tokens=seqs, decode_seqs=seqs, selected_pairs=seqs * sel, indexer_pairs=seqs * ctx,
                                       decode_kv_tokens=seqs * sel, decode_context_tokens=seqs * ctx, sampled=seqs)])

    assert decode(1, 2000) < decode(8, 2000) < decode(64, 2000) < decode(512, 2000)
    assert decode(64, 2000) < decode(64, 32000) < decode(64, 128000)
    # batching pays: 64 sequences cost far less than 64 single steps (the experts are read once)
    assert decode(64, 2000) < 0.25 * 64 * decode(1, 2000)
    assert coster.step_s([RankLoad()]) == 0.0


def test_expert_parallel_changes_communication_and_the_busiest_gpu():
    load = [RankLoad(tokens=64, decode_seqs=64, selected_pairs=64 * 500, indexer_pairs=64 * 500,
                     decode_kv_tokens=64 * 500, decode_context_tokens=64 * 500, sampled=64)]
    tp = StepCoster(DEEPSEEK_V32, H200, Layout(), EFF).step_s(load)
    ep = StepCoster(DEEPSEEK_V32, H200, Layout(expert_parallel=True), EFF).step_s(load)
    assert ep != tp


def test_dense_prefill_prices_causal_pairs_in_bf16_and_skips_the_indexer():
    eff = dataclasses.replace(EFF, dense_attention=0.5)
    coster = StepCoster(DEEPSEEK_V32, H200, Layout(attention_tp=1), eff)
    tokens, pairs = 8192, 4 * 2048 * 2049 / 2  # four 2048-token prompts, causal
    bare = coster.step_s([RankLoad(tokens=tokens, prefill_seqs=4, sampled=4)])
    dense = coster.step_s([RankLoad(tokens=tokens, prefill_seqs=4, sampled=4, dense_pairs=pairs)])
    sparse = coster.step_s([RankLoad(tokens=tokens, prefill_seqs=4, sampled=4, selected_pairs=pairs,
                                     indexer_pairs=pairs)])
    # compute-bound: the dense core adds exactly its FLOPs at half the BF16 peak, per layer
    assert dense - bare == pytest.approx(2 * 128 * (192 + 128) * pairs * 61 / (989e12 * 0.5), rel=1e-9)
    assert sparse - bare == pytest.approx((2 * 128 * (576 + 512) / (1979e12 * 0.2)
                                           + 2 * 64 * 128 / (1979e12 * 0.2)) * pairs * 61, rel=1e-9)
    assert dense < sparse
    # a cached prefix is expanded into every head's K and V again; with TP 8 each GPU holds an eighth of the heads
    tp8 = StepCoster(DEEPSEEK_V32, H200, Layout(attention_tp=8), eff)
    bare8 = tp8.step_s([RankLoad(tokens=tokens, prefill_seqs=4, sampled=4)])
    dense8 = tp8.step_s([RankLoad(tokens=tokens, prefill_seqs=4, sampled=4, dense_pairs=pairs, dense_prefix_tokens=1000)])
    assert dense8 - bare8 == pytest.approx((2 * 128 * (192 + 128) * pairs + 2 * 512 * 128 * 256 * 1000) * 61
                                           / (989e12 * 0.5) / 8, rel=1e-9)


def test_sglang_prefills_short_batches_dense_and_long_ones_sparse():
    base = load_profile("sglang-tp8-dp8-dpattn")
    assert base.dense_prefill_max_kv_tokens == 2048

    def ttft_s(profile, prompt: int) -> float:
        results, _ = simulate(profile.replace(chunked_prefill_tokens=8192), [SimRequest(0.0, prompt, 2)])
        return results[0].ttft_s

    sparse_only = base.replace(dense_prefill_max_kv_tokens=0)
    assert ttft_s(base, 2000) < ttft_s(sparse_only, 2000)  # within the threshold: the cheaper dense MHA
    assert ttft_s(base, 2048) < ttft_s(sparse_only, 2048)
    assert ttft_s(base, 4000) == ttft_s(sparse_only, 4000)  # beyond it: sparse MLA and the indexer, as before


def rank_loads(profile, requests, steps: int, more=()) -> list:
    """The first rank's load in each of ``steps`` steps, as the step coster sees it; ``more``: (step, request)
    pairs added before that step."""
    from pytest_llmperf.sim.model import EngineModel

    m = EngineModel(profile)
    for r in requests:
        m.add_request(*r)
    seen = []
    price = m._coster.step_s
    m._coster.step_s = lambda loads: seen.append(loads[0]) or price(loads)
    for i in range(steps):
        for at, r in more:
            if at == i:
                m.add_request(*r)
        m.commit_step(m.plan_step())
    return seen


TP8 = load_profile("sglang-tp8")


def test_a_batch_is_dense_only_when_its_longest_sequence_is_within_the_threshold():
    [mixed] = rank_loads(TP8.replace(chunked_prefill_tokens=8192), [("a", 1000, 4), ("b", 3000, 4)], 1)
    assert mixed.prefill_seqs == 2 and mixed.dense_pairs == 0 and mixed.dense_prefix_tokens == 0
    assert mixed.indexer_pairs == pytest.approx(1000 * 1001 / 2 + 3000 * 3001 / 2)
    # one prompt in 1024-token chunks: dense while its KV stays within 2048 (the earlier chunks count), then sparse
    chunks = rank_loads(TP8.replace(chunked_prefill_tokens=1024), [("a", 3000, 4)], 3)
    assert [c.tokens for c in chunks] == [1024, 1024, 952]
    assert chunks[0].dense_pairs == pytest.approx(1024 * 1025 / 2) and chunks[0].dense_prefix_tokens == 0
    assert chunks[1].dense_pairs == pytest.approx(1024 * (1024 + 1025 / 2)) and chunks[1].dense_prefix_tokens == 1024
    for dense in chunks[:2]:
        assert dense.indexer_pairs == 0 and dense.selected_pairs == 0
    assert chunks[2].dense_pairs == 0 and chunks[2].dense_prefix_tokens == 0
    assert chunks[2].indexer_pairs == pytest.approx(952 * (2048 + 953 / 2))
    assert chunks[2].selected_pairs == pytest.approx(DEEPSEEK_V32.selected_pairs(2048, 952))


def test_a_cached_prefix_counts_toward_the_threshold_and_is_expanded_again():
    loads = rank_loads(TP8, [("a", 1500, 1, "same")], 2, more=[(1, ("b", 1500, 1, "same"))])
    assert loads[1].tokens == 1  # b hits a's prompt: only its last token is computed, over 1500 KV tokens
    assert loads[1].dense_pairs == pytest.approx(1500) and loads[1].dense_prefix_tokens == 1499
    long_prefix = rank_loads(TP8, [("a", 2100, 1, "k")], 2, more=[(1, ("b", 2100, 1, "k"))])
    assert long_prefix[1].tokens == 1 and long_prefix[1].dense_pairs == 0  # 2100 KV tokens: sparse
    assert long_prefix[1].selected_pairs == pytest.approx(2048)


def test_a_step_that_also_decodes_is_never_dense():
    mixed = TP8.replace(scheduler="mixed", new_token_ratio=0.0, new_token_ratio_min=0.0)
    loads = rank_loads(mixed, [("a", 100, 50)], 2, more=[(1, ("b", 1000, 5))])
    assert loads[0].dense_pairs == pytest.approx(100 * 101 / 2)  # a's prefill alone: dense
    assert loads[1].decode_seqs == 1 and loads[1].tokens == 1 + 1000  # b's prefill beside a's decode: sparse
    assert loads[1].dense_pairs == 0 and loads[1].indexer_pairs > 1000 * 1001 / 2


def test_dense_prefill_needs_its_efficiency():
    with pytest.raises(ValueError, match=r"dense_prefill_max_kv_tokens \(2048\) needs dense_attention_efficiency > 0"):
        TP8.replace(dense_attention_efficiency=0.0)
    coster = StepCoster(DEEPSEEK_V32, H200, Layout(), EFF)
    with pytest.raises(ValueError, match="needs Efficiency.dense_attention > 0"):
        coster.step_s([RankLoad(tokens=10, prefill_seqs=1, sampled=1, dense_pairs=55)])


# -- every shipped profile is physically plausible ----------------------------------------------


def single_request_tpot_ms(profile, prompt: int = 2000, output: int = 64) -> float:
    results, _ = simulate(profile, [SimRequest(0.0, prompt, output)])
    times = results[0].chunk_times_s
    tokens = sum(results[0].chunk_tokens[1:])
    return (times[-1] - times[0]) / tokens * 1000.0


@pytest.mark.parametrize("name", PROFILES)
def test_a_single_request_on_2k_context_decodes_in_15_to_40_ms_per_token(name):
    profile = load_profile(name)
    tpot = single_request_tpot_ms(profile)  # per output token, as the client sees it (speculation included)
    assert 15.0 <= tpot <= 40.0, f"{name}: {tpot:.1f} ms per output token"


@pytest.mark.parametrize("name", PROFILES)
def test_a_hundred_128k_prompts_never_fit_at_once(name):
    profile = load_profile(name)
    if profile.max_context_tokens < 128_100:
        pytest.skip(f"{name} serves at most {profile.max_context_tokens} tokens")
    node_kv = profile.kv_tokens_per_rank * profile.dp_size
    assert node_kv < 100 * 128_100
    # and the engine never runs them all together
    from pytest_llmperf.sim.model import EngineModel

    engine = EngineModel(profile)
    for i in range(100):
        engine.add_request(str(i), 128_000, 100)
    most = 0
    while engine.has_work():
        plan = engine.plan_step()
        engine.commit_step(plan)
        most = max(most, engine.stats()["running"])
        if engine.num_steps > 400:
            break
    assert most < 100


def run(profile, n: int, prompt: int, output: int) -> dict:
    results, model = simulate(profile, [SimRequest(0.0, prompt, output) for _ in range(n)])
    return summarize(results, model).metrics


@pytest.mark.parametrize("name", PROFILES)
def test_latency_grows_and_throughput_saturates_with_concurrency(name):
    profile = load_profile(name)
    levels = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    ms = [run(profile, n, 2000, 64) for n in levels]
    for a, b, n in zip(ms, ms[1:], levels[1:]):
        assert b["mean_ttft_ms"] >= a["mean_ttft_ms"] * 0.999, f"{name}: TTFT fell at {n} requests"
        assert b["mean_tpot_ms"] >= a["mean_tpot_ms"] * 0.98, f"{name}: TPOT fell at {n} requests"
    tput = [m["total_token_throughput"] for m in ms]
    # saturation: the peak, or the first level whose requests no longer fit the KV cache at once
    fit = sum(1 for n in levels if -(-n // profile.dp_size) * (2000 + 64) <= profile.kv_tokens_per_rank)
    peak = min(tput.index(max(tput)), fit - 1)
    assert all(b >= a * 0.999 for a, b in zip(tput[:peak], tput[1:peak + 1])), f"{name}: throughput {tput}"
    assert all(t >= 0.8 * max(tput) for t in tput[peak:]), f"{name}: throughput collapsed past saturation {tput}"


@pytest.mark.parametrize("name", PROFILES)
def test_latency_grows_with_input_length(name):
    profile = load_profile(name)
    lengths = [128, 512, 2000, 8000, 32000]
    if profile.max_context_tokens >= 128_100:
        lengths.append(128_000)
    lengths = [n for n in lengths if n < profile.max_context_tokens]
    # four requests at once for TTFT (each waits for the prefills before it); one alone for TPOT, which with
    # company also carries the other requests' prefills, whose timing depends on when each arrived
    ttft = [run(profile, 4, n, 32)["mean_ttft_ms"] for n in lengths]
    tpot = [run(profile, 1, n, 32)["mean_tpot_ms"] for n in lengths]
    for i, n in enumerate(lengths[1:], 1):
        assert ttft[i] > ttft[i - 1], f"{name}: TTFT fell at {n} tokens: {ttft}"
        assert tpot[i] >= tpot[i - 1] * 0.999, f"{name}: TPOT fell at {n} tokens: {tpot}"


# -- the twin against the seed ------------------------------------------------------------------


@pytest.fixture(scope="module")
def figures():
    seed = cal.load_seed()
    return cal.compare({n: load_profile(n) for n in PROFILES if n in seed})


def test_every_profile_the_seed_ran_has_its_figures_compared(figures):
    seed = cal.load_seed()
    assert {f.profile for f in figures} == set(seed)
    for name, workloads in seed.items():
        for workload, figs in workloads.items():
            compared = {f.metric for f in figures if f.profile == name and f.workload == workload}
            assert compared == {k for k in figs if k in cal.METRICS}


# Where the twin is still outside a gate against the seed (profile, workload, figure): the open part of the
# calibration, listed so that a change which moves any figure across its gate, either way, shows up here.
KNOWN_OUTSIDE = {
    ("sglang-mtp-eagle", "sharegpt", "median_itl_ms"),
    ("sglang-tp8", "sharegpt", "max_output_tokens_per_s"),
    ("sglang-tp8", "sharegpt", "median_itl_ms"),
    ("trtllm-tp8", "sharegpt", "max_output_tokens_per_s"),
    ("vllm-mtp1", "sharegpt", "median_itl_ms"),
}
KNOWN_SWAPS = 1  # sglang-tp8 behind trtllm-tp8-ep8 (the seed has it 4.5% ahead)
KNOWN_CLAIMS_MISSED: set[str] = set()


def test_the_twin_meets_the_gates_against_the_seed_but_for_the_known_gaps(figures):
    tolerance = {g.metric: g.tolerance for g in cal.GATES}
    outside = {(f.profile, f.workload, f.metric) for f in figures
               if f.metric in tolerance and abs(f.ratio - 1) > tolerance[f.metric]}
    ratios = {(f.profile, f.workload, f.metric): f.ratio for f in figures}
    new = sorted(outside - KNOWN_OUTSIDE)
    fixed = sorted(KNOWN_OUTSIDE - outside)
    assert not new, "now outside its gate: " + ", ".join(f"{k} {ratios[k]:.2f}" for k in new)
    assert not fixed, "now inside its gate (drop it from KNOWN_OUTSIDE): " + ", ".join(map(str, fixed))
    for gate, inside, n in cal.gate_results(figures):
        if gate.share < 1.0:
            assert inside >= gate.share * n - 1e-9, f"{gate.metric}: {inside}/{n}"


def test_the_seeds_ranking_and_claims_hold_but_for_the_known_gaps(figures):
    seed_order, sim_order = cal.ranking(figures)
    assert sim_order[0] == seed_order[0]
    assert cal.adjacent_swaps(seed_order, sim_order) == KNOWN_SWAPS
    missed = {name for name, seed_pct, sim_pct, points, held in cal.claim_results(figures) if not held}
    assert missed == KNOWN_CLAIMS_MISSED
    assert all(sim for _, seed_ahead, sim in cal.dominance(figures) if seed_ahead)


def test_adjacent_swaps_count_inversions():
    assert cal.adjacent_swaps(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert cal.adjacent_swaps(["a", "b", "c"], ["b", "a", "c"]) == 1
    assert cal.adjacent_swaps(["a", "b", "c"], ["c", "b", "a"]) == 3


def test_sharegpt_is_the_committed_sample_as_the_server_serves_it():
    reqs = cal.workload_requests("sharegpt")
    assert len(reqs) == 1000 and all(r.arrival_s == 0.0 for r in reqs)
    assert reqs == cal.workload_requests("sharegpt")
    mean_in = sum(r.prompt_tokens for r in reqs) / len(reqs)
    mean_out = sum(r.output_tokens for r in reqs) / len(reqs)
    assert 180 < mean_in < 260 and 150 < mean_out < 250  # the seed: 219 in, 197 out
    assert max(r.prompt_tokens for r in reqs) <= 1024 and max(r.prompt_tokens + r.output_tokens for r in reqs) <= 2048


# -- the command line ---------------------------------------------------------------------------


def test_predict_prints_figures_and_is_deterministic(capsys):
    assert sim_main(["predict", "--profile", "vllm-tp8", "--workload", "medium", "--num-prompts", "20", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert sim_main(["predict", "--profile", "vllm-tp8", "--workload", "medium", "--num-prompts", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    m = first[0]["metrics"]
    assert first[0]["num_prompts"] == 20 and m["completed"] == 20
    assert m["total_input_tokens"] == 20 * 2000 and m["total_output_tokens"] == 20 * 100
    assert sim_main(["predict", "--profile", "vllm-tp8", "--workload", "short", "--num-prompts", "8"]) == 0
    out = capsys.readouterr().out
    assert "vllm-tp8" in out and "short" in out and "TPOT ms" in out


def test_predict_takes_a_suite_file_and_its_sim_configurations(tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text('model = "deepseek-ai/DeepSeek-V3.2"\n'
                     '[workloads.tiny]\ndataset = "random"\ninput_len = 300\noutput_len = 20\nnum_prompts = 6\n'
                     'request_rate = 4.0\n'
                     '[[configs]]\nengine = "sim"\nname = "a"\nprofile = "sglang-tp8"\n')
    assert sim_main(["predict", "--suite", str(suite), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(o["profile"], o["workload"]) for o in out] == [("sim/a", "tiny")]
    assert out[0]["metrics"]["completed"] == 6
    assert out[0]["metrics"]["duration"] > 5 / 4.0 * 0.5  # arrivals spread at 4 requests per second


def test_predict_and_calibrate_errors_are_one_line(capsys):
    assert sim_main(["predict", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown sim profile 'nope'") and err.count("\n") == 1
    assert sim_main(["predict", "--workload", "short"]) == 2
    assert "needs --profile" in capsys.readouterr().err
    assert sim_main(["predict", "--profile", "vllm-tp8", "--workload", "huge"]) == 2
    assert "unknown workload 'huge'" in capsys.readouterr().err
    assert sim_main(["calibrate", "--profile", "mine"]) == 2
    assert "the seed has no figures for mine" in capsys.readouterr().err


def test_calibrate_prints_sim_against_seed_for_every_figure(capsys):
    code = sim_main(["calibrate", "--profile", "vllm-tp8", "--workload", "short"])
    out = capsys.readouterr().out
    assert code == 0  # vLLM TP 8's short prompts are inside every gate
    rows = [line.split() for line in out.splitlines() if line.startswith("vllm-tp8")]
    seed = cal.load_seed()["vllm-tp8"]["short"]
    assert {r[2] for r in rows} == {k for k in seed if k in cal.METRICS}
    for r in rows:
        assert r[1] == "short" and float(r[4]) == pytest.approx(seed[r[2]], abs=0.006)
    assert "gates (within tolerance / figures, required share)" in out
    assert "calibrated: every gate met" in out
    # the whole calibration is not: the known gaps make it exit 1
    assert sim_main(["calibrate", "--profile", "sglang-tp8", "--workload", "sharegpt"]) == 1
    assert "NOT calibrated" in capsys.readouterr().out
    assert sim_main(["calibrate", "--workload", "bogus"]) == 2
    assert "no figures for workload bogus" in capsys.readouterr().err
