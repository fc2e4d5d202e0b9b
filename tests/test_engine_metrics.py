"""Engine metrics, the pure part: parsing, roles, the run summary, evidence lines."""

import json

import pytest

from engine_metrics_texts import sglang_text, trtllm_iteration, trtllm_text, vllm_text
from pytest_llmperf import engine_metrics as em


# ----------------------------------------------------------------- parsing
def test_vllm_text_is_aggregated_over_engines():
    text = vllm_text(engines=8, running=3, waiting=2, kv_usage=0.4, kv_usage_by_engine={5: 0.93}, preemptions=5,
                     prefix_queries=100, prefix_hits=40, requests=10)
    values = em.parse_prometheus(text)
    assert values["vllm:num_requests_running"] == 24  # additive gauge: summed over the 8 engines
    assert values["vllm:num_requests_waiting"] == 16
    assert values["vllm:kv_cache_usage_perc"] == 0.93  # a fraction: the fullest engine
    assert values["vllm:num_preemptions_total"] == 40  # counters keep _total and are summed
    assert values["vllm:prefix_cache_queries_total"] == 800
    assert values["vllm:request_success_total"] == 80  # summed over finish reasons too
    assert values["vllm:time_to_first_token_seconds_count"] == 80  # histogram count and sum kept
    assert "vllm:time_to_first_token_seconds_sum" in values
    assert not any(name.endswith("_bucket") for name in values)


def test_parsing_only_the_roles_names_gives_the_same_values_for_them():
    text = vllm_text(engines=8, running=3, kv_usage=0.4, kv_usage_by_engine={2: 0.9}, preemptions=5, requests=10)
    full, only = em.parse_prometheus(text), em.parse_prometheus(text, only=em.ROLE_NAMES)
    assert only == em.role_values(full)
    assert only["vllm:kv_cache_usage_perc"] == 0.9  # its TYPE line is kept: still a gauge fraction, max


def test_sglang_text_and_its_retraction_names():
    values = em.parse_prometheus(sglang_text(dp_ranks=2, running=4, queued=7, token_usage=0.5, cache_hit_rate=0.3,
                                             retracted_total=6, retracted_batch=2))
    assert values["sglang:num_running_reqs"] == 8 and values["sglang:num_queue_reqs"] == 14
    assert values["sglang:token_usage"] == 0.5 and values["sglang:cache_hit_rate"] == 0.3
    assert values["sglang:num_retracted_requests_total"] == 12
    roles = em.discover(values)
    assert roles["preemptions"] == "sglang:num_retracted_requests_total"  # the counter, never the batch gauge
    assert roles["retracted_in_batch"] == "sglang:num_retracted_reqs"
    assert roles["kv_usage"] == "sglang:token_usage" and roles["cache_hit_rate"] == "sglang:cache_hit_rate"
    assert "preemptions" not in em.discover(em.parse_prometheus(sglang_text()))  # older SGLang: no counter


@pytest.mark.parametrize("garbage", ["<html><body>Not Found</body></html>", '{"detail": "Not Found"}',
                                     json.dumps([trtllm_iteration()]), "Internal Server Error"])
def test_a_body_that_is_not_prometheus_is_one_line_value_error(garbage):
    with pytest.raises(ValueError, match="^not Prometheus text") as info:
        em.parse_prometheus(garbage)
    assert "\n" not in str(info.value)


def test_roles_discover_old_and_new_vllm_names():
    new = em.discover(em.parse_prometheus(vllm_text(kv_name="vllm:kv_cache_usage_perc")))
    old = em.discover(em.parse_prometheus(vllm_text(kv_name="vllm:gpu_cache_usage_perc")))
    assert new["kv_usage"] == "vllm:kv_cache_usage_perc" and old["kv_usage"] == "vllm:gpu_cache_usage_perc"
    assert new["preemptions"] == "vllm:num_preemptions_total"
    assert em.discover({"something_else": 1.0}) == {}  # nothing known: no role


def test_trtllm_iterations_reduce_to_the_same_names():
    text = trtllm_text(trtllm_iteration(queued=3, active=5, max_blocks=1000, used_blocks=250, context=1, gen=4))
    (iteration,) = em.parse_trtllm_iterations(text)
    values = em.trtllm_values(iteration)
    assert values == {"trtllm:num_queued_requests": 3, "trtllm:num_active_requests": 5,
                      "trtllm:kv_cache_used_blocks": 250, "trtllm:kv_cache_usage": 0.25,
                      "trtllm:num_context_requests": 1, "trtllm:num_gen_requests": 4}
    assert set(em.discover(values)) == {"running", "waiting", "kv_usage", "context_requests", "generation_requests"}
    assert em.parse_trtllm_iterations("") == [] and em.parse_trtllm_iterations("[]") == []
    for bad in ("vllm:num_requests_running 1", "[1, 2]", '"text"'):
        with pytest.raises(ValueError, match="^not TRT-LLM iteration stats"):
            em.parse_trtllm_iterations(bad)


# ----------------------------------------------------------------- summary
def _vllm(**kw):
    return em.parse_prometheus(vllm_text(engines=2, **kw))


def test_summary_counters_are_deltas_and_gauges_max_and_mean_over_samples():
    before = _vllm(preemptions=10, prefix_queries=100, prefix_hits=10, generation_tokens=5)
    samples = [_vllm(running=r, waiting=w, kv_usage=kv, preemptions=10 + p)
               for r, w, kv, p in ((4, 10, 0.5, 0), (8, 30, 0.9, 50), (2, 0, 0.3, 100))]
    after = _vllm(preemptions=110, prefix_queries=600, prefix_hits=310, generation_tokens=1005)
    summary = em.summarize(before, samples, after)
    assert summary["available"] is True and summary["samples"] == 3
    assert summary["counters"]["preemptions"] == 200  # (110 - 10) x 2 engines
    assert summary["counters"]["generation_tokens"] == 2000
    assert summary["gauges"]["waiting"] == {"max": 60, "mean": pytest.approx(26.6667)}
    assert summary["gauges"]["kv_usage"]["max"] == 0.9
    assert summary["prefix_cache_hit_rate"] == pytest.approx(0.6)  # (310-10) / (600-100)
    assert summary["names"]["kv_usage"] == "vllm:kv_cache_usage_perc"
    json.dumps(summary)  # plain values


def test_summary_of_a_restarted_counter_and_of_a_run_without_samples():
    summary = em.summarize(_vllm(preemptions=50, waiting=3), [], _vllm(preemptions=7, waiting=1))
    assert summary["counters"]["preemptions"] == 14  # went down: the engine restarted, count from zero
    assert summary["gauges"]["waiting"]["max"] == 6  # no samples: before and after stand in
    assert summary["samples"] == 0


def test_summary_of_samples_only_and_of_nothing():
    iterations = [em.trtllm_values(trtllm_iteration(queued=q, used_blocks=u)) for q, u in ((0, 100), (9, 990))]
    summary = em.summarize(None, iterations, None)
    assert summary["gauges"]["waiting"]["max"] == 9 and summary["gauges"]["kv_usage"]["max"] == 0.99
    assert summary["counters"] == {}
    gone = em.summarize(None, [], None, note="connection refused at http://127.0.0.1:1/metrics")
    assert gone["available"] is False
    assert gone["note"] == "engine metrics unavailable: connection refused at http://127.0.0.1:1/metrics"
    assert em.summarize({"other_app_requests_total": 3.0}, [], {"other_app_requests_total": 4.0})["note"] == \
        "no known engine metric names found"


def test_sglang_hit_rate_comes_from_its_gauge():
    samples = [em.parse_prometheus(sglang_text(cache_hit_rate=h)) for h in (0.2, 0.4)]
    assert em.summarize(None, samples, None)["prefix_cache_hit_rate"] == pytest.approx(0.3)


# ----------------------------------------------------------------- evidence
def _summary(preemptions=0.0, waiting=0.0, kv=0.4, hit_rate=None, running=8.0):
    summary = {"available": True, "note": "", "samples": 5, "names": {},
               "counters": {"preemptions": preemptions},
               "gauges": {"waiting": {"max": waiting, "mean": waiting / 2}, "kv_usage": {"max": kv, "mean": kv},
                          "running": {"max": running, "mean": running}}}
    if hit_rate is not None:
        summary["prefix_cache_hit_rate"] = hit_rate
    return summary


def test_evidence_lines_name_what_differs_notably():
    base = _summary(preemptions=0, waiting=0, kv=0.41, hit_rate=0.0)
    cur = _summary(preemptions=412, waiting=37, kv=0.98, hit_rate=0.63)
    assert em.evidence_lines(base, cur) == [
        "preemptions: baseline 0, current 412",
        "peak requests waiting: baseline 0, current 37",
        "KV cache peak usage: baseline 41%, current 98%",
        "prefix cache hit rate: baseline 0%, current 63%",
    ]


def test_evidence_lines_stay_quiet_on_small_differences_and_missing_roles():
    base = _summary(preemptions=100, waiting=40, kv=0.50, hit_rate=0.60)
    cur = _summary(preemptions=108, waiting=44, kv=0.58, hit_rate=0.52)  # all under the thresholds
    assert em.evidence_lines(base, cur) == []
    no_hit_rate = _summary(hit_rate=None)
    assert not any("hit rate" in line for line in em.evidence_lines(no_hit_rate, _summary(hit_rate=0.9)))
    assert em.evidence_lines(em.unavailable_summary("refused"), cur) == []
    assert em.evidence_lines(None, cur) == []


def test_current_only_lines():
    assert em.current_only_lines(_summary(preemptions=3, kv=0.97)) == ["preemptions: 3", "KV cache peak usage: 97%"]
    assert em.current_only_lines(_summary()) == []
    assert em.current_only_lines(em.unavailable_summary("404")) == []
