import json
import threading

import pytest

from pytest_llmperf import baselines as bl


def test_path_layout(tmp_path):
    p = bl.baseline_path(tmp_path, "h200x8", "deepseek-ai/DeepSeek-V3.2", "sim", "vllm-tp8")
    assert p == tmp_path / "h200x8" / "deepseek-ai__DeepSeek-V3.2" / "sim" / "vllm-tp8.json"


@pytest.mark.parametrize(
    "metric, base, cur, tol, status, change",
    [
        ("total_token_throughput", 1000.0, 949.0, 5, bl.REGRESSED, -5.1),
        ("total_token_throughput", 1000.0, 950.0, 5, bl.OK, -5.0),
        ("total_token_throughput", 1000.0, 1060.0, 5, bl.IMPROVED, 6.0),
        ("mean_tpot_ms", 100.0, 106.0, 5, bl.REGRESSED, 6.0),
        ("mean_tpot_ms", 100.0, 94.0, 5, bl.IMPROVED, -6.0),
        ("mean_tpot_ms", 100.0, 104.0, 5, bl.OK, 4.0),
        ("failed", 0, 0, 0, bl.OK, 0.0),
        ("failed", 0, 3, 0, bl.REGRESSED, None),
        ("failed", 4, 2, 0, bl.IMPROVED, -50.0),
    ],
)
def test_judge_directions(metric, base, cur, tol, status, change):
    v = bl.judge(metric, base, cur, tol)
    assert v.status == status
    assert (v.change_pct is None) if change is None else v.change_pct == pytest.approx(change, abs=0.05)


def test_directions_and_ungateable():
    assert bl.metric_direction("p99_ttft_ms") == bl.LOWER
    assert bl.metric_direction("output_throughput") == bl.HIGHER
    assert bl.metric_direction("completed") == bl.HIGHER
    with pytest.raises(ValueError, match="cannot be gated"):
        bl.metric_direction("total_input_tokens")


def test_verdict_line_names_everything():
    line = bl.judge("mean_tpot_ms", 200.0, 300.0, 10).line()
    assert line == "mean_tpot_ms: baseline 200, current 300, change +50.0% (tolerance 10%, lower is better) REGRESSED"


def test_tolerance_overrides_file_then_case():
    data = {"tolerances_pct": {"mean_tpot_ms": 8, "p99_ttft_ms": 30}, "cases": {"a": {"tolerances_pct": {"mean_tpot_ms": 2}}}}
    gates = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0}
    assert bl.effective_tolerances(gates, data, "a") == {"total_token_throughput": 5.0, "mean_tpot_ms": 2, "p99_ttft_ms": 30}
    assert bl.effective_tolerances(gates, data, "b")["mean_tpot_ms"] == 8
    assert bl.effective_tolerances(gates, None, "a") == gates


def test_compare_missing_metric_and_entry():
    tol = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0}
    assert {v.status for v in bl.compare({"total_token_throughput": 1.0}, None, tol)} == {bl.MISSING}
    verdicts = bl.compare({"total_token_throughput": 100.0}, {"metrics": {"total_token_throughput": 100.0}}, tol)
    assert [(v.metric, v.status) for v in verdicts] == [("mean_tpot_ms", bl.MISSING), ("total_token_throughput", bl.OK)]


def test_workload_mismatch():
    entry = {"workload": {"num_prompts": 200, "seed": 42}}
    assert bl.workload_mismatch(entry, {"num_prompts": 200, "seed": 42}) == []
    assert bl.workload_mismatch(entry, {"num_prompts": 20, "seed": 42}) == ["num_prompts: baseline 200, this run 20"]
    assert bl.workload_mismatch(None, {"num_prompts": 1}) == []


def test_update_keeps_other_cases_and_overrides(tmp_path):
    path = tmp_path / "x" / "c.json"
    header = {"engine": "sim", "config": "c"}
    assert bl.update_case(path, header, "a", {"metrics": {"m": 1.0}, "workload": {}}) is None
    bl.update_case(path, header, "b", {"metrics": {"m": 2.0}, "workload": {}})
    data = json.loads(path.read_text())
    data["tolerances_pct"] = {"mean_tpot_ms": 9}
    data["cases"]["a"]["tolerances_pct"] = {"mean_tpot_ms": 1}
    path.write_text(bl.dumps(data))
    old = bl.update_case(path, header, "a", {"metrics": {"m": 3.0, "bad": float("nan")}, "workload": {}})
    assert old["metrics"] == {"m": 1.0}
    data = bl.read_baseline(path)
    assert data["cases"]["a"] == {"metrics": {"m": 3.0}, "workload": {}, "tolerances_pct": {"mean_tpot_ms": 1}}
    assert data["cases"]["b"]["metrics"] == {"m": 2.0}
    assert data["tolerances_pct"] == {"mean_tpot_ms": 9} and data["schema"] == 1
    text = path.read_text()
    assert text.endswith("}\n") and text == bl.dumps(json.loads(text))  # sorted, stable
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_updates_lose_nothing(tmp_path):
    path = tmp_path / "c.json"
    threads = [threading.Thread(target=bl.update_case, args=(path, {}, f"case{i}", {"metrics": {"m": float(i)}})) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(bl.read_baseline(path)["cases"]) == sorted(f"case{i}" for i in range(16))


def test_read_errors(tmp_path):
    assert bl.read_baseline(tmp_path / "none.json") is None
    (tmp_path / "a.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        bl.read_baseline(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"schema": 99, "cases": {}}')
    with pytest.raises(ValueError, match="schema 99 is newer"):
        bl.read_baseline(tmp_path / "b.json")


def test_gateable_metrics_are_the_ones_a_run_produces():
    names = bl.gateable_metrics()
    assert {"total_token_throughput", "mean_tpot_ms", "p99_ttft_ms", "failed", "completed", "duration"} <= set(names)
    assert "total_input_tokens" not in names and "max_concurrent_requests" not in names
    with pytest.raises(ValueError, match="'mean_tpt_ms' cannot be gated; gateable metrics: completed, duration"):
        bl.metric_direction("mean_tpt_ms")


@pytest.mark.parametrize("content, message", [
    ('[]', "expected a JSON object"),
    ('{"schema": "1"}', "schema: expected an integer"),
    ('{"cases": []}', "cases: expected an object"),
    ('{"cases": {"a": []}}', "cases.a: expected an object"),
    ('{"cases": {"a": {"metrics": {"x": "1"}}}}', "cases.a.metrics: expected an object of metric name -> number"),
    ('{"tolerances_pct": {"mean_tpot_ms": "10"}}', "tolerances_pct.mean_tpot_ms: expected a percentage >= 0, got '10'"),
    ('{"cases": {"a": {"tolerances_pct": {"bogus_ms": 5}}}}', "cases.a.tolerances_pct.bogus_ms: metric 'bogus_ms' cannot be gated"),
])
def test_invalid_files_name_file_and_key(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        bl.read_baseline(path)
    assert str(info.value).startswith(f"baseline file {path}: ") and message in str(info.value)


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    path = tmp_path / "c.json"
    bl.update_case(path, {}, "a", {"metrics": {"m": 1.0}})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.json.lock", "c.json"]  # hidden lock, no temp left
