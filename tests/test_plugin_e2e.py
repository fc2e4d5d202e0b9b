"""End-to-end runs of the plugin on the simulated engine (pytester, subprocess).

Each run boots real sim servers on 127.0.0.1. Assertions are about behaviour
(verdicts, files, processes); the only figures compared against each other
differ by a factor (slowdown 10x) far beyond any noise tolerance used here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

# Wide enough that a loaded CI machine cannot fail the pass run, while a
# 10x slowdown (-90% throughput, +900% TPOT) is far beyond it.
TOL = "total_token_throughput:80,mean_tpot_ms:300"
# Gates that do not depend on timing at all, for tests about other behaviour.
NO_TIMING = "total_token_throughput:off,mean_tpot_ms:off,failed:0"


def suite_text(model: str, prompts: int = 24) -> str:
    return f'''
model = "{model}"
gpus = "h200x8"

[workloads.tiny-random]
dataset = "random"
input_len = 64
output_len = 12
num_prompts = {prompts}

[workloads.tiny-sharegpt]
dataset = "sharegpt"
num_prompts = {prompts}
output_len = 12

[[configs]]
engine = "sim"
name = "vllm-tp8"
profile = "vllm-tp8"

[[configs]]
engine = "sim"
name = "sglang-dpattn"
profile = "sglang-tp8-dp8-dpattn"
'''


def sim_processes(model: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "pytest_llmperf.sim" in cmd and model in cmd:
            out.append(p)
    return out


def running_requests(port: str) -> int:
    from pytest_llmperf.http import ControlClient, HttpFailure

    try:
        with ControlClient(f"http://127.0.0.1:{port}") as client:
            text = client.get("/metrics", timeout_s=2).body.decode()
    except HttpFailure:
        return 0
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name == "vllm:num_requests_running":
            return int(sum(sample.value for sample in family.samples))
    raise AssertionError(f"no vllm:num_requests_running in /metrics:\n{text}")


@pytest.fixture
def model():
    return f"test/model-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def project(pytester, model):
    pytester.makefile(".toml", suite=suite_text(model))
    pytester.makepyfile(test_own="def test_own():\n    assert True\n")
    yield pytester
    assert sim_processes(model) == [], "a sim engine outlived the run"


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--suite=suite.toml", *args, timeout=300)


def test_record_then_pass_then_detect_slowdown(project, model):
    bdir = project.path / "bl"
    rec = run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "--report-json=rec.json", "-v")
    rec.assert_outcomes(passed=4)
    rec.stdout.fnmatch_lines(["*llmperf::test_llmperf?sim/vllm-tp8/tiny-random? PASSED*", "*llmperf::test_llmperf?sim/sglang-dpattn/tiny-random? PASSED*", "*llmperf summary*",
                              "*baseline updated: sim/vllm-tp8/tiny-random*", "*total_token_throughput: none -> *updated*"])
    files = sorted(p.relative_to(bdir).as_posix() for p in bdir.rglob("*.json"))
    slug = model.replace("/", "__")
    assert files == [f"h200x8/{slug}/sim/sglang-dpattn.json", f"h200x8/{slug}/sim/vllm-tp8.json"]
    data = json.loads((bdir / files[1]).read_text())
    case = data["cases"]["tiny-random"]
    assert case["workload"]["input_len"] == 64 and case["workload"]["num_prompts"] == 24
    (record,) = case["history"]
    assert data["schema"] == 2
    assert record["metrics"]["completed"] == 24 and record["metrics"]["total_input_tokens"] == 24 * 64
    assert record["metrics"]["total_output_tokens"] == 24 * 12
    assert record["command"][:4] == ["python", "-m", "pytest_llmperf.sim", "serve"] and "{port}" in record["command"]
    assert record["provenance"]["gpus"] == "h200x8" and record["provenance"]["engine_version"].endswith("+sim")
    assert record["provenance"]["gpu_name"] == "NVIDIA H200" and record["provenance"]["driver_version"]

    ok = run(project, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "--report-json=ok.json")
    ok.assert_outcomes(passed=4)
    ok.stdout.fnmatch_lines(["*sim/vllm-tp8*", "*workload*total tok/s*change*mean TPOT ms*status*", "*tiny-random*ok*"])
    report = json.loads((project.path / "ok.json").read_text())
    assert {c["outcome"] for c in report["cases"]} == {"passed"}
    first = report["cases"][0]
    assert first["id"] == "sim/vllm-tp8/tiny-random"
    assert {"total_token_throughput", "mean_tpot_ms", "p99_ttft_ms", "median_itl_ms", "mean_e2el_ms", "duration"} <= set(first["metrics"])
    assert {v["metric"]: v["status"] for v in first["verdicts"]}["mean_tpot_ms"] == "ok"
    assert report["environment"]["gpus"] == "h200x8" and len(report["environment"]["engines_booted"]) == 2

    slow = run(project, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "--sim-slowdown=10")
    slow.assert_outcomes(failed=4)
    slow.stdout.fnmatch_lines([
        "*sim/vllm-tp8/tiny-random regressed against*",
        "*mean_tpot_ms: baseline *, current *, change +*% (tolerance 300%, lower is better) REGRESSED",
        "*total_token_throughput: baseline *, current *, change -*% (tolerance 80%, higher is better) REGRESSED",
    ])


def test_missing_entry_fails_exactly_that_item(project):
    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines").assert_outcomes(passed=4)
    path = next(bdir.rglob("vllm-tp8.json"))
    data = json.loads(path.read_text())
    del data["cases"]["tiny-sharegpt"]
    path.write_text(json.dumps(data))
    result = run(project, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={NO_TIMING}")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*no baseline for sim/vllm-tp8/tiny-sharegpt in *vllm-tp8.json; record one with --update-baselines*",
                                 "*FAILED llmperf::test_llmperf[[]sim/vllm-tp8/tiny-sharegpt[]]*"])
    assert "During handling" not in result.stdout.str()
    # recording just that case puts it back and leaves every other entry as it was
    other = next(bdir.rglob("sglang-dpattn.json")).read_text()
    kept = data["cases"]["tiny-random"]
    rec = run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "vllm and sharegpt")
    rec.assert_outcomes(passed=1, deselected=3)
    data = json.loads(path.read_text())
    assert sorted(data["cases"]) == ["tiny-random", "tiny-sharegpt"] and data["cases"]["tiny-random"] == kept
    assert next(bdir.rglob("sglang-dpattn.json")).read_text() == other


def test_changed_workload_is_not_compared(project):
    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines").assert_outcomes(passed=4)
    result = run(project, "--engine=sim", f"--baseline-dir={bdir}", "--num-prompts=8", "-k", "vllm and random")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines(["*was measured with another workload*", "*num_prompts: baseline 24, this run 8*"])


def test_without_engine_only_own_tests_run(project):
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "llmperf summary" not in result.stdout.str()


def test_with_engine_only_perf_cases_run(project):
    result = run(project, "--engine=sim", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["llmperf::test_llmperf[[]sim/vllm-tp8/tiny-random[]]",
                                 "llmperf::test_llmperf[[]sim/sglang-dpattn/tiny-sharegpt[]]", "4 tests collected*"])
    assert "test_own" not in result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--engine=tgi"], "--engine: unknown engine 'tgi'; valid choices: sim, vllm, sglang, trtllm"),
    (["--engine=vllm"], "suite.toml has no configurations for engine(s) vllm; it has: sim"),
    (["--engine=external"], "--engine=external needs --endpoint URL"),
    (["--engine=sim", "--endpoint=http://127.0.0.1:9"], "--endpoint applies to --engine=external only"),
    (["--engine=sim", "--gpus=h200"], "--gpus: malformed GPU spec 'h200'"),
    (["--engine=sim", "--num-prompts=-3"], "--num-prompts: expected a positive integer, got '-3'"),
    (["--engine=sim", "-n", "2"], "performance cases under pytest-xdist need --dist loadgroup (not load)"),
    (["--engine=sim", "-n", "2", "--dist", "loadgroup", "--dry-run"], "--dry-run prints the plan without pytest-xdist"),
    (["--engine=sim", "--gate=mean_tpt_ms:5"], "metric 'mean_tpt_ms' cannot be gated; gateable metrics: completed"),
    (["--engine=sim", "--suite=bad-profile.toml"], "sim configuration sim/vllm-tp8: unknown sim profile 'no-such-profile'"),
])
def test_usage_errors(project, model, args, message):
    project.makefile(".toml", **{"bad-profile": suite_text(model).replace('profile = "vllm-tp8"', 'profile = "no-such-profile"')})
    result = run(project, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_wrong_node_errors_every_item_and_boots_nothing(project):
    result = run(project, "--engine=sim", "--gpus=h100x8", "--report-json=r.json")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*node does not fit h100x8 (simulated node hgx-h200x8.json)*",
                                 "*GPU 0 is 'NVIDIA H200', expected 'NVIDIA H100 80GB HBM3'*"])
    report = json.loads((project.path / "r.json").read_text())
    assert report["environment"]["engines_booted"] == []
    assert {c["outcome"] for c in report["cases"]} == {"error"}


def test_engine_that_dies_fails_its_items_with_log_tail(project, model):
    project.makefile(".toml", broken=suite_text(model).replace('profile = "vllm-tp8"', 'profile = "vllm-tp8"\nargs = ["--no-such-flag"]'))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--suite=broken.toml", "--engine=sim",
                                          f"--baseline-dir={project.path / 'bl'}", "--update-baselines", timeout=300)
    result.assert_outcomes(errors=2, passed=2)
    result.stdout.fnmatch_lines(["*engine exited with code * before it was ready; last lines of *sim-vllm-tp8.log*",
                                 "*unrecognized arguments: --no-such-flag*"])


def start_long_case(project, model, **popen):
    """A pytest running one long case of the sim, returned once the engine is loaded; and the engine's port."""
    project.makefile(".toml", long=suite_text(model, prompts=4000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--suite=long.toml", "--engine=sim",
         f"--baseline-dir={project.path / 'bl'}", "--update-baselines", "-k", "vllm and random"],
        cwd=project.path, **popen,
    )
    deadline = time.monotonic() + 120
    while not sim_processes(model) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sim_processes(model), "the engine never started"
    cmd = sim_processes(model)[0].cmdline()
    port = cmd[cmd.index("--port") + 1]
    while running_requests(port) == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert running_requests(port) > 0, "the load never reached the engine"
    return proc


def test_sigterm_mid_run_tears_the_engine_down(project, model):
    proc = start_long_case(project, model, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc.send_signal(signal.SIGTERM)  # mid-load
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert b"KeyboardInterrupt" in out or b"Interrupted" in out
    assert sim_processes(model) == []


def test_explicit_test_paths_do_not_run_with_engine(project):
    result = run(project, "--engine=sim", "--collect-only", "-q", "test_own.py")
    result.stdout.fnmatch_lines(["4/5 tests collected (1 deselected)*"])
    assert "test_own.py::test_own" not in result.stdout.str()


def test_report_holds_only_selected_cases_and_collect_only_writes_none(project):
    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "random", "--report-json=r.json"
        ).assert_outcomes(passed=2, deselected=2)
    report = json.loads((project.path / "r.json").read_text())
    assert [c["id"] for c in report["cases"]] == ["sim/vllm-tp8/tiny-random", "sim/sglang-dpattn/tiny-random"]
    run(project, "--engine=sim", "--collect-only", "--report-json=c.json")
    assert not (project.path / "c.json").exists()


def test_improvement_passes_flagged_and_file_tolerances_override(project):
    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "--sim-slowdown=10", "-k", "vllm and random"
        ).assert_outcomes(passed=1, deselected=3)
    better = run(project, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "-k", "vllm and random")
    better.assert_outcomes(passed=1, deselected=3)
    better.stdout.fnmatch_lines(["tiny-random *improved"])
    # a 10x slowdown against this baseline fails by default, passes under a file-wide override
    path = next(bdir.rglob("vllm-tp8.json"))
    data = json.loads(path.read_text())
    # the slow recording stays in the history: its median and noise band would hide a 10x slowdown, so the
    # history restarts from the new result (a history of one)
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "--baseline-history=1", "-k",
        "vllm and random").assert_outcomes(passed=1, deselected=3)
    assert len(json.loads(path.read_text())["cases"]["tiny-random"]["history"]) == 1
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--sim-slowdown=10", "-k", "vllm and random").assert_outcomes(failed=1, deselected=3)
    data = json.loads(path.read_text())
    data["tolerances_pct"] = {"total_token_throughput": 99, "mean_tpot_ms": 100000}
    path.write_text(json.dumps(data))
    tolerant = run(project, "--engine=sim", f"--baseline-dir={bdir}", "--sim-slowdown=10", "-k", "vllm and random")
    tolerant.assert_outcomes(passed=1, deselected=3)


def test_measurement_options_reach_the_results(pytester, model):
    pytester.makefile(".toml", suite=f'''
model = "{model}"
gpus = "h200x8"

[workloads.paced]
dataset = "random"
input_len = 32
output_len = 6
num_prompts = 12
request_rate = 40
burstiness = 2
warmup_requests = 2

[workloads.chat-sharegpt]
preset = "sharegpt"
num_prompts = 8
output_len = 6
endpoint = "completions"

[[configs]]
engine = "sim"
name = "vllm-tp8"
profile = "vllm-tp8"
''')
    result = run(pytester, "--engine=sim", f"--gate={NO_TIMING},request_goodput:50", "--update-baselines",
                 "--goodput=ttft:60000 tpot:60000", "--percentiles=50,90", "--results-dir=res", "--save-requests",
                 "--report-json=r.json", "--client-processes=2")
    result.assert_outcomes(passed=2)
    assert sim_processes(model) == []
    report = json.loads((pytester.path / "r.json").read_text())
    paced, sharegpt = report["cases"]
    m = paced["metrics"]
    assert m["completed"] == 12 and m["warmup_completed"] == 2 and m["total_input_tokens"] == 12 * 32
    assert m["request_goodput"] == pytest.approx(12 / m["duration"])  # limits no request can miss
    assert {"p50_ttft_ms", "p90_tpot_ms", "mean_ttft_from_schedule_ms", "p90_send_delay_ms"} <= set(m)
    assert "p99_ttft_ms" not in m
    assert m["prompt_tokens_mismatch_pct"] == 0.0  # the sim counts prompts as the client built them
    starts = [r["scheduled_s"] for r in paced["requests"]]
    assert len(paced["requests"]) == 12 and starts == sorted(starts) and starts[-1] > 0
    assert "mean_ttft_from_schedule_ms" not in sharegpt["metrics"]  # infinite rate: no schedule to measure from
    saved = json.loads((pytester.path / "res" / "sim-vllm-tp8-paced.json").read_text())
    assert saved["request_rate"] == 40 and saved["burstiness"] == 2 and saved["num_prompts"] == 12
    assert saved["completed"] == 12 and len(saved["ttfts"]) == 12 and len(saved["itls"][0]) == 5
    assert saved["total_token_throughput"] == m["total_token_throughput"]
    completions = json.loads((pytester.path / "res" / "sim-vllm-tp8-chat-sharegpt.json").read_text())
    assert completions["endpoint_type"] == "openai" and completions["completed"] == 8
    baseline = json.loads(next((pytester.path / "baselines").rglob("vllm-tp8.json")).read_text())
    assert baseline["cases"]["paced"]["workload"]["request_rate"] == 40
    assert baseline["cases"]["paced"]["workload"]["warmup_requests"] == 2


def test_a_bad_tokenizer_file_is_a_usage_error_before_anything_boots(project, model):
    bad = project.path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    result = run(project, "--engine=sim", f"--tokenizer={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokenizer: *tokenizer.json is not a tokenizer.json the tokenizers library can read*"])
    assert sim_processes(model) == []


def test_kill_9_of_pytest_mid_case_leaves_no_engine_behind(project, model):
    proc = start_long_case(project, model, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = time.monotonic()
        while sim_processes(model) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        assert sim_processes(model) == [], "the engine outlived a kill -9 of its pytest by 5 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in sim_processes(model):
            p.kill()


def test_a_corrupt_baseline_fails_its_cases_in_one_line(project):
    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "vllm").assert_outcomes(
        passed=2, deselected=2)
    path = next(bdir.rglob("vllm-tp8.json"))
    path.write_text('{"cases": {')
    for extra in ((), ("--update-baselines",)):
        result = run(project, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={NO_TIMING}", "-k", "vllm", *extra)
        result.assert_outcomes(failed=2, deselected=2)
        result.stdout.fnmatch_lines([f"*baseline file {path} is not valid JSON (*); fix or delete it*"])
        assert "Traceback" not in result.stdout.str() and "Error:" not in result.stdout.str()
        assert path.read_text() == '{"cases": {'  # never overwritten


def test_baselines_that_cannot_be_written_stop_the_run_before_anything_boots(project, model):
    blocker = project.path / "not-a-dir"
    blocker.write_text("x")
    result = run(project, "--engine=sim", f"--baseline-dir={blocker}", "--update-baselines")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--update-baselines: cannot write baselines under {blocker}/h200x8/" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
    assert sim_processes(model) == []


def test_an_update_leaves_only_baseline_files_in_the_tree(project):
    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines").assert_outcomes(passed=4)
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "random").assert_outcomes(
        passed=2, deselected=2)
    everything = sorted(p.name for p in bdir.rglob("*") if p.is_file())
    assert everything == ["sglang-dpattn.json", "vllm-tp8.json"]


# ----------------------------------------------------------------- verdicts a CI can trust
def one_config_suite(model: str, args: str = "", repeats: int = 1) -> str:
    return f'''
model = "{model}"
gpus = "h200x8"

[workloads.tiny]
dataset = "random"
input_len = 64
output_len = 12
num_prompts = 16
repeats = {repeats}

[[configs]]
engine = "sim"
name = "vllm-tp8"
profile = "vllm-tp8"
args = [{args}]
'''


def test_a_sim_behind_its_own_schedule_is_inconclusive_rerun_and_never_recorded(pytester, model):
    # The sim blocks its event loop 60 ms after every step: its timeline stretches whatever the machine.
    pytester.makefile(".toml", suite=one_config_suite(model, '"--stall-ms-per-step", "60"', repeats=2))
    bdir = pytester.path / "bl"
    result = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", "--confirm=1", "--report-json=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*inconclusive: 3 of 3 runs distorted: the simulated engine ran *% behind its schedule"
                                 " (the machine is busy); nothing was compared*", "*tiny *inconclusive*"])
    (case,) = json.loads((pytester.path / "r.json").read_text())["cases"]
    assert case["status"] == "inconclusive" and case["verdicts"] == []
    assert [r["confirming"] for r in case["runs"]] == [False, False, True]  # 2 repeats, then 1 confirming run
    assert all(r["apparatus"]["sim_slip_pct"] > 50 and r["distorted"] for r in case["runs"])
    assert case["apparatus"]["runs_distorted"] == 3
    skipped = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", "--confirm=0", "--inconclusive=skip", "-rs")
    skipped.assert_outcomes(skipped=1)
    update = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", "--confirm=0", "--update-baselines")
    update.assert_outcomes(failed=1)
    update.stdout.fnmatch_lines(["*inconclusive: *behind its schedule*; no baseline was recorded*"])
    assert not bdir.exists() or not list(bdir.rglob("*.json"))
    assert sim_processes(model) == []


def test_a_regression_is_confirmed_by_rerunning_and_every_run_is_reported(pytester, model):
    pytester.makefile(".toml", suite=one_config_suite(model))
    bdir = pytester.path / "bl"
    run(pytester, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines").assert_outcomes(passed=1)
    slow = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "--sim-slowdown=10",
               "--report-json=r.json")
    slow.assert_outcomes(failed=1)
    slow.stdout.fnmatch_lines(["*sim/vllm-tp8/tiny regressed against * (median of 3 runs):*",
                               "*sim/vllm-tp8/tiny: 2 confirming run(s); judged on its runs pooled: regressed*"])
    (case,) = json.loads((pytester.path / "r.json").read_text())["cases"]
    assert [r["confirming"] for r in case["runs"]] == [False, True, True] and case["confirm_runs"] == 2
    assert [r["cache_reset"] for r in case["runs"]] == ["/reset_prefix_cache"] * 3
    assert case["spread"]["mean_tpot_ms"]["n"] == 3
    fast = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "--report-json=ok.json")
    fast.assert_outcomes(passed=1)
    (case,) = json.loads((pytester.path / "ok.json").read_text())["cases"]
    assert len(case["runs"]) == 1 and case["confirm_runs"] == 0  # a passing verdict is not re-run


def test_an_old_schema_baseline_is_compared_then_rewritten_with_its_history(pytester, model):
    pytester.makefile(".toml", suite=suite_text(model))
    bdir = pytester.path / "bl"
    run(pytester, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "vllm").assert_outcomes(
        passed=2, deselected=2)
    path = next(bdir.rglob("vllm-tp8.json"))
    data = json.loads(path.read_text())
    old = {**data, "schema": 1, "cases": {}}  # the same figures, as schema 1 wrote them
    for name, entry in data["cases"].items():
        (record,) = entry["history"]
        old["cases"][name] = {"workload": entry["workload"], "metrics": record["metrics"],
                              "command": record["command"], "provenance": record["provenance"]}
    old["cases"]["retired"] = {"workload": {"num_prompts": 1}, "metrics": {"completed": 1}, "command": ["x"],
                               "provenance": {"date": "2026-01-01"}, "tolerances_pct": {"mean_tpot_ms": 7}}
    path.write_text(json.dumps(old))
    compared = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "-k", "vllm")
    compared.assert_outcomes(passed=2, deselected=2)
    assert json.loads(path.read_text()) == old  # reading never writes
    run(pytester, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "vllm").assert_outcomes(
        passed=2, deselected=2)
    new = json.loads(path.read_text())
    assert new["schema"] == 2
    for name in ("tiny-random", "tiny-sharegpt"):
        history = new["cases"][name]["history"]
        assert len(history) == 2 and history[0]["metrics"] == old["cases"][name]["metrics"]
        assert history[0]["command"] == old["cases"][name]["command"]
    assert new["cases"]["retired"] == {"workload": {"num_prompts": 1}, "tolerances_pct": {"mean_tpot_ms": 7},
                                       "history": [{"metrics": {"completed": 1}, "command": ["x"],
                                                    "provenance": {"date": "2026-01-01"}}]}
    judged = run(pytester, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "-k", "vllm",
                 "--report-json=r.json")
    judged.assert_outcomes(passed=2, deselected=2)
    verdicts = json.loads((pytester.path / "r.json").read_text())["cases"][0]["verdicts"]
    assert {v["history_n"] for v in verdicts} == {2}


def test_ci_gets_junit_properties_and_a_step_summary_with_the_regression_first(project, model, monkeypatch):
    import xml.etree.ElementTree as ET

    from markdown_it import MarkdownIt

    bdir = project.path / "bl"
    run(project, "--engine=sim", f"--baseline-dir={bdir}", "--update-baselines", "-k", "tiny-random").assert_outcomes(passed=2)
    # vLLM's recorded throughput made 10x what the sim does: that case regresses, SGLang's passes
    path = bdir / "h200x8" / model.replace("/", "__") / "sim" / "vllm-tp8.json"
    data = json.loads(path.read_text())
    for record in data["cases"]["tiny-random"]["history"]:
        record["metrics"]["total_token_throughput"] *= 10
        for one in record["runs"]:
            one["total_token_throughput"] *= 10
    path.write_text(json.dumps(data))
    step = project.path / "step.md"
    step.write_text("# an earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = run(project, "--engine=sim", f"--baseline-dir={bdir}", f"--gate={TOL}", "-k", "tiny-random",
                 "--confirm=0", "--junitxml=j.xml", "--report-md=summary.md")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*markdown summary written to *summary.md"])

    cases = {tc.get("name"): tc for tc in ET.parse(project.path / "j.xml").iter("testcase")}
    props = {name: {p.get("name"): p.get("value") for p in tc.iter("property")} for name, tc in cases.items()}
    bad = props["test_llmperf[sim/vllm-tp8/tiny-random]"]
    good = props["test_llmperf[sim/sglang-dpattn/tiny-random]"]
    assert bad["llmperf.status"] == "regressed" and good["llmperf.status"] == "ok"
    assert bad["total_token_throughput.status"] == "regressed" and float(bad["total_token_throughput.change_pct"]) < -80
    assert float(bad["total_token_throughput.baseline"]) > 5 * float(bad["total_token_throughput"]) > 0
    for each in (bad, good):
        for metric in ("total_token_throughput", "mean_tpot_ms", "failed"):
            assert {metric, f"{metric}.baseline", f"{metric}.change_pct", f"{metric}.tolerance_pct",
                    f"{metric}.status"} <= set(each)
        assert each["llmperf.engine_version"].endswith("+sim") and each["llmperf.baseline_file"].endswith(".json")
    failure = cases["test_llmperf[sim/vllm-tp8/tiny-random]"].find("failure")
    assert "regressed against" in failure.get("message") and "total_token_throughput: baseline" in failure.get("message")

    text = (project.path / "summary.md").read_text()
    assert step.read_text() == "# an earlier step\n" + text  # appended, not overwritten
    assert text.startswith("## ❌ pytest-llmperf: 1 regressed, 1 ok")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert sum(t.type == "table_open" for t in tokens) == 2
    assert text.index("### sim/vllm-tp8") < text.index("### sim/sglang-dpattn")  # the regression first
