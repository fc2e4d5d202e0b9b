"""A case's result in the reference's saved-result layout."""

import datetime as dt
import json
import math

import math as _math

from pytest_llmperf.measure import LoadShape
from pytest_llmperf.metrics import RequestRecord, compute_metrics
from pytest_llmperf.report.reference import request_records, result_file_name, result_json
from pytest_llmperf.suite import Case, EngineConfig, Workload

CASE = Case(EngineConfig("sglang", "tp8 dp8", "org/m"), Workload("long", "random", 2, 4000, 200))
RECORDS = [
    RequestRecord(4000, 200, start_s=10.0, scheduled_s=10.0, success=True, ttft_s=0.5, itl_s=[0.1, 0.2],
                  latency_s=0.8, output_tokens=3, input_tokens=4003),
    RequestRecord(4000, 200, start_s=10.5, scheduled_s=10.25, error="HTTP 500: boom"),
]


def spec(max_concurrency=None, request_rate=_math.inf, burstiness=1.0, endpoint="/v1/chat/completions"):
    return LoadShape("served", endpoint, 2, request_rate, burstiness, max_concurrency)


def test_file_names_are_safe_and_one_per_case():
    assert result_file_name(CASE) == "sglang-tp8_dp8-long.json"


def test_reference_keys_for_parameters_and_figures():
    metrics = compute_metrics(RECORDS, 2.0, percentiles=(50, 99))
    data = result_json(CASE, "sglang", spec(max_concurrency=8), metrics, (50, 99),
                       now=dt.datetime(2026, 11, 28, 9, 5, 7))
    assert data["date"] == "20261128-090507"
    assert (data["backend"], data["model_id"], data["label"], data["endpoint_type"]) == \
        ("sglang", "served", "sglang/tp8 dp8/long", "openai-chat")
    assert (data["num_prompts"], data["request_rate"], data["burstiness"], data["max_concurrency"]) == (2, "inf", 1.0, 8)
    for key in ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput", "mean_ttft_ms", "median_tpot_ms", "p50_itl_ms",
                "p99_e2el_ms", "std_ttft_ms", "max_output_tokens_per_s", "max_concurrent_requests"):
        assert data[key] == metrics[key]
    assert "ttfts" not in data and "requests" not in data
    json.dumps(data)  # plain JSON throughout


def test_per_request_lists_and_records():
    data = result_json(CASE, "sglang", spec(request_rate=4.0), compute_metrics(RECORDS, 2.0), (99,), RECORDS)
    assert data["request_rate"] == 4.0 and data["endpoint_type"] == "openai-chat"
    assert data["input_lens"] == [4003, 4000] and data["output_lens"] == [3, 0]
    assert data["ttfts"] == [0.5, 0.0] and data["itls"] == [[0.1, 0.2], []]
    assert data["errors"] == ["", "HTTP 500: boom"]
    first, second = data["requests"]
    assert first == {"start_s": 0.0, "scheduled_s": 0.0, "success": True, "ttft_s": 0.5, "itl_s": [0.1, 0.2],
                     "latency_s": 0.8, "prompt_len": 4000, "input_tokens": 4003, "output_tokens": 3,
                     "expected_output_len": 200, "error": "", "error_detail": ""}
    assert (second["start_s"], second["scheduled_s"], second["ttft_s"], second["error"]) == (0.5, 0.25, None, "HTTP 500: boom")
    json.dumps(data)


def test_records_with_float_arrays_become_lists():
    from array import array

    rec = RequestRecord(1, 1, start_s=1.0, success=True, ttft_s=0.1, itl_s=array("d", [0.5]), latency_s=0.6,
                        output_tokens=2)
    assert request_records([rec])[0]["itl_s"] == [0.5]
    assert not math.isnan(request_records([rec])[0]["start_s"])
