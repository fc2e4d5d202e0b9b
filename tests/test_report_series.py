"""A run's series for charts: timelines, rates, distributions, GPU and engine readings on one clock."""

from pytest_llmperf.metrics import RequestRecord, percentile
from pytest_llmperf.report.series import output_rate, quantiles, request_timeline, run_series
from pytest_llmperf.telemetry import TelemetrySample


def rec(start, ttft, itls, tokens, ok=True):
    return RequestRecord(prompt_len=10, expected_output_len=tokens, start_s=start, success=ok, ttft_s=ttft,
                         itl_s=list(itls), latency_s=ttft + sum(itls), output_tokens=tokens if ok else 0)


def test_quantiles_match_the_metric_percentiles():
    values = [0.5, 0.1, 0.3, 0.2, 0.4]
    q = quantiles(values)
    assert len(q) == 101 and q[0] == 100.0 and q[100] == 500.0
    assert q[50] == round(percentile(values, 50) * 1000, 4) and q[99] == round(percentile(values, 99) * 1000, 4)
    assert quantiles([]) == []


def test_output_rate_conserves_tokens():
    records = [rec(100.0, 0.5, [0.1] * 9, 10), rec(100.2, 0.6, [0.2] * 4, 5), rec(100.3, 0, [], 0, ok=False)]
    rate = output_rate(records, 100.0)
    width = rate["t_s"][1] - rate["t_s"][0]
    assert abs(sum(rate["tok_s"]) * width - 15) < 0.05
    assert rate["t_s"][0] > 0 and rate["t_s"][-1] <= 1.6 + width


def test_timeline_is_sampled_evenly_and_keeps_failures():
    records = [rec(1000.0 + i, 0.1, [0.01], 2, ok=i % 7 != 0) for i in range(5000)]
    line = request_timeline(records, 1000.0, limit=500)
    assert len(line["start_s"]) == 500 and line["sampled_from"] == 5000
    assert line["start_s"][0] == 0.0 and line["start_s"][1] == 10.0
    assert line["success"][0] is False and line["ttft_s"][0] is None and line["ttft_s"][1] == 0.1


def test_gpu_and_engine_readings_share_the_requests_clock():
    records = [rec(50.0, 0.2, [0.05] * 3, 4), rec(50.5, 0.3, [0.05] * 3, 4)]
    gpu = [TelemetrySample(t_s=0.0, gpu=0, power_w=500.0, sm_clock_mhz=1980.0),
           TelemetrySample(t_s=0.0, gpu=1, power_w=700.0, sm_clock_mhz=1980.0),
           TelemetrySample(t_s=0.5, gpu=0, power_w=600.0)]
    engine = [(51.0, {"vllm:num_requests_running": 2.0, "vllm:num_requests_waiting": 0.0}),
              (52.0, {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0})]
    series = run_series(2, records, gpu, 49.0, engine)
    assert series["run"] == 2
    assert series["gpu"]["t_s"] == [-1.0, -0.5]  # the sampler started a second before the first send
    assert series["gpu"]["power_w"] == [600.0, 600.0] and series["gpu"]["sm_clock_mhz"] == [1980.0, None]
    assert series["engine"] == {"t_s": [1.0, 2.0], "running": [2.0, 0.0], "waiting": [0.0, 0.0]}
    assert len(series["quantiles"]["itl_ms"]) == 101 and series["quantiles"]["tpot_ms"][0] == 50.0
    assert run_series(1, []) is None
    assert "gpu" not in run_series(1, records) and "engine" not in run_series(1, records)


def test_the_last_rate_bin_is_a_full_bin_not_a_sliver():
    # 50 requests 0.2 s apart, 100 tokens each, one per 10 ms: at the end only the last one streams, 100 tok/s
    records = [rec(i * 0.2, 0.01, [0.01] * 99, 100) for i in range(50)]
    rate = output_rate(records, 0.0)
    end_s = 49 * 0.2 + 0.01 * 100
    width = rate["t_s"][1] - rate["t_s"][0]
    assert len(rate["tok_s"]) == 100 and abs(len(rate["tok_s"]) * width - end_s) < 1e-6
    assert 85 < rate["tok_s"][-1] < 115  # a bin holding only the final chunk would read about 9
