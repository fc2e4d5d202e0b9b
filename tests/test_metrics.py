"""Every metric formula pinned against hand-computed cases."""

import math

import pytest

from pytest_llmperf.metrics import RequestRecord, compute_metrics, failure_reasons, percentile, percentile_key


def ok(start_s, ttft_s, itl_s, output_tokens, prompt_len=10, input_tokens=None):
    latency_s = ttft_s + sum(itl_s)
    return RequestRecord(prompt_len=prompt_len, expected_output_len=output_tokens, start_s=start_s, success=True,
                         ttft_s=ttft_s, itl_s=list(itl_s), latency_s=latency_s, output_tokens=output_tokens,
                         input_tokens=input_tokens)


def failed(prompt_len=100, error="HTTP 500: boom"):
    return RequestRecord(prompt_len=prompt_len, expected_output_len=50, error=error)


@pytest.fixture
def run():
    records = [
        ok(0.0, 0.1, [0.02, 0.04], output_tokens=3, prompt_len=10),  # TPOT (0.16 - 0.1) / 2 = 30 ms
        ok(0.0, 0.2, [], output_tokens=1, prompt_len=11, input_tokens=12),  # one token: no TPOT
        ok(0.5, 0.3, [0.05] * 4, output_tokens=9, prompt_len=20),  # 5 chunks, 9 tokens: TPOT 0.2 / 8 = 25 ms
        failed(prompt_len=100),
    ]
    return compute_metrics(records, duration_s=2.0, percentiles=(25, 99))


def test_counts_and_throughputs(run):
    assert run["completed"] == 3 and run["failed"] == 1
    assert run["duration"] == 2.0
    assert run["total_input_tokens"] == 10 + 12 + 20  # usage prompt tokens win over prompt_len; failed excluded
    assert run["total_output_tokens"] == 3 + 1 + 9
    assert run["request_throughput"] == pytest.approx(1.5)
    assert run["output_throughput"] == pytest.approx(6.5)
    assert run["total_token_throughput"] == pytest.approx(27.5)


def test_ttft_stats(run):
    # [100, 200, 300] ms
    assert run["mean_ttft_ms"] == pytest.approx(200)
    assert run["median_ttft_ms"] == pytest.approx(200)
    assert run["std_ttft_ms"] == pytest.approx(math.sqrt(20000 / 3))  # population, not sample
    assert run["p25_ttft_ms"] == pytest.approx(150)  # position 0.5
    assert run["p99_ttft_ms"] == pytest.approx(298)  # position 1.98


def test_tpot_only_from_multi_token_outputs(run):
    # [30, 25] ms; the one-token request does not enter
    assert run["mean_tpot_ms"] == pytest.approx(27.5)
    assert run["median_tpot_ms"] == pytest.approx(27.5)
    assert run["std_tpot_ms"] == pytest.approx(2.5)
    assert run["p99_tpot_ms"] == pytest.approx(29.95)


def test_itl_pools_every_gap_one_per_chunk(run):
    # [20, 40, 50, 50, 50, 50] ms
    assert run["mean_itl_ms"] == pytest.approx(260 / 6)
    assert run["median_itl_ms"] == pytest.approx(50)
    mean = 260 / 6
    assert run["std_itl_ms"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in [20, 40, 50, 50, 50, 50]) / 6))
    assert run["p25_itl_ms"] == pytest.approx(42.5)  # position 1.25
    assert run["p99_itl_ms"] == pytest.approx(50)


def test_e2el_stats(run):
    # [160, 200, 500] ms
    assert run["mean_e2el_ms"] == pytest.approx(860 / 3)
    assert run["median_e2el_ms"] == pytest.approx(200)
    mean = 860 / 3
    assert run["std_e2el_ms"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in [160, 200, 500]) / 3))
    assert run["p99_e2el_ms"] == pytest.approx(494)


def test_key_set_matches_the_reference_plus_extras():
    m = compute_metrics([ok(0.0, 0.1, [0.1], 2)], 1.0)
    expected = {"completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests",
                "max_output_tokens_per_s_token_weighted", "max_concurrent_requests_exact"}
    for name in ("ttft", "tpot", "itl", "e2el"):
        expected |= {f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms", f"p99_{name}_ms"}
    assert set(m) == expected


def test_percentile_labels():
    m = compute_metrics([ok(0.0, 0.1, [0.1], 2)], 1.0, percentiles=(50, 90.0, 99.9))
    assert {"p50_ttft_ms", "p90_ttft_ms", "p99.9_ttft_ms", "p99.9_itl_ms"} <= set(m)
    assert percentile_key(99) == "p99" and percentile_key(99.0) == "p99" and percentile_key(99.9) == "p99.9"


@pytest.mark.parametrize(
    "values, pct, expected",  # numpy.percentile(values, pct) with the default linear method
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([15, 20, 35, 40, 50], 40, 29.0),
        ([15, 20, 35, 40, 50], 0, 15.0),
        ([15, 20, 35, 40, 50], 100, 50.0),
        (list(range(1, 11)), 99.9, 9.991),
        ([40, 10, 30, 20], 75, 32.5),  # unsorted input
        ([7.0], 99, 7.0),
        ([], 99, 0.0),
    ],
)
def test_percentile_linear_like_numpy(values, pct, expected):
    assert percentile(values, pct) == pytest.approx(expected)


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)


def test_peak_output_chunk_counted_vs_token_weighted():
    # Times are binary fractions so bucket edges are exact. Origin = earliest start (100.0).
    a = ok(100.0, 0.5, [0.25, 0.5], output_tokens=9)  # chunks at +0.5, +0.75, +1.25; 3 tokens each
    b = ok(100.25, 0.5, [0.25, 0.25, 0.25], output_tokens=4)  # chunks at +0.75, +1.0, +1.25, +1.5; 1 each
    m = compute_metrics([a, b], 2.0)
    # chunk buckets: [0, 1) -> 2 + 1 = 3; [1, 2) -> 1 + 3 = 4
    assert m["max_output_tokens_per_s"] == 4
    # token buckets: [0, 1) -> 6 + 1 = 7; [1, 2) -> 3 + 3 = 6
    assert m["max_output_tokens_per_s_token_weighted"] == pytest.approx(7)


def test_peak_concurrency_reference_over_counts_exact_sweeps():
    records = [
        ok(0.0, 0.25, [0.25], 2),  # [0, 0.5)
        ok(0.75, 0.25, [0.25], 2),  # [0.75, 1.25)
        ok(1.5, 0.125, [0.125], 2),  # [1.5, 1.75)
        ok(0.5, 0.0625, [0.0625], 2),  # [0.5, 0.625): starts exactly when the first ends
    ]
    m = compute_metrics(records, 2.0)
    assert m["max_concurrent_requests"] == 3  # second 0 holds requests 1, 2 and 4
    assert m["max_concurrent_requests_exact"] == 1  # never two at once


def test_exact_concurrency_counts_real_overlap():
    records = [ok(0.0, 0.5, [0.5], 2), ok(0.25, 0.5, [0.5], 2), ok(0.5, 0.5, [0.5], 2), ok(1.5, 0.1, [], 1)]
    m = compute_metrics(records, 2.0)
    assert m["max_concurrent_requests_exact"] == 3  # at 0.5: all three of the first
    assert m["max_concurrent_requests"] == 4  # second 1 touches all four (the first ends at exactly 1.0)


def test_failed_requests_change_no_figure_but_failed():
    good = [ok(0.0, 0.1, [0.02, 0.04], 3), ok(0.5, 0.3, [0.05] * 4, 9)]
    bad = [failed(), RequestRecord(prompt_len=5, expected_output_len=5, start_s=0.1, ttft_s=9.0, itl_s=[9.0],
                                   latency_s=18.0, output_tokens=7, error="transport error")]
    clean, mixed = compute_metrics(good, 2.0), compute_metrics(good + bad, 2.0)
    assert mixed.pop("failed") == 2 and clean.pop("failed") == 0
    assert mixed == clean


@pytest.mark.parametrize("records", [[], [failed(), failed(error="timed out after 5 s")]])
def test_nothing_completed_gives_zeros(records):
    m = compute_metrics(records, 5.0, percentiles=(50, 99))
    assert m["completed"] == 0 and m["failed"] == len(records) and m["duration"] == 5.0
    assert all(v == 0 for k, v in m.items() if k not in ("failed", "duration"))


def test_zero_duration_gives_zero_rates():
    m = compute_metrics([ok(0.0, 0.1, [0.1], 2)], 0.0)
    assert m["request_throughput"] == m["output_throughput"] == m["total_token_throughput"] == 0.0


def test_goodput_counts_requests_meeting_every_slo():
    records = [ok(0.0, 0.1, [0.02, 0.04], 3), ok(0.0, 0.2, [], 1), ok(0.5, 0.3, [0.05] * 4, 9)]
    # TTFT 100/200/300 ms, TPOT 30/-/25 ms, E2EL 160/200/500 ms; limits are inclusive
    m = compute_metrics(records, 2.0, goodput_slos_ms={"ttft": 200, "tpot": 30})
    assert m["request_goodput"] == pytest.approx(1.0)  # first two meet both
    assert "request_goodput" not in compute_metrics(records, 2.0)
    with pytest.raises(ValueError, match="ttft, tpot, e2el"):
        compute_metrics([], 2.0, goodput_slos_ms={"itl": 5})


def test_failure_reasons_distinct_with_counts():
    records = [failed(error="HTTP 500: boom"), ok(0.0, 0.1, [], 1), failed(error="timed out after 5 s"),
               failed(error="HTTP 500: boom"), failed(error="")]
    assert failure_reasons(records) == ["HTTP 500: boom (x2)", "timed out after 5 s (x1)", "unknown error (x1)"]
    assert failure_reasons(records, limit=1) == ["HTTP 500: boom (x2)"]
    assert failure_reasons([ok(0.0, 0.1, [], 1)]) == []


def test_latency_from_the_scheduled_send_time():
    a = ok(1.0, 0.1, [0.02, 0.04], 3)
    a.scheduled_s = 1.0  # sent on time
    b = ok(2.5, 0.2, [0.1], 2)
    b.scheduled_s = 2.0  # sent 500 ms late: queued in the client
    m = compute_metrics([a, b], 2.0, percentiles=(50,), from_schedule=True)
    assert m["mean_send_delay_ms"] == pytest.approx(250.0)
    assert m["mean_ttft_ms"] == pytest.approx(150.0)  # the reference's view hides the queueing
    assert m["mean_ttft_from_schedule_ms"] == pytest.approx((100 + 700) / 2)
    assert m["mean_e2el_from_schedule_ms"] == pytest.approx((160 + 800) / 2)
    assert m["p50_ttft_from_schedule_ms"] == pytest.approx(400.0)
    assert "mean_ttft_from_schedule_ms" not in compute_metrics([a, b], 2.0)


def test_goodput_e2el_and_one_token_outputs_meet_any_tpot_limit():
    records = [ok(0.0, 0.1, [0.02, 0.04], 3), ok(0.0, 0.2, [], 1), ok(0.5, 0.3, [0.05] * 4, 9)]
    assert compute_metrics(records, 2.0, goodput_slos_ms={"e2el": 200})["request_goodput"] == pytest.approx(1.0)
    assert compute_metrics(records, 4.0, goodput_slos_ms={"tpot": 1})["request_goodput"] == pytest.approx(0.25)


def test_parse_goodput_and_percentiles():
    from pytest_llmperf.metrics import parse_goodput, parse_percentiles

    assert parse_goodput("ttft:2000 tpot:80") == {"ttft": 2000.0, "tpot": 80.0}
    assert parse_goodput("e2el:1.5,TTFT:3") == {"e2el": 1.5, "ttft": 3.0}
    for bad, message in [("itl:5", "among ttft, tpot, e2el"), ("ttft", "NAME:MS"), ("ttft:abc", "milliseconds"),
                         ("ttft:-1", "> 0 ms"), ("ttft:1 ttft:2", "twice"), ("", "one or more")]:
        with pytest.raises(ValueError, match=message):
            parse_goodput(bad)
    assert parse_percentiles("50, 90,99.9,99") == (50.0, 90.0, 99.9, 99.0)
    assert parse_percentiles("99,99") == (99.0,)
    for bad in ("0", "101", "x", ""):
        with pytest.raises(ValueError):
            parse_percentiles(bad)


def test_configured_percentiles_are_keyed_like_the_reference():
    m = compute_metrics([ok(0.0, 0.1, [0.02, 0.04], 3)], 1.0, percentiles=(50, 90, 99.9))
    assert {"p50_ttft_ms", "p90_tpot_ms", "p99.9_itl_ms", "p90_e2el_ms"} <= set(m)
    assert "p99_ttft_ms" not in m


def test_every_figure_a_run_produces_is_declared_once_in_the_table():
    from pytest_llmperf.metrics import METRICS, gateable_metrics, metric_def

    every = compute_metrics([], 1.0, percentiles=(50, 99.9), goodput_slos_ms={"ttft": 1.0}, from_schedule=True)
    every = {**every, "prompt_tokens_mismatch_pct": 0.0, "warmup_completed": 0}
    assert [k for k in every if metric_def(k) is None] == []
    # every declared metric is produced by some run (percentiles stand for all of theirs)
    assert set(METRICS) <= set(compute_metrics([], 1.0, percentiles=(99,), goodput_slos_ms={"ttft": 1.0},
                                               from_schedule=True)) | {"prompt_tokens_mismatch_pct", "warmup_completed"}
    assert metric_def("p99.9_itl_ms").unit == "ms" and metric_def("p99.9_itl_ms").direction == "lower"
    assert metric_def("p0_ttft_ms") is None and metric_def("p50_bogus_ms") is None
    assert metric_def("total_token_throughput").unit == "tok/s" and metric_def("total_token_throughput").reference
    assert not metric_def("max_output_tokens_per_s_token_weighted").reference  # ours, beside the reference's
    gateable = set(gateable_metrics())
    assert {"prompt_tokens_mismatch_pct", "warmup_completed", "total_input_tokens", "max_concurrent_requests"} \
        .isdisjoint(gateable)  # diagnostics and workload-fixed counts are never gated
    assert {"completed", "failed", "duration", "request_goodput", "p99_send_delay_ms", "std_itl_ms"} <= gateable


def test_failure_reasons_group_by_kind_and_show_the_first_detail():
    records = [failed(error="HTTP 400 Bad Request") for _ in range(3)]
    for i, rec in enumerate(records):
        rec.error_detail = f"prompt {i} too long"
    assert failure_reasons(records) == ["HTTP 400 Bad Request (x3; first: prompt 0 too long)"]
