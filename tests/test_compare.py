"""``python -m pytest_llmperf compare A B``: synthetic reports and baseline trees in process, then real reports of the
sim as a subprocess (real exit codes and stderr)."""

from __future__ import annotations

import json
import uuid

import pytest

from pytest_llmperf.__main__ import main
from sim_runs import CASES, SUITE, command, inconclusive, report_run, statuses
from synthetic_reports import MODEL, baseline_file, case, report, run, tree_path, write

VLLM, SGLANG = "sim/vllm-tp8/tiny", "sim/sglang-dpattn/tiny"


def cli(capsys, *args):
    code = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> dict[tuple[str, str], list[str]]:
    """The table of a text compare: (case, metric) -> [A, B, change, tolerance, verdict]."""
    table, current = {}, None
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("----")) + 1
    for line in lines[start:]:
        if not line.strip():
            break
        cells = line.split()
        if not line.startswith(" "):
            current, cells = cells[0], cells[1:]
        metric, _unit, *rest = cells
        tolerance = " ".join(rest[3:-1])
        table[(current, metric)] = [*rest[:3], tolerance, rest[-1]]
    return table


@pytest.fixture
def before(tmp_path):
    return write(tmp_path / "before.json", report([
        case(VLLM, [run(1, 1000.0, 20.0), run(2, 1010.0, 20.1), run(3, 990.0, 19.9)]),
        case(SGLANG, [run(1, 2000.0, 10.0)]),
    ]))


# ----------------------------------------------------------------- the table and the exit status
def test_a_report_against_itself_is_unchanged_everywhere(capsys, before):
    code, out, err = cli(capsys, before, before)
    assert code == 0 and err == ""
    table = rows(out)
    assert set(table) == {(c, m) for c in (VLLM, SGLANG) for m in ("total_token_throughput", "mean_tpot_ms", "failed")}
    assert {r[2] for r in table.values()} == {"+0.0%"} and {r[4] for r in table.values()} == {"ok"}
    assert table[(VLLM, "total_token_throughput")][:2] == ["1,000.0", "1,000.0"]
    assert "no regression in 2 cases" in out


def test_a_regression_exits_1_and_names_the_case_and_metrics(capsys, tmp_path, before):
    after = write(tmp_path / "after.json", report([
        case(VLLM, [run(1, 800.0, 25.0)]),
        case(SGLANG, [run(1, 2030.0, 9.0)]),
    ]))
    code, out, err = cli(capsys, before, after)
    assert code == 1 and err == ""
    table = rows(out)
    assert table[(VLLM, "total_token_throughput")] == ["1,000.0", "800.0", "-20.0%", "5%", "regressed"]
    assert table[(VLLM, "mean_tpot_ms")] == ["20.00", "25.00", "+25.0%", "5%", "regressed"]
    assert table[(SGLANG, "mean_tpot_ms")][2:] == ["-10.0%", "5%", "improved"]
    assert table[(SGLANG, "total_token_throughput")][2:] == ["+1.5%", "5%", "ok"]
    assert f"1 of 2 cases regressed: {VLLM} (total_token_throughput, mean_tpot_ms)" in out
    # the gate is the plugin's: --gate loosens it
    code, out, _ = cli(capsys, before, after, "--gate", "total_token_throughput:25,mean_tpot_ms:30")
    assert code == 0 and rows(out)[(VLLM, "mean_tpot_ms")][3:] == ["30%", "ok"]
    # and METRIC:off drops a metric from the table
    code, out, _ = cli(capsys, before, after, "--gate", "mean_tpot_ms:off,total_token_throughput:off")
    assert code == 0 and {m for _, m in rows(out)} == {"failed"}


def test_the_noise_band_of_either_side_widens_the_tolerance(capsys, tmp_path, before):
    # the after side's runs lie 20% apart: a -8% change is within that band
    noisy = write(tmp_path / "noisy.json", report([case(VLLM, [run(1, 830.0, 20.0), run(2, 920.0, 20.0),
                                                               run(3, 1030.0, 20.0)])]))
    code, out, _ = cli(capsys, before, noisy)
    assert code == 0
    assert rows(out)[(VLLM, "total_token_throughput")] == ["1,000.0", "920.0", "-8.0%", "21.7% (noise band)", "ok"]
    data = json.loads(cli(capsys, before, noisy, "--format", "json")[1])
    row = next(r for r in data["rows"] if r["metric"] == "total_token_throughput")
    assert row["tolerance_from"] == "noise band" and row["configured_pct"] == 5 and row["band_pct"] == pytest.approx(21.74, abs=0.01)


def test_failed_requests_from_none_is_a_regression_without_a_percentage(capsys, tmp_path, before):
    after = write(tmp_path / "after.json", report([case(VLLM, [run(1, 1000.0, 20.0, failed=3)])]))
    code, out, _ = cli(capsys, before, after)
    assert code == 1 and rows(out)[(VLLM, "failed")] == ["0", "3", "n/a", "0%", "regressed"]


def test_cases_on_one_side_only_are_listed_and_none_in_common_is_no_error(capsys, tmp_path, before):
    other = write(tmp_path / "other.json", report([case(VLLM, [run(1, 1000.0, 20.0)]),
                                                   case("sim/vllm-tp8/long", [run(1, 500.0, 30.0)])]))
    code, out, _ = cli(capsys, before, other)
    assert code == 0
    assert f"only in A (1): {SGLANG}" in out and "only in B (1): sim/vllm-tp8/long" in out
    disjoint = write(tmp_path / "disjoint.json", report([case("sim/vllm-tp8/long", [run(1, 500.0, 30.0)])]))
    code, out, err = cli(capsys, before, disjoint)
    assert code == 0 and err == ""
    assert "no cases in common: A has 2, B has 1; nothing was compared" in out and "----" not in out


def test_distorted_unmeasured_and_other_workloads_are_not_gated(capsys, tmp_path, before):
    after = write(tmp_path / "after.json", report([
        case(VLLM, [run(1, 500.0, 40.0, distorted=["the simulated engine ran 9% behind its schedule"])],
             status="inconclusive"),
        case(SGLANG, [], status="error", outcome="error"),
    ]))
    code, out, _ = cli(capsys, before, after)
    assert code == 0
    assert rows(out)[(VLLM, "total_token_throughput")] == ["1,000.0", "500.0", "-50.0%", "5%", "inconclusive"]
    assert f"inconclusive (not gated): {VLLM}: B: the simulated engine ran 9% behind its schedule" in out
    assert f"not compared: {SGLANG}: B: not measured (error)" in out
    other = write(tmp_path / "other.json", report([case(VLLM, [run(1, 500.0, 40.0)],
                                                        workload={"dataset": "random", "num_prompts": 8})]))
    code, out, _ = cli(capsys, before, other)
    assert code == 0 and "----" not in out
    assert f"not compared: {VLLM}: measured with another workload (num_prompts: A 24, B 8)" in out


def test_a_gated_metric_one_side_lacks_is_shown_missing_and_not_gated(capsys, tmp_path, before):
    after = write(tmp_path / "after.json", report([case(VLLM, [run(1, 1000.0, 20.0, p99_ttft_ms=150.0)])]))
    code, out, _ = cli(capsys, before, after, "--gate", "p99_ttft_ms:10")
    assert code == 0
    assert rows(out)[(VLLM, "p99_ttft_ms")] == ["-", "150.0", "n/a", "10%", "missing"]
    assert f"gated metrics not on both sides (not gated): {VLLM} p99_ttft_ms" in out


# ----------------------------------------------------------------- baseline trees
@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "baselines"
    write(tree_path(root, "sim", "vllm-tp8"), baseline_file(
        "sim", "vllm-tp8", {"tiny": [(1300.0, 20.0), (1000.0, 20.0), (1020.0, 20.0), (980.0, 20.0)]},
        tolerances={"total_token_throughput": 3}, case_tolerances={"tiny": {"mean_tpot_ms": 8}}))
    write(tree_path(root, "sim", "sglang-dpattn"), baseline_file("sim", "sglang-dpattn", {"tiny": [(2000.0, 10.0)],
                                                                                           "old": []}))
    return root


def test_a_tree_is_the_reference_over_its_history_with_its_own_tolerances(capsys, tmp_path, tree, before):
    code, out, _ = cli(capsys, tree / "h200x8", before)
    assert code == 0, out
    assert out.startswith(f"A (before): {tree / 'h200x8'} (baseline tree, 3 cases, h200x8, {MODEL})")
    table = rows(out)
    # the median of the last 5 (1300, 1000, 1020, 980) is 1010; their band, trimmed of the extremes, 2%: the file's 3%
    assert table[(VLLM, "total_token_throughput")] == ["1,010.0", "1,000.0", "-1.0%", "3%", "ok"]
    assert table[(VLLM, "mean_tpot_ms")][3] == "8%"  # the case's own tolerance over the default 5%
    assert "only in A (1): sim/sglang-dpattn/old" in out
    assert list(table)[0][0] == VLLM  # in the report's order
    # only the last K results count: the last two (1020, 980) make 1000, 4.0% apart
    code, out, _ = cli(capsys, tree, before, "--baseline-history", "2")
    assert rows(out)[(VLLM, "total_token_throughput")] == ["1,000.0", "1,000.0", "+0.0%", "4% (noise band)", "ok"]
    # the tree after, the report before: the file's tolerances do not apply (they are the reference's)
    code, out, _ = cli(capsys, before, tree, "--baseline-history", "1")
    assert code == 0 and rows(out)[(VLLM, "mean_tpot_ms")][3] == "5%"
    assert rows(out)[(VLLM, "total_token_throughput")][:3] == ["1,000.0", "980.0", "-2.0%"]


def test_a_single_baseline_file_and_two_trees_compare(capsys, tmp_path, tree):
    slower = tmp_path / "slower"
    write(tree_path(slower, "sim", "vllm-tp8"), baseline_file("sim", "vllm-tp8", {"tiny": [(700.0, 30.0)]}))
    code, out, _ = cli(capsys, tree, slower)
    assert code == 1
    assert rows(out)[(VLLM, "total_token_throughput")][2:] == ["-30.7%", "3%", "regressed"]
    old = write(tmp_path / "old.json", report([case("sim/sglang-dpattn/old", [run(1, 10.0, 1.0)])]))
    code, out, _ = cli(capsys, tree, old)
    assert code == 0 and "not compared: sim/sglang-dpattn/old: A: no recorded result" in out
    code, out, _ = cli(capsys, tree_path(tree, "sim", "vllm-tp8"), tree_path(tree, "sim", "vllm-tp8"))
    assert code == 0 and {r[2] for r in rows(out).values()} == {"+0.0%"}


def test_markdown_and_json_formats(capsys, tmp_path, before):
    from markdown_it import MarkdownIt

    after = write(tmp_path / "after.json", report([case(VLLM, [run(1, 800.0, 20.0)])]))
    code, out, _ = cli(capsys, before, after, "--format", "markdown")
    assert code == 1 and out.startswith("## pytest-llmperf compare: 1 regressed")
    tokens = MarkdownIt("commonmark").enable("table").parse(out)
    assert sum(t.type == "tr_open" for t in tokens) == 1 + 3
    assert "| sim/vllm-tp8/tiny | total\\_token\\_throughput (tok/s) | 1,000.0 | 800.0 | -20.0% | 5% | **regressed** |" in out
    code, out, _ = cli(capsys, before, after, "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["regressed"] == {VLLM: ["total_token_throughput"]} and data["ok"] is False
    assert data["only_in_a"] == [SGLANG] and data["statuses"]["regressed"] == 1
    assert {r["metric"]: r["status"] for r in data["rows"]} == {"total_token_throughput": "regressed",
                                                               "mean_tpot_ms": "ok", "failed": "ok"}


# ----------------------------------------------------------------- bad input: exit 2, one line naming the file
BAD_INPUTS = [
    ("missing.json", None, "missing.json: no such file or directory"),
    ("text.json", "not json at all", "text.json: not JSON (Expecting value: line 1 column 1 (char 0))"),
    ("list.json", [1, 2], "list.json: neither a JSON report (--report-json) nor a baseline file or tree"),
    ("other.json", {"name": "x"}, "other.json: neither a JSON report (--report-json) nor a baseline file or tree"),
    ("cases.json", {"cases": [{"no": "id"}], "environment": {}}, "cases.json: cases[0]: expected an object with an \"id\""),
    ("newer.json", {"schema": "pytest-llmperf/report/9", "cases": [], "environment": {}},
     "newer.json: report schema pytest-llmperf/report/9 is newer than this version reads; upgrade pytest-llmperf"),
    ("empty-dir", "DIR", "empty-dir: no *.json files under it: neither a JSON report nor a baseline tree"),
    ("bad-tree", {"x.json": "{"}, "bad-tree/x.json is not valid JSON"),
    ("bad-tree", {"x.json": json.dumps({"cases": {"tiny": {"history": [{"metrics": {"a": "b"}}]}}})},
     "bad-tree/x.json: cases.tiny.history[0].metrics: expected an object of metric name -> number"),
    ("two-models", {"a/sim/c.json": json.dumps(baseline_file("sim", "c", {"tiny": [(1.0, 1.0)]})),
                    "b/sim/c.json": json.dumps(baseline_file("sim", "c", {"tiny": [(1.0, 1.0)]}))},
     "two-models: sim/c/tiny is in two baseline files"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[f"{b[0]}-{n}" for n, b in enumerate(BAD_INPUTS)])
def test_bad_input_exits_2_with_one_line_naming_the_file(capsys, tmp_path, monkeypatch, before, name, content, message):
    monkeypatch.chdir(tmp_path)
    if content == "DIR":
        (tmp_path / name).mkdir()
    elif isinstance(content, dict) and name.endswith(("tree", "models")):
        for rel, text in content.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
    elif content is not None:
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    for args in ((before, name), (name, before)):
        code, out, err = cli(capsys, *args)
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.parametrize("args, message", [
    (["--gate", "mean_tpt_ms:5"], "error: --gate: metric 'mean_tpt_ms' cannot be gated; gateable metrics: completed"),
    (["--gate", "mean_tpot_ms"], "error: --gate: expected METRIC:PERCENT (e.g. p99_ttft_ms:20), got 'mean_tpot_ms'"),
    (["--gate", "mean_tpot_ms:-1"], "error: --gate: tolerance of mean_tpot_ms must be >= 0, got '-1'"),
    (["--baseline-history", "0"], "error: --baseline-history: expected a positive integer, got '0'"),
])
def test_bad_options_exit_2_with_one_line(capsys, before, args, message):
    code, out, err = cli(capsys, before, before, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith(message), err


def test_usage_errors_exit_2(capsys, before):
    assert main(["compare", str(before)]) == 2
    assert main([]) == 2
    assert main(["compare", "--help"]) == 0
    out, err = capsys.readouterr()
    assert "Exit 0 when no gated metric regressed, 1 when one did, 2 on bad input" in " ".join(out.split())


# ----------------------------------------------------------------- end to end: real reports of the sim
@pytest.fixture(scope="module")
def sim_reports(tmp_path_factory):
    """A report of the suite on the sim, and one with every step 1.5x slower (one run per case, no baseline)."""
    from test_plugin_e2e import sim_processes

    model = f"test/model-{uuid.uuid4().hex[:8]}"
    cwd = tmp_path_factory.mktemp("compare-e2e")
    (cwd / "suite.toml").write_text(SUITE.format(model=model))
    for name, args in (("normal.json", ()), ("slow.json", ("--sim-slowdown=1.5",))):
        # no baseline: every case measured once, "missing" (or "inconclusive" on a machine too busy to measure)
        assert set(statuses(report_run(cwd, name, *args)).values()) <= {"missing", "inconclusive"}
    assert sim_processes(model) == [], "a sim engine outlived its run"
    return cwd


def test_e2e_a_report_against_itself_exits_0_unchanged(sim_reports):
    result = command(sim_reports, "compare", "normal.json", "normal.json")
    assert result.returncode == 0 and result.stderr == ""
    table = rows(result.stdout)
    assert {c for c, _ in table} == set(CASES) and len(table) == 4 * 3
    assert {r[2] for r in table.values()} == {"+0.0%"}
    distorted = inconclusive(sim_reports / "normal.json")
    assert {(c, r[4]) for (c, _), r in table.items()} == {(c, "inconclusive" if c in distorted else "ok") for c in CASES}


def test_e2e_a_slower_engine_exits_1_naming_the_regressed_metrics(sim_reports):
    result = command(sim_reports, "compare", "normal.json", "slow.json")
    table = rows(result.stdout)
    distorted = inconclusive(sim_reports / "normal.json") | inconclusive(sim_reports / "slow.json")
    if distorted == set(CASES):
        pytest.skip("every case was distorted in three attempts: this machine is too busy to measure anything")
    # 1.5x slower steps. vLLM's throughput drops by a third whatever the batching (-32% to -33% seen), and on
    # fixed-length requests its TPOT grows by about half (+43% to +50%): far beyond the 5% gate. TPOT over the
    # sharegpt lengths, and SGLang's with its requests spread over 8 ranks, depend on how the requests happened
    # to batch (+18% to +141% seen): those rows are not asserted on. Distorted cases are never gated.
    expected = {("sim/vllm-tp8/tiny-random", "total_token_throughput"), ("sim/vllm-tp8/tiny-random", "mean_tpot_ms"),
                ("sim/vllm-tp8/tiny-sharegpt", "total_token_throughput")}
    for (case_id, metric), row in table.items():
        if case_id in distorted:
            assert row[4] == "inconclusive", result.stdout
        elif (case_id, metric) in expected:
            assert row[4] == "regressed", result.stdout
        elif metric == "failed":
            assert row[4] == "ok", result.stdout
    regressed = {case: [m for (c, m), r in table.items() if c == case and r[4] == "regressed"]
                 for case in dict.fromkeys(c for (c, _), r in table.items() if r[4] == "regressed")}
    assert result.returncode == (1 if regressed else 0) and result.stderr == ""
    if "sim/vllm-tp8/tiny-random" not in distorted:
        assert result.returncode == 1
        assert ("of 4 cases regressed: sim/vllm-tp8/tiny-random (total_token_throughput, mean_tpot_ms)"
                in result.stdout)
    json_out = json.loads(command(sim_reports, "compare", "normal.json", "slow.json", "--format=json").stdout)
    assert json_out["regressed"] == regressed


def test_e2e_bad_input_is_one_line_on_stderr_and_no_traceback(sim_reports):
    result = command(sim_reports, "compare", "normal.json", "nope.json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: nope.json: no such file or directory\n"
    (sim_reports / "suite.json").write_text("[")
    result = command(sim_reports, "compare", "suite.json", "normal.json")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "suite.json: not JSON" in result.stderr


@pytest.mark.parametrize("where, value, message", [
    ("case", {"workload_params": [1]}, "case sim/vllm-tp8/tiny: workload_params: expected an object"),
    ("case", {"metrics": 3}, "case sim/vllm-tp8/tiny: metrics: expected an object"),
    ("run", {"distorted": "busy"},
     "case sim/vllm-tp8/tiny: every run must be an object with \"metrics\" as an object and \"distorted\" as a list"),
    ("environment", {"notes": "x"}, "environment.notes: expected a list"),
])
def test_a_report_of_the_wrong_shape_is_one_line_naming_the_file_and_key(capsys, tmp_path, before, where, value,
                                                                           message):
    data = json.loads(before.read_text())
    target = {"case": data["cases"][0], "run": data["cases"][0]["runs"][0], "environment": data["environment"]}[where]
    target.update(value)
    bad = write(tmp_path / "bad.json", data)
    code, out, err = cli(capsys, before, bad)
    assert code == 2 and out == "" and err.splitlines() == [f"error: {bad}: {message}"]


def test_a_report_is_gated_with_the_tolerances_the_plugin_applied_to_it_unless_gate_names_them():
    from pytest_llmperf.compare import compare_sides, side_of_report
    from pytest_llmperf.settings import DEFAULT_GATES, parse_gates

    def one(throughput, tolerances=None):
        case = {"id": "sim/c/w", "workload": "w", "status": "ok", "outcome": "passed",
                "metrics": {"total_token_throughput": throughput, "mean_tpot_ms": 10.0, "failed": 0, "completed": 4},
                "runs": [{"run": 1, "metrics": {"total_token_throughput": throughput, "mean_tpot_ms": 10.0,
                                                "failed": 0, "completed": 4}, "distorted": []}]}
        if tolerances:
            case["tolerances_pct"] = tolerances
        return {"schema": "pytest-llmperf/report/2", "cases": [case], "environment": {"gpus": "h200x8"}}

    before = side_of_report("a.json", one(1000.0, {"total_token_throughput": 10.0, "mean_tpot_ms": 10.0, "failed": 0}))
    after = side_of_report("b.json", one(920.0))
    status = {r.verdict.metric: (r.verdict.status, r.verdict.tolerance_pct)
              for r in compare_sides(before, after, dict(DEFAULT_GATES)).rows}
    assert status["total_token_throughput"] == ("ok", 10.0)  # -8% within the 10% the run applied
    gates = parse_gates("total_token_throughput:5")
    status = {r.verdict.metric: (r.verdict.status, r.verdict.tolerance_pct)
              for r in compare_sides(before, after, gates, named=frozenset({"total_token_throughput"})).rows}
    assert status["total_token_throughput"] == ("regressed", 5.0)  # --gate said 5%
    off = compare_sides(before, after, parse_gates("total_token_throughput:off"),
                        named=frozenset({"total_token_throughput"}))
    assert "total_token_throughput" not in {r.verdict.metric for r in off.rows}
