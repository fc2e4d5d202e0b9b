"""The pure engine model: admission, KV, chunked prefill, decode, DP routing, timing."""

from __future__ import annotations

import pytest

from pytest_llmperf.sim.model import EngineModel, Profile


def profile(**over) -> Profile:
    base = dict(name="t", step_base_ms=1.0, decode_ms_per_seq=0.5, prefill_ms_per_token=0.01,
                max_running_requests=8, kv_capacity_tokens=1000, chunked_prefill_tokens=100,
                max_context_tokens=500)
    base.update(over)
    return Profile(**base)


def run_to_end(model: EngineModel, max_steps: int = 10_000) -> dict[str, list]:
    """Step until idle; per request the list of (step index, tokens, first, finished)."""
    out: dict[str, list] = {}
    for i in range(max_steps):
        if not model.has_work():
            return out
        plan = model.plan_step()
        for ev in model.commit_step(plan):
            out.setdefault(ev.request_id, []).append((i, ev.new_tokens, ev.first, ev.finished))
    raise AssertionError("model did not finish")


def step(model: EngineModel):
    plan = model.plan_step()
    return plan, model.commit_step(plan)


def test_exact_token_counts_and_first_token_flags():
    m = EngineModel(profile())
    for i, (p, n) in enumerate([(10, 1), (50, 7), (230, 33)]):
        m.add_request(f"r{i}", p, n)
    events = run_to_end(m)
    for rid, n in (("r0", 1), ("r1", 7), ("r2", 33)):
        evs = events[rid]
        assert sum(e[1] for e in evs) == n
        assert [e[2] for e in evs] == [True] + [False] * (len(evs) - 1)
        assert [e[3] for e in evs] == [False] * (len(evs) - 1) + [True]
    assert m.stats() == {"running": 0, "waiting": 0, "kv_used_tokens": 0, "preemptions": 0}


def test_chunked_prefill_first_token_from_the_completing_step():
    m = EngineModel(profile(chunked_prefill_tokens=100))
    m.add_request("a", 250, 3)
    plans = []
    for _ in range(3):
        plan, events = step(m)
        plans.append(plan)
        if len(plans) < 3:
            assert events == []  # prompt not yet fully prefilled
    assert [p.num_prefill_tokens for p in plans] == [100, 100, 50]
    assert events[0].first and events[0].new_tokens == 1
    plan, events = step(m)
    assert plan.num_decode_seqs == 1 and plan.num_prefill_tokens == 0 and not events[0].first


def test_running_request_cap():
    m = EngineModel(profile(max_running_requests=2, chunked_prefill_tokens=1000))
    for i in range(5):
        m.add_request(f"r{i}", 10, 50)
    step(m)
    assert m.stats()["running"] == 2 and m.stats()["waiting"] == 3


def test_kv_capacity_limits_admission_until_requests_finish():
    m = EngineModel(profile(kv_capacity_tokens=500, chunked_prefill_tokens=1000, max_context_tokens=500))
    for i in range(3):
        m.add_request(f"r{i}", 200, 5)
    step(m)
    assert m.stats()["running"] == 2  # 2 x 200 fit, a third would need 600 > 500
    events = run_to_end(m)
    assert set(events) == {"r0", "r1", "r2"}
    assert min(e[0] for e in events["r2"]) > max(e[0] for e in events["r0"])  # r2 starts only after r0 is gone


def test_kv_full_during_decode_preempts_the_newest_and_still_completes():
    m = EngineModel(profile(kv_capacity_tokens=500, chunked_prefill_tokens=1000, max_context_tokens=500))
    m.add_request("a", 240, 200)
    m.add_request("b", 240, 200)
    events = run_to_end(m)
    assert m.num_preemptions >= 1
    assert sum(e[1] for e in events["a"]) == 200 and sum(e[1] for e in events["b"]) == 200
    assert sum(e[2] for e in events["b"]) == 1  # recompute after preemption is not a second first token


def test_decode_step_time_grows_with_batch_and_context():
    def decode_cost(n_seqs: int, prompt: int) -> float:
        m = EngineModel(profile(max_running_requests=64, kv_capacity_tokens=100_000, chunked_prefill_tokens=100_000,
                                decode_attn_ms_per_ktoken=0.2))
        for i in range(n_seqs):
            m.add_request(str(i), prompt, 10)
        step(m)  # prefill all
        plan = m.plan_step()
        assert plan.num_decode_seqs == n_seqs and plan.num_prefill_tokens == 0
        return m.step_duration_s(plan)

    assert decode_cost(1, 10) < decode_cost(8, 10) < decode_cost(32, 10)
    assert decode_cost(8, 10) < decode_cost(8, 400)


def test_step_cost_formula():
    p = profile(decode_attn_ms_per_ktoken=2.0, prefill_attn_ms_per_token_per_ktoken=0.1, moe_ms_per_token=0.05,
                chunked_prefill_tokens=1000)
    m = EngineModel(p)
    m.add_request("a", 100, 5)
    plan = m.plan_step()
    # prefill of 100 tokens from position 0: 1 + 0.01*100 + 0.1*100*50/1000 + 0.05*100
    assert plan.cost_ms == pytest.approx(1 + 1.0 + 0.5 + 5.0)
    m.commit_step(plan)
    plan = m.plan_step()
    # one decode with 101 tokens of context: 1 + 0.5 + 2*0.101 + 0.05*1
    assert plan.cost_ms == pytest.approx(1 + 0.5 + 0.202 + 0.05)


def test_slowdown_scales_durations_exactly():
    durations = {}
    for slowdown in (1.0, 2.5):
        m = EngineModel(profile(), slowdown=slowdown)
        for i in range(4):
            m.add_request(str(i), 120, 6)
        durs = []
        while m.has_work():
            plan = m.plan_step()
            durs.append(m.step_duration_s(plan))
            m.commit_step(plan)
        durations[slowdown] = durs
    assert len(durations[1.0]) == len(durations[2.5])
    assert all(b == pytest.approx(a * 2.5) for a, b in zip(durations[1.0], durations[2.5]))


def test_dp_routing_spreads_requests_and_ranks_step_together():
    p = profile(dp_size=4, max_running_requests=4, moe_ms_per_token=0.1)
    m = EngineModel(p)
    for i in range(8):
        m.add_request(f"r{i}", 20, 4)
    ranks = [m.rank_of(f"r{i}") for i in range(8)]
    assert sorted(ranks) == [0, 0, 1, 1, 2, 2, 3, 3]
    plan = m.plan_step()
    assert all(len(r.prefills) == 2 for r in plan.ranks)
    # slowest rank (40 prefill tokens) + shared cost over all 160 tokens
    assert plan.cost_ms == pytest.approx(1.0 + 0.01 * 40 + 0.1 * 160)


def test_dp_attention_divides_kv_capacity_per_rank():
    tp = EngineModel(profile(kv_capacity_tokens=600, chunked_prefill_tokens=10_000))
    dp = EngineModel(profile(kv_capacity_tokens=600, chunked_prefill_tokens=10_000, dp_size=4))
    for m in (tp, dp):
        for i in range(8):
            m.add_request(str(i), 250, 10)
        m.commit_step(m.plan_step())
    assert tp.stats()["running"] == 2 and dp.stats()["running"] == 8


def test_prefill_first_runs_prefill_steps_without_decodes():
    m = EngineModel(profile(scheduler="prefill_first", chunked_prefill_tokens=100))
    m.add_request("a", 50, 10)
    step(m)
    m.add_request("b", 150, 10)
    plan, _ = step(m)
    assert plan.num_decode_seqs == 0 and plan.num_prefill_tokens == 100
    plan, _ = step(m)
    assert plan.num_decode_seqs == 0 and plan.num_prefill_tokens == 50
    plan, _ = step(m)
    assert plan.num_decode_seqs == 2 and plan.num_prefill_tokens == 0


def test_vllm_allocates_kv_chunk_by_chunk_and_counts_a_cached_prefix_as_held():
    m = EngineModel(profile(kv_capacity_tokens=1000, max_context_tokens=1000, chunked_prefill_tokens=200))
    m.add_request("warm", 800, 1, prefix_key="p")
    run_to_end(m)
    m.add_request("x", 900, 100, prefix_key="p")
    m.add_request("y", 900, 100, prefix_key="p")
    plan = m.plan_step()
    # x holds its cached 799 tokens and its first chunk; y would not fit beside it and waits, unadmitted
    assert m.stats()["kv_used_tokens"] <= 1000 and m.stats()["running"] == 1
    first = {ev.request_id: ev.new_tokens for ev in m.commit_step(plan)}
    events = run_to_end(m)
    for rid in ("x", "y"):
        assert first.get(rid, 0) + sum(n for _, n, _, _ in events[rid]) == 100
    assert m.stats() == {"running": 0, "waiting": 0, "kv_used_tokens": 0, "preemptions": m.num_preemptions}


def test_mixed_scheduler_batches_decodes_with_prefill_chunks():
    m = EngineModel(profile(chunked_prefill_tokens=100))
    m.add_request("a", 50, 10)
    step(m)
    m.add_request("b", 150, 10)
    plan, _ = step(m)
    assert plan.num_decode_seqs == 1 and plan.num_prefill_tokens == 99  # decode takes one token of the budget


def test_speculative_decoding_tokens_per_step_accumulate_deterministically():
    m = EngineModel(profile(tokens_per_decode_step=1.5, spec_draft_tokens=1))
    m.add_request("a", 10, 31)
    events = run_to_end(m)["a"]
    sizes = [e[1] for e in events]
    assert sum(sizes) == 31 and sizes[0] == 1
    assert set(sizes[1:]) <= {1, 2} and sizes[1:5] == [1, 2, 1, 2]


def test_abort_waiting_and_running_requests_frees_everything():
    m = EngineModel(profile(max_running_requests=1))
    m.add_request("a", 10, 100)
    m.add_request("b", 10, 100)
    plan = m.plan_step()
    m.abort_request("a")  # mid-step: its events are dropped at commit
    m.abort_request("b")  # still waiting
    assert m.commit_step(plan) == []
    assert not m.has_work()
    assert m.stats() == {"running": 0, "waiting": 0, "kv_used_tokens": 0, "preemptions": 0}
    m.abort_request("never-seen")  # ignored


def test_bad_input_errors():
    m = EngineModel(profile(max_context_tokens=500))
    with pytest.raises(ValueError, match="maximum context length is 500 tokens"):
        m.add_request("a", 450, 100)
    with pytest.raises(ValueError, match="max_output_tokens must be an integer >= 1"):
        m.add_request("a", 10, 0)
    with pytest.raises(ValueError, match="prompt_tokens must be an integer >= 1"):
        m.add_request("a", -1, 5)
    m.add_request("a", 10, 5)
    with pytest.raises(ValueError, match="already in the engine"):
        m.add_request("a", 10, 5)
    with pytest.raises(ValueError, match="slowdown must be a number > 0"):
        EngineModel(profile(), slowdown=0)


def test_plan_and_commit_must_alternate():
    m = EngineModel(profile())
    m.add_request("a", 10, 5)
    plan = m.plan_step()
    with pytest.raises(RuntimeError, match="commit_step the previous plan"):
        m.plan_step()
    m.commit_step(plan)
    with pytest.raises(RuntimeError, match="plan returned by the last plan_step"):
        m.commit_step(plan)


@pytest.mark.parametrize("change, message", [
    ({"scheduler": "fifo"}, "scheduler must be one of mixed, prefill_first"),
    ({"kv_capacity_tokens": 100}, "KV capacity per rank \\(100 tokens\\) must be >= max_context_tokens"),
    ({"dp_size": 0}, "dp_size must be an integer >= 1"),
    ({"decode_ms_per_seq": -1.0}, "decode_ms_per_seq must be a number >= 0"),
    ({"tokens_per_decode_step": 1.8}, "cannot exceed 1 \\+ spec_draft_tokens"),
    ({"new_token_ratio": 2.0}, "new_token_ratio is a share of the remaining output, at most 1"),
    ({"new_token_ratio": 0.2, "new_token_ratio_min": 0.5}, "new_token_ratio_min \\(0.5\\) cannot exceed"),
    ({"dense_prefill_max_kv_tokens": -1}, "dense_prefill_max_kv_tokens must be an integer >= 0"),
    ({"dense_attention_efficiency": 1.5}, "dense_attention_efficiency must be a number in \\[0, 1\\]"),
])
def test_profile_validation(change, message):
    with pytest.raises(ValueError, match=message):
        profile(**change)


# -- profile files ---------------------------------------------------------

from pytest_llmperf.sim.profiles import list_profiles, load_profile  # noqa: E402

REQUIRED_PROFILES = ("vllm-tp8", "sglang-tp8-dp8-dpattn")


def test_builtin_profiles_load_and_say_what_they_stand_in_for():
    names = list_profiles()
    assert set(REQUIRED_PROFILES) <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.model == "deepseek-ai/DeepSeek-V3.2"
        assert p.engine in ("vllm", "sglang", "trtllm") and p.stands_in_for and p.seed_engine_version
    assert load_profile("vllm-tp8").dp_size == 1 and load_profile("sglang-tp8-dp8-dpattn").dp_size == 8


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown sim profile 'nope': expected one of .*vllm-tp8"):
        load_profile("nope")
    with pytest.raises(ValueError, match="sim profile file not found"):
        load_profile("/no/such/profile.toml")


def test_profile_file_by_path_and_its_errors(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text("step_base_ms = 1\ndecode_ms_per_seq = 0.1\nprefill_ms_per_token = 0.01\n"
                    "max_running_requests = 4\nkv_capacity_tokens = 9000\nchunked_prefill_tokens = 512\n"
                    "max_context_tokens = 8192\n")
    p = load_profile(good)
    assert p.name == "mine" and p.kv_capacity_tokens == 9000 and p.scheduler == "mixed"

    typo = tmp_path / "typo.toml"
    typo.write_text(good.read_text() + "step_base_msec = 3\n")
    with pytest.raises(ValueError, match="unknown key\\(s\\) step_base_msec"):
        load_profile(typo)

    missing = tmp_path / "missing.toml"
    missing.write_text("step_base_ms = 1\n")
    with pytest.raises(ValueError, match="missing required key\\(s\\) max_running_requests, chunked_prefill_tokens, "
                                         "decode_ms_per_seq, prefill_ms_per_token, kv_capacity_tokens"):
        load_profile(missing)
    hw = tmp_path / "hw.toml"
    hw.write_text('hardware = "h200"\nmax_running_requests = 4\nchunked_prefill_tokens = 512\ngemm_efficiency = 0.3\n')
    with pytest.raises(ValueError, match="missing required key\\(s\\) attention_efficiency, memory_efficiency"):
        load_profile(hw)

    derived = tmp_path / "derived.toml"
    derived.write_text('base = "vllm-tp8"\ngemm_efficiency = 0.01\n')
    d = load_profile(derived)
    assert d.name == "derived" and d.gemm_efficiency == 0.01 and d.engine == "vllm" and d.hardware == "h200"
    assert d.stands_in_for == "" and d.memory_efficiency == load_profile("vllm-tp8").memory_efficiency
    loop = tmp_path / "loop.toml"
    loop.write_text('base = "loop.toml"\n')
    with pytest.raises(ValueError, match="leads back to itself"):
        load_profile(loop)
    with pytest.raises(ValueError, match="hardware must be one of h200, got 'b200'"):
        load_profile(derived.write_text('base = "vllm-tp8"\nhardware = "b200"\n') and derived)

    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("max_running_requests = 4", "max_running_requests = 0"))
    with pytest.raises(ValueError, match="max_running_requests must be an integer >= 1, got 0"):
        load_profile(bad)

    broken = tmp_path / "broken.toml"
    broken.write_text("step_base_ms = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_profile(broken)


# ----------------------------------------------------------------- prefix cache
def time_to_first_token_s(model: EngineModel, rid: str, prompt_tokens: int, key: str | None) -> tuple[float, int]:
    """Run one request alone; (virtual seconds to its first token, prompt tokens it prefilled)."""
    model.add_request(rid, prompt_tokens, 2, prefix_key=key)
    elapsed_s, prefilled = 0.0, 0
    while model.has_work():
        plan = model.plan_step()
        elapsed_s += model.step_duration_s(plan)
        prefilled += plan.num_prefill_tokens
        if any(ev.first for ev in model.commit_step(plan)):
            break
    while model.has_work():
        model.commit_step(model.plan_step())
    return elapsed_s, prefilled


def test_a_repeated_prompt_prefills_only_its_last_token_and_comes_sooner():
    model = EngineModel(profile())
    cold_s, cold_tokens = time_to_first_token_s(model, "a", 300, "k")
    warm_s, warm_tokens = time_to_first_token_s(model, "b", 300, "k")
    assert (cold_tokens, warm_tokens) == (300, 1)  # the last token is always computed
    assert warm_s < cold_s
    assert (model.prefix_cache_queries, model.prefix_cache_hits) == (600, 299)
    assert model.cached_prefix_tokens("k") == 300 and model.prefix_cache_tokens == 300


def test_requests_without_a_key_or_with_another_key_never_hit():
    model = EngineModel(profile())
    time_to_first_token_s(model, "a", 300, None)
    _, tokens = time_to_first_token_s(model, "b", 300, None)
    _, other = time_to_first_token_s(model, "c", 300, "other")
    assert (tokens, other) == (300, 300)
    assert (model.prefix_cache_queries, model.prefix_cache_hits) == (900, 0)


def test_a_key_enters_the_cache_only_once_its_prompt_is_prefilled():
    model = EngineModel(profile(chunked_prefill_tokens=1000))
    model.add_request("a", 300, 2, prefix_key="k")
    model.add_request("b", 300, 2, prefix_key="k")  # admitted in the same step as a: no hit
    plan = model.plan_step()
    assert [n for _, n in plan.ranks[0].prefills] == [300, 300]
    assert model.cached_prefix_tokens("k") == 0
    model.commit_step(plan)
    run_to_end(model)
    assert model.prefix_cache_hits == 0 and model.cached_prefix_tokens("k") == 300


def test_reset_prefix_cache_forgets_every_prompt():
    model = EngineModel(profile())
    time_to_first_token_s(model, "a", 300, "k")
    assert model.reset_prefix_cache() is True
    assert model.prefix_cache_tokens == 0 and model.cached_prefix_tokens("k") == 0
    _, tokens = time_to_first_token_s(model, "b", 300, "k")
    assert tokens == 300 and model.prefix_cache_hits == 0


def test_the_cache_is_bounded_by_the_kv_capacity_and_evicts_the_least_recently_used():
    model = EngineModel(profile(kv_capacity_tokens=1000, dp_size=2))  # 2000 tokens node-wide
    assert model.prefix_cache_capacity_tokens == 2000
    for key in ("a", "b", "c", "d"):
        time_to_first_token_s(model, f"r-{key}", 450, key)  # 1800 tokens cached
    time_to_first_token_s(model, "r-a2", 450, "a")  # a used again: b is now the least recently used
    time_to_first_token_s(model, "r-e", 450, "e")  # 2250 > 2000: evict b
    assert [model.cached_prefix_tokens(k) for k in "abcde"] == [450, 0, 450, 450, 450]
    assert model.prefix_cache_tokens == 1800 <= model.prefix_cache_capacity_tokens
    assert model.prefix_cache_hits == 449


def test_output_and_request_counters():
    model = EngineModel(profile())
    model.add_request("a", 50, 3)
    model.add_request("b", 40, 5)
    model.add_request("c", 30, 5)
    model.commit_step(model.plan_step())  # a and b prefilled (first tokens), c's first 10 tokens
    model.abort_request("c")
    run_to_end(model)
    assert (model.prompt_tokens_total, model.generation_tokens_total, model.requests_finished) == (90, 8, 2)


def test_every_shipped_profile_stands_in_for_eight_gpus_and_says_so():
    from pytest_llmperf.sim.profiles import PROFILES_DIR

    for name in list_profiles():
        text = (PROFILES_DIR / f"{name}.toml").read_text()
        while "\ngpus = 8\n" not in text and "\nbase = " in text:  # said, here or in its base, not defaulted
            base = text.split("\nbase = ", 1)[1].split("\n", 1)[0].strip('"')
            text = (PROFILES_DIR / f"{base}.toml").read_text()
        assert "\ngpus = 8\n" in text, name
        assert load_profile(name).gpus == 8


def test_profile_gpus_defaults_to_eight_and_is_checked(tmp_path):
    base = ("step_base_ms = 1\ndecode_ms_per_seq = 0.1\nprefill_ms_per_token = 0.01\nmax_running_requests = 4\n"
            "kv_capacity_tokens = 9000\nchunked_prefill_tokens = 512\nmax_context_tokens = 8192\n")
    path = tmp_path / "mine.toml"
    path.write_text(base)
    assert load_profile(path).gpus == 8
    path.write_text(base + "gpus = 2\n")
    assert load_profile(path).gpus == 2
    for bad in ("0", '"8"', "true", "1.5"):
        path.write_text(base + f"gpus = {bad}\n")
        with pytest.raises(ValueError, match=r"sim profile .*mine.toml: .*gpus must be an integer >= 1"):
            load_profile(path)


def sglang(**over) -> Profile:
    base = dict(scheduler="prefill_first", kv_capacity_tokens=1000, max_context_tokens=1000,
                chunked_prefill_tokens=10_000, new_token_ratio=0.01, new_token_ratio_min=0.01)
    base.update(over)
    return profile(**base)


def prefilled(plan) -> list[str]:
    return [req.request_id for rank in plan.ranks for req, _ in rank.prefills]


def test_sglang_admits_a_request_only_with_room_for_its_whole_output():
    m = EngineModel(sglang(new_token_ratio=0.5, new_token_ratio_min=0.5))
    m.add_request("a", 100, 500)
    m.add_request("b", 100, 350)
    plan = m.plan_step()
    assert prefilled(plan) == ["a"]  # a's whole 500 is held this round: 100 + 500 + 100 + 350 > 1000
    m.commit_step(plan)
    plan = m.plan_step()  # then a keeps half of its remaining 499: 101 + 249.5 + 100 + 350 < 1000
    assert prefilled(plan) == ["b"]
    # strictly less than what is left: beside a 1-token prompt and its 1-token output, 100 + 898 does not fit
    m = EngineModel(sglang(new_token_ratio=0.0, new_token_ratio_min=0.0))
    m.add_request("a", 1, 1)
    m.add_request("b", 100, 898)
    assert prefilled(m.plan_step()) == ["a"]
    # alone, a request always fits, even one as long as the pool (SGLang clips its output to the pool)
    m = EngineModel(sglang())
    m.add_request("a", 100, 900)
    assert prefilled(m.plan_step()) == ["a"]
    # at most 4096 tokens of one request's output are reserved
    m = EngineModel(sglang(kv_capacity_tokens=10_000, max_context_tokens=10_000))
    m.add_request("a", 100, 8000)
    m.add_request("b", 100, 5000)
    assert prefilled(m.plan_step()) == ["a", "b"]  # 100 + 4096 + 100 + 4096 < 10000


def retractions(m: EngineModel, max_steps: int = 5000):
    """Run to the end; per retraction: (step, retracted ids, generated per request, kv free, ratio after)."""
    out, steps = [], []
    for i in range(max_steps):
        if not m.has_work():
            return out, steps
        plan = m.plan_step()
        steps.append(plan)
        gone = plan.ranks[0].preempted
        if gone:
            made = {rid: req.generated for rid, req in m._requests.items()}
            free = m.kv_capacity_tokens - m.stats()["kv_used_tokens"]
            out.append((i, gone, made, free, m._ranks[0].new_token_ratio))
        m.commit_step(plan)
    raise AssertionError("model did not finish")


def test_sglang_retracts_the_longest_prompt_among_equals_not_the_newest():
    m = EngineModel(sglang(kv_capacity_tokens=1100, max_context_tokens=1000))
    m.add_request("x", 300, 300)  # x and y admitted together, z a step later: all three have one token
    m.add_request("y", 100, 300)
    m.add_request("z", 50, 300)
    events, _ = retractions(m)
    assert [e[1] for e in events][:1] == [("x",)]


def test_sglang_retracts_the_fewest_outputs_first():
    m = EngineModel(sglang(kv_capacity_tokens=1100, max_context_tokens=1000, new_token_ratio=0.7,
                           new_token_ratio_min=0.001, new_token_ratio_decay=0.01))
    m.add_request("old", 300, 600)  # long prompt, admitted first: the most tokens when the pool runs out
    m.add_request("new", 20, 400)  # admitted once the ratio has decayed, so fewer tokens
    events, _ = retractions(m)
    step, gone, made, _, _ = events[0]
    assert made["new"] < made["old"] and gone == ("new",)


def test_sglang_retraction_goes_to_the_back_of_the_queue_and_resets_the_ratio_from_progress():
    m = EngineModel(sglang(new_token_ratio_min=0.001, new_token_ratio_decay=0.0001))
    m.add_request("x", 100, 500)
    m.add_request("y", 200, 500)  # waits one round for x's whole output, then both have one token
    m.add_request("z", 300, 400)  # never fits beside them: waits
    events, steps = retractions(m)
    assert not m.has_work() and m.stats()["kv_used_tokens"] == 0
    assert len(events) == 1 and events[0][1] == ("y",) and m.num_preemptions == 1
    at, _, made, _, ratio_after = events[0]
    assert steps[at].num_decode_seqs == 1 and steps[at].num_prefill_tokens == 0  # x decodes on alone, no prefill
    # the kept request's progress sets the ratio: (made + 20 decodes) / (promised + 1), not decayed that step
    assert ratio_after == pytest.approx((made["x"] + 20) / 501)
    # y went behind z: z is prefilled (300 tokens) before y's prompt and output so far
    prefills = [p.num_prefill_tokens for p in steps[at:] if p.num_prefill_tokens]
    assert prefills == [300, 200 + made["y"]]


def test_sglang_retraction_frees_room_for_twenty_decodes_of_every_kept_request_and_no_more():
    m = EngineModel(sglang(kv_capacity_tokens=3000, max_context_tokens=3000, max_running_requests=64))
    for i in range(40):
        m.add_request(f"r{i}", 10, 500)
    events, steps = retractions(m)
    step, gone, made, free, _ = events[0]
    assert steps[step].num_prefill_tokens == 0  # the room freed is not refilled in the decode step itself
    kept = 40 - len(gone)
    assert len(gone) > 1
    assert free >= 20 * kept  # room for 20 more decodes of each request kept
    last = gone[-1]
    assert free - (10 + made[last]) < 20 * (kept + 1)  # one retraction fewer would not have been enough


def test_a_profile_without_reservations_keeps_none_after_a_retraction():
    m = EngineModel(sglang(new_token_ratio=0.0, new_token_ratio_min=0.0, kv_capacity_tokens=1100,
                           max_context_tokens=1000))
    for rid, prompt in (("x", 300), ("y", 100), ("z", 50)):
        m.add_request(rid, prompt, 300)
    events, _ = retractions(m)
    assert events and all(e[4] == 0.0 for e in events)


def test_sglang_a_step_that_retracts_decodes_only():
    m = EngineModel(sglang(kv_capacity_tokens=1100, max_context_tokens=1000))
    for rid, prompt in (("x", 300), ("y", 100), ("z", 50)):
        m.add_request(rid, prompt, 300)
    while m.kv_capacity_tokens - m.stats()["kv_used_tokens"] >= 3:  # until the next decode of three cannot fit
        m.commit_step(m.plan_step())
    m.add_request("w", 5, 5)  # does not fit now; would, once the retraction frees room
    plan = m.plan_step()
    assert plan.ranks[0].preempted and plan.num_decode_seqs == 2 and plan.num_prefill_tokens == 0
    m.commit_step(plan)
    assert "w" in [req.request_id for req, _ in m.plan_step().ranks[0].prefills]  # the next step prefills
