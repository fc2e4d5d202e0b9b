"""JUnit XML properties of a case: names and values a CI reader finds."""

from pytest_llmperf.report.junit import case_status, junit_properties
from pytest_llmperf.verdict import judge


def test_every_gated_metric_gives_five_properties_and_the_case_three():
    verdicts = [judge("total_token_throughput", 1000.0, 900.0, 5).to_json(),
                judge("mean_tpot_ms", 10.0, 10.0, 5).to_json()]
    props = dict(junit_properties(verdicts, "regressed", "0.11.0", "baselines/a.json"))
    assert props["total_token_throughput"] == "900.0"
    assert props["total_token_throughput.baseline"] == "1000.0"
    assert props["total_token_throughput.change_pct"] == "-10.0"
    assert props["total_token_throughput.tolerance_pct"] == "5"
    assert props["total_token_throughput.status"] == "regressed"
    assert props["mean_tpot_ms.status"] == "ok"
    assert props["llmperf.status"] == "regressed"
    assert props["llmperf.engine_version"] == "0.11.0" and props["llmperf.baseline_file"] == "baselines/a.json"
    assert len(props) == 2 * 5 + 3


def test_missing_values_are_empty_and_unjudged_cases_are_named_by_outcome():
    props = dict(junit_properties([{"metric": "mean_tpot_ms", "current": 1.0, "baseline": None, "change_pct": None,
                                    "tolerance_pct": 5, "status": "missing"}], "missing", None, None))
    assert props["mean_tpot_ms.baseline"] == "" and props["llmperf.engine_version"] == ""
    assert case_status("", "error") == "error" and case_status("", "failed") == "failed"
    assert case_status("inconclusive", "skipped") == "inconclusive"
    assert case_status("", "") == "not run"
