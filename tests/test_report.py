import json

from pytest_llmperf.report.case import CaseResult
from pytest_llmperf.report.json import json_report, write_json
from pytest_llmperf.report.terminal import summary_tables
from pytest_llmperf.verdict import UPDATED, Verdict, judge


def result(workload, outcome="passed", **metrics):
    r = CaseResult(f"sim/c/{workload}", "sim", "c", workload, outcome=outcome, metrics=metrics)
    return r


def test_status_precedence():
    r = result("w", total_token_throughput=900.0, mean_tpot_ms=10.0)
    r.verdicts = [judge("total_token_throughput", 1000.0, 900.0, 5), judge("mean_tpot_ms", 10.0, 10.0, 5)]
    assert r.status == "regressed"
    r.verdicts = [judge("total_token_throughput", 1000.0, 1100.0, 5)]
    assert r.status == "improved"
    r.verdicts = [Verdict("mean_tpot_ms", None, 1.0, None, 5, UPDATED, "lower")]
    assert r.status == "updated"
    assert result("w", outcome="error").status == "error"
    assert result("w").status == "ok"


def test_table_has_one_block_per_config_with_changes():
    a = result("sharegpt", total_token_throughput=4113.24, mean_tpot_ms=613.22, mean_ttft_ms=17743.08, failed=0)
    a.verdicts = [judge("total_token_throughput", 4000.0, 4113.24, 5), judge("mean_tpot_ms", 600.0, 613.22, 5)]
    a.engine_version = "0.1.0+sim"
    b = CaseResult("sim/d/short", "sim", "d", "short", outcome="error")
    text = summary_tables([a, b])
    assert "sim/c (engine 0.1.0+sim)" in text and "sim/d" in text
    line = next(l for l in text.splitlines() if l.startswith("sharegpt"))
    assert "4,113.2" in line and "+2.8%" in line and "613.22" in line and "+2.2%" in line and "17,743.1" in line
    assert line.split()[-1] == "ok"
    assert next(l for l in text.splitlines() if l.startswith("short")).split()[-1] == "error"


def test_json_report_shape(tmp_path):
    r = result("w", total_token_throughput=1.0)
    r.verdicts = [judge("total_token_throughput", 1.0, 1.0, 5)]
    path = tmp_path / "sub" / "r.json"
    write_json(path, json_report([r], {"gpus": "h200x8"}))
    data = json.loads(path.read_text())
    assert data["environment"] == {"gpus": "h200x8"}
    assert data["metric_units"] == {"total_token_throughput": "tok/s"}  # from the metric table
    (case,) = data["cases"]
    assert {"id", "engine", "config", "workload", "outcome", "metrics", "verdicts"} <= set(case)
    assert case["verdicts"][0] == {"metric": "total_token_throughput", "baseline": 1.0, "reference": 1.0,
                                   "current": 1.0, "change_pct": 0.0, "tolerance_pct": 5, "configured_pct": 5,
                                   "band_pct": 0.0, "tolerance_from": "configured", "history_n": 1,
                                   "status": "ok"}
    assert {"runs", "spread", "apparatus", "engine_metrics", "confirm_runs", "changes"} <= set(case)
