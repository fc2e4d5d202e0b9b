"""Verdicts (pure): one metric against its baseline, a whole case, and the expected-failure policy."""

from pathlib import Path

import pytest

from pytest_llmperf import verdict as vd
from pytest_llmperf.baselines import BaselineRead
from pytest_llmperf.metrics import HIGHER, LOWER, gateable_metrics, metric_direction

@pytest.mark.parametrize(
    "metric, base, cur, tol, status, change",
    [
        ("total_token_throughput", 1000.0, 949.0, 5, vd.REGRESSED, -5.1),
        ("total_token_throughput", 1000.0, 950.0, 5, vd.OK, -5.0),
        ("total_token_throughput", 1000.0, 1060.0, 5, vd.IMPROVED, 6.0),
        ("mean_tpot_ms", 100.0, 106.0, 5, vd.REGRESSED, 6.0),
        ("mean_tpot_ms", 100.0, 94.0, 5, vd.IMPROVED, -6.0),
        ("mean_tpot_ms", 100.0, 104.0, 5, vd.OK, 4.0),
        ("failed", 0, 0, 0, vd.OK, 0.0),
        ("failed", 0, 3, 0, vd.REGRESSED, None),
        ("failed", 4, 2, 0, vd.IMPROVED, -50.0),
    ],
)
def test_judge_directions(metric, base, cur, tol, status, change):
    v = vd.judge(metric, base, cur, tol)
    assert v.status == status
    assert (v.change_pct is None) if change is None else v.change_pct == pytest.approx(change, abs=0.05)


def test_directions_and_ungateable():
    assert metric_direction("p99_ttft_ms") == LOWER
    assert metric_direction("output_throughput") == HIGHER
    assert metric_direction("completed") == HIGHER
    with pytest.raises(ValueError, match="cannot be gated"):
        metric_direction("total_input_tokens")


def test_verdict_line_names_everything():
    line = vd.judge("mean_tpot_ms", 200.0, 300.0, 10).line()
    assert line == "mean_tpot_ms: baseline 200, current 300, change +50.0% (tolerance 10%, lower is better) REGRESSED"
    banded = vd.judge("mean_tpot_ms", 200.0, 230.0, 10, band_pct=20.0, history_n=5)
    assert banded.status == vd.OK and banded.tolerance_from == "noise band"
    assert banded.line() == ("mean_tpot_ms: baseline 200 (median of 5), current 230, change +15.0% "
                             "(tolerance 20% = noise band, configured 10%, lower is better) OK")
    data = banded.to_json()
    assert (data["reference"], data["tolerance_pct"], data["configured_pct"], data["band_pct"],
            data["tolerance_from"]) == (200.0, 20.0, 10, 20.0, "noise band")


def test_tolerance_overrides_file_then_case():
    data = {"tolerances_pct": {"mean_tpot_ms": 8, "p99_ttft_ms": 30}, "cases": {"a": {"tolerances_pct": {"mean_tpot_ms": 2}}}}
    gates = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0}
    assert vd.effective_tolerances(gates, data, "a") == {"total_token_throughput": 5.0, "mean_tpot_ms": 2, "p99_ttft_ms": 30}
    assert vd.effective_tolerances(gates, data, "b")["mean_tpot_ms"] == 8
    assert vd.effective_tolerances(gates, None, "a") == gates


def test_compare_missing_metric_and_entry():
    tol = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0}
    assert {v.status for v in vd.compare({"total_token_throughput": 1.0}, None, tol)} == {vd.MISSING}
    verdicts = vd.compare({"total_token_throughput": 100.0},
                          {"history": [{"metrics": {"total_token_throughput": 100.0}}]}, tol)
    assert [(v.metric, v.status) for v in verdicts] == [("mean_tpot_ms", vd.MISSING), ("total_token_throughput", vd.OK)]


def test_workload_mismatch():
    entry = {"workload": {"num_prompts": 200, "seed": 42}}
    assert vd.workload_mismatch(entry, {"num_prompts": 200, "seed": 42}) == []
    assert vd.workload_mismatch(entry, {"num_prompts": 20, "seed": 42}) == ["num_prompts: baseline 200, this run 20"]
    assert vd.workload_mismatch(None, {"num_prompts": 1}) == []


def test_gateable_metrics_are_the_ones_a_run_produces():
    names = gateable_metrics()
    assert {"total_token_throughput", "mean_tpot_ms", "p99_ttft_ms", "failed", "completed", "duration"} <= set(names)
    assert "total_input_tokens" not in names and "max_concurrent_requests" not in names
    with pytest.raises(ValueError, match="'mean_tpt_ms' cannot be gated; gateable metrics: completed, duration"):
        metric_direction("mean_tpt_ms")



GATES = {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0, "failed": 0.0}
PARAMS = {"dataset": "random", "num_prompts": 10}
GOOD = {"completed": 10, "failed": 0, "total_token_throughput": 1000.0, "mean_tpot_ms": 10.0}


def entry(**metrics):
    return {"cases": {"w": {"workload": PARAMS, "history": [{"metrics": {**GOOD, **metrics}}]}}}


def judged(metrics=GOOD, data=None, update=False, error="", causes=(), current=None, evidence=()):
    read = BaselineRead(Path("bl/c.json"), data, error)
    pooled = vd.Pooled.of([metrics], [list(causes)])
    return vd.judge_case("sim/c/w", "w", pooled, ["HTTP 500 (x10)"], PARAMS, read, GATES, update, current, evidence)


def test_a_case_within_tolerance_passes_and_one_beyond_fails_naming_every_metric():
    ok = judged(data=entry())
    assert (ok.status, ok.failed) == ("ok", False) and len(ok.verdicts) == 3
    better = judged(data=entry(total_token_throughput=900.0))
    assert (better.status, better.failed) == ("improved", False)
    bad = judged(data=entry(total_token_throughput=2000.0, mean_tpot_ms=5.0))
    assert bad.status == "regressed" and bad.failed
    assert bad.message.splitlines()[0] == "sim/c/w regressed against bl/c.json:"
    assert "total_token_throughput: baseline 2000, current 1000, change -50.0%" in bad.message
    assert "mean_tpot_ms: baseline 5, current 10, change +100.0%" in bad.message


def test_a_distorted_measurement_is_inconclusive_never_regressed():
    cause = "the simulated engine ran 31% behind its schedule (the machine is busy)"
    bad = judged(data=entry(total_token_throughput=2000.0), causes=[cause])
    assert (bad.status, bad.verdicts) == (vd.INCONCLUSIVE, ())
    assert bad.message == (f"inconclusive: {cause}; nothing was compared (run it on a quiet machine, or "
                           f"--inconclusive=skip)")
    assert not bad.settled
    up = judged(data=entry(), update=True, causes=[cause])
    assert up.status == vd.INCONCLUSIVE and "; no baseline was recorded (run it on a quiet machine" in up.message


def test_distortions_name_their_cause_past_documented_limits():
    assert vd.distortions({}) == []
    assert vd.distortions({"sim_slip_pct": vd.SIM_SLIP_LIMIT_PCT, "client": {"cpu_pct": 50.0, "loop_lag_p99_ms": 1.0},
                           "gpu_throttle_reasons": ["sw_power_cap"]}) == []
    causes = vd.distortions({"sim_slip_pct": 31.2, "client": {"cpu_pct": 97.0, "loop_lag_p99_ms": 80.0},
                             "gpu_throttle_reasons": ["sw_power_cap", "hw_thermal"]})
    assert causes[0] == "the simulated engine ran 31% behind its schedule (the machine is busy)"
    assert "97% of a CPU core" in causes[1] and "80 ms late" in causes[2]
    assert causes[3] == "the GPUs were throttled (hw_thermal)"


def test_pooled_runs_leave_distorted_ones_out():
    runs = [{"m": 10.0, "completed": 5}, {"m": 30.0, "completed": 5}, {"m": 12.0, "completed": 5}]
    pooled = vd.Pooled.of(runs, [[], ["busy"], []])
    assert pooled.metrics == {"m": 11.0, "completed": 5} and pooled.left_out == 1 and not pooled.distortion
    none = vd.Pooled.of(runs, [["busy"], ["busy", "lag"], ["busy"]])
    assert none.distortion == "3 of 3 runs distorted: busy; lag" and none.runs == () and none.metrics["m"] == 12.0
    spread = vd.run_spread(runs)
    assert spread["m"]["median"] == 12.0 and spread["m"]["min"] == 10.0 and spread["m"]["max"] == 30.0
    assert spread["m"]["cv_pct"] == pytest.approx(63.6, abs=0.1) and spread["completed"]["cv_pct"] == 0.0


def test_the_reference_is_the_history_median_and_the_band_its_widest_spread():
    history = [{"metrics": {"m": v}, "runs": [{"m": v}, {"m": v * 1.02}]} for v in (100.0, 104.0, 98.0, 101.0, 99.0)]
    assert vd.reference(history, "m") == (100.0, 5)
    assert vd.noise_band_pct(history, "m") == pytest.approx(2.0)  # 98 and 104 left out: (101 - 99) / 100
    assert vd.noise_band_pct(history[:3], "m") == pytest.approx(6.0)  # (104 - 98) / 100: three keep their extremes
    assert vd.noise_band_pct(history, "m", [{"m": 80.0}, {"m": 100.0}]) == pytest.approx(22.2, abs=0.1)
    assert vd.reference([], "m") == (None, 0) and vd.noise_band_pct([], "m") == 0.0
    one_bad = history[:4] + [{"metrics": {"m": 70.0}}]  # a slow result recorded once does not open the gate
    assert vd.reference(one_bad, "m")[0] == 100.0 and vd.noise_band_pct(one_bad, "m") == pytest.approx(3.0)
    assert vd.noise_band_pct([{"metrics": {"m": float("inf")}}, {"metrics": {"m": 1.0}}], "m") == 0.0


def test_failures_are_never_voted_away_by_the_median():
    runs = [{"m": 1.0, "failed": 0, "completed": 10}, {"m": 1.0, "failed": 50, "completed": 10},
            {"m": 1.0, "failed": 0, "completed": 10}]
    assert vd.Pooled.of(runs, [[], ["busy"], []]).metrics["failed"] == 50  # a distorted run's failures count too


def test_runs_noisier_than_the_history_are_run_again_before_passing():
    history = [{"metrics": {**GOOD}, "runs": [GOOD, GOOD, GOOD]}]
    data = {"cases": {"w": {"workload": PARAMS, "history": history}}}
    read = BaselineRead(Path("bl/c.json"), data)
    runs = [{**GOOD, "total_token_throughput": v} for v in (1000.0, 800.0, 780.0)]  # median -20%, spread 27%
    j = vd.judge_case("sim/c/w", "w", vd.Pooled.of(runs, [[], [], []]), [], PARAMS, read, GATES, False)
    assert j.status == vd.OK and j.noisy == ("total_token_throughput",) and not j.settled
    more = runs + [{**GOOD, "total_token_throughput": v} for v in (790.0, 800.0)]  # two confirming runs
    j = vd.judge_case("sim/c/w", "w", vd.Pooled.of(more, [[]] * 5), [], PARAMS, read, GATES, False)
    assert j.status == vd.REGRESSED and j.noisy == ()  # trimmed spread of five: 790-800, the regression shows


def test_only_the_last_k_results_make_the_reference():
    history = [{"metrics": {**GOOD, "total_token_throughput": v}} for v in (2000.0, 2000.0, 2000.0, 1000.0)]
    data = {"cases": {"w": {"workload": PARAMS, "history": history}}}
    read = BaselineRead(Path("bl/c.json"), data)
    pooled = vd.Pooled.of([GOOD], [[]])
    assert vd.judge_case("sim/c/w", "w", pooled, [], PARAMS, read, GATES, False).status == vd.REGRESSED
    assert vd.judge_case("sim/c/w", "w", pooled, [], PARAMS, read, GATES, False, history_limit=1).status == vd.OK


def test_a_noisy_history_widens_the_tolerance_and_the_verdict_says_so():
    history = [{"metrics": {**GOOD, "total_token_throughput": v}} for v in (1000.0, 1100.0, 950.0)]
    data = {"cases": {"w": {"workload": PARAMS, "history": history}}}
    j = judged(metrics={**GOOD, "total_token_throughput": 920.0}, data=data)  # -8%, band 15%
    v = next(v for v in j.verdicts if v.metric == "total_token_throughput")
    assert (j.status, v.baseline, v.tolerance_from) == (vd.OK, 1000.0, "noise band")
    assert v.tolerance_pct == pytest.approx(15.0)
    j = judged(metrics={**GOOD, "total_token_throughput": 800.0}, data=data)  # -20%
    assert j.status == vd.REGRESSED and "(median of 3)" in j.message


def test_what_changed_since_the_baseline_is_named_and_the_case_still_compared():
    record = {"metrics": GOOD, "command": ["vllm", "serve", "m", "-tp", "8"],
              "provenance": {"engine_version": "0.13.0", "gpu_name": "NVIDIA H200", "driver_version": "570.1",
                             "env": {"A": "1"}}}
    data = {"cases": {"w": {"workload": PARAMS, "history": [record]}}}
    current = {"command": ["vllm", "serve", "m", "-tp", "8", "--enable-x"],
               "provenance": {"engine_version": "0.14.0", "gpu_name": "NVIDIA H200", "driver_version": "575.2",
                              "env": {"A": "2"}}}
    ok = judged(data=data, current=current)
    assert ok.status == vd.OK and ok.changes == (
        "engine version 0.13.0 -> 0.14.0", "GPU driver 570.1 -> 575.2", "command line (+--enable-x)",
        "environment (A)")
    bad = judged(metrics={**GOOD, "total_token_throughput": 500.0}, data=data, current=current,
                 evidence=["preemptions: baseline 0, current 412"])
    assert "\nchanged since the baseline: engine version 0.13.0 -> 0.14.0; " in bad.message
    assert bad.message.endswith("\nthe engine says: preemptions: baseline 0, current 412")


def test_nothing_completed_no_baseline_other_workload_unreadable_file():
    none = judged(metrics={"completed": 0, "failed": 10})
    assert none.message == "no request of sim/c/w completed (10 failed): HTTP 500 (x10)"
    missing = judged(data=None)
    assert missing.status == "missing"
    assert missing.message == "no baseline for sim/c/w in bl/c.json; record one with --update-baselines"
    other = {"cases": {"w": {"workload": {**PARAMS, "num_prompts": 20}, "metrics": GOOD}}}
    assert "num_prompts: baseline 20, this run 10" in judged(data=other).message
    unreadable = judged(error="baseline file bl/c.json is not valid JSON (...); fix or delete it")
    assert unreadable.failed and unreadable.message.startswith("baseline file bl/c.json is not valid JSON")


def test_an_update_shows_old_to_new_and_never_fails_on_figures():
    up = judged(data=entry(total_token_throughput=2000.0), update=True)
    assert up.status == "updated" and not up.failed
    assert "total_token_throughput: 2000 -> 1000 (-50.0%) updated" in [v.line() for v in up.verdicts]
    assert judged(update=True).verdicts[0].baseline is None  # a first recording


def test_expected_failure_messages():
    assert vd.failed_as_expected("vllm/dcp8", "no LSE", "\n  boom: out of memory\nmore") == \
        "vllm/dcp8 failed as expected (no LSE); seen: boom: out of memory"
    assert vd.unexpectedly_working_note("vllm/dcp8", "no LSE").startswith("vllm/dcp8 started although it is expected")
    assert vd.version_matches("0.13.0", "0.13.0+cu129") and not vd.version_matches("0.13.0", "0.13.1")


def test_the_expected_failure_policy():
    assert vd.expected_failure_policy("vllm/tp8", "", "") == ("go", "")
    assert vd.expected_failure_policy("vllm/tp8", "", "boom") == ("fail", "boom")
    kind, message = vd.expected_failure_policy("vllm/dcp8", "no LSE", "engine exited with code 1\nlog...")
    assert (kind, message) == ("xfail", "vllm/dcp8 failed as expected (no LSE); seen: engine exited with code 1")
    kind, message = vd.expected_failure_policy("vllm/dcp8", "no LSE", "")
    assert kind == "unexpectedly working" and message == "ran although vllm/dcp8 is expected to fail (no LSE)"
