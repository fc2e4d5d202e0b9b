"""``python -m pytest_llmperf merge``: synthetic reports and baseline trees in process, then the halves of a suite run
on the sim merged as a subprocess (real exit codes and stderr)."""

from __future__ import annotations

import json
import sys
import types
import uuid
from pathlib import Path

import pytest

from pytest_llmperf.__main__ import main
from pytest_llmperf.baselines import read_baseline
from sim_runs import SUITE, command, inconclusive, report_run, statuses
from synthetic_reports import MODEL, WORKLOAD, baseline_file, case, report, run, tree_path, write

VLLM, SGLANG, OTHER = "sim/vllm-tp8/tiny", "sim/sglang-dpattn/tiny", "sim/vllm-tp8/long"


def cli(capsys, *args):
    code = main(["merge", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def cases_of(path: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads(Path(path).read_text())["cases"]}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "baselines"
    write(tree_path(root, "sim", "vllm-tp8"), baseline_file("sim", "vllm-tp8", {"tiny": [(1000.0, 20.0)],
                                                                               "long": [(500.0, 30.0)]}))
    write(tree_path(root, "sim", "sglang-dpattn"), baseline_file("sim", "sglang-dpattn", {"tiny": [(2000.0, 10.0)]}))
    return root


@pytest.fixture
def halves(tmp_path):
    """Two reports of one suite (one node each): disjoint cases."""
    r1 = write(tmp_path / "node1.json", report([case(VLLM, [run(1, 1000.0, 20.0)]), case(OTHER, [run(1, 500.0, 30.0)])],
                                              started_at="2026-01-02T10:00:00+00:00", notes=["warm-up of sim/vllm-tp8"],
                                              hostname="node1"))
    r2 = write(tmp_path / "node2.json", report([case(SGLANG, [run(1, 1800.0, 10.0)], status="regressed",
                                                     outcome="failed", message="sim/sglang-dpattn/tiny regressed")],
                                              started_at="2026-01-02T09:59:00+00:00", notes=["warm-up of sim/sglang"],
                                              engines=["sim"], hostname="node2"))
    return r1, r2


# ----------------------------------------------------------------- union of disjoint reports
def test_disjoint_reports_are_unioned_keeping_each_verdict(capsys, tmp_path, halves):
    out_path = tmp_path / "all.json"
    code, out, err = cli(capsys, *halves, "-o", out_path)
    assert code == 0 and err == ""  # a regressed case is reported, not gated
    assert out.startswith(f"merged 2 reports into {out_path}: 3 cases (2 ok, 1 regressed)")
    data = json.loads(out_path.read_text())
    assert [c["id"] for c in data["cases"]] == [VLLM, OTHER, SGLANG]
    assert [c["status"] for c in data["cases"]] == ["ok", "ok", "regressed"]
    assert data["cases"][2] == json.loads(halves[1].read_text())["cases"][0]  # untouched
    env = data["environment"]
    assert env["merged_from"] == [{"file": str(halves[0]), "started_at": "2026-01-02T10:00:00+00:00", "node": "node1"},
                                  {"file": str(halves[1]), "started_at": "2026-01-02T09:59:00+00:00", "node": "node2"}]
    assert env["started_at"] == "2026-01-02T09:59:00+00:00"
    assert env["notes"] == ["warm-up of sim/vllm-tp8", "warm-up of sim/sglang"]
    assert len(env["engines_booted"]) == 2 and data["schema"] == "pytest-llmperf/report/2"
    # --gate-exit: 1 when a merged case regressed
    code, _, _ = cli(capsys, *halves, "-o", out_path, "--gate-exit")
    assert code == 1
    code, _, _ = cli(capsys, halves[0], "-o", out_path, "--gate-exit")
    assert code == 0


# ----------------------------------------------------------------- the same case in several reports
def test_a_case_measured_twice_is_pooled_and_judged_again(capsys, tmp_path, tree):
    # each node alone: -6% (regressed) and +6% (improved); pooled: the median of four runs, within the band
    r1 = write(tmp_path / "r1.json", report([case(VLLM, [run(1, 940.0, 20.0), run(2, 950.0, 20.0)],
                                                  status="regressed", outcome="failed")], started_at="2026-01-02"))
    r2 = write(tmp_path / "r2.json", report([case(VLLM, [run(1, 1060.0, 20.0), run(2, 1050.0, 20.0)],
                                                  status="improved")], started_at="2026-01-03"))
    out_path = tmp_path / "all.json"
    code, out, err = cli(capsys, r1, r2, "-o", out_path, "--baseline-dir", tree)
    assert code == 0 and err == ""
    assert "1 measured in several and pooled" in out
    assert f"{VLLM}: measured in 2 reports ({r1}, {r2}): 4 runs pooled and judged again against " in out
    merged = cases_of(out_path)[VLLM]
    assert [r["run"] for r in merged["runs"]] == [1, 2, 3, 4]
    assert [(r["source"], r["source_run"]) for r in merged["runs"]] == [(str(r1), 1), (str(r1), 2), (str(r2), 1),
                                                                        (str(r2), 2)]
    assert merged["metrics"]["total_token_throughput"] == 1000.0  # the median of 940, 950, 1050, 1060
    assert merged["spread"]["total_token_throughput"]["n"] == 4
    assert merged["status"] == "ok" and merged["outcome"] == "passed" and merged["message"] == ""
    verdict = {v["metric"]: v for v in merged["verdicts"]}["total_token_throughput"]
    assert verdict["reference"] == 1000.0 and verdict["current"] == 1000.0
    assert verdict["band_pct"] == pytest.approx(10.0)  # four runs, the extremes left out: 950..1050
    assert merged["baseline_file"] == str(tree_path(tree, "sim", "vllm-tp8"))
    assert merged["merged_from"] == [str(r1), str(r2)]
    assert merged["record"]["metrics"]["total_token_throughput"] == 1000.0
    assert len(merged["record"]["runs"]) == 4 and merged["record"]["provenance"]["merged_from"] == [str(r1), str(r2)]
    assert merged["baseline_history"] == [{"date": "2026-01-01T00:00:00+00:00",
                                           "metrics": {"completed": 24, "failed": 0, "total_token_throughput": 1000.0,
                                                       "mean_tpot_ms": 20.0}}]
    assert merged["apparatus"]["runs"] == 4 and merged["confirm_runs"] == 0


def test_pooled_cases_are_judged_with_the_gates_their_runs_were_judged_with(capsys, tmp_path, tree):
    runs = ([run(1, 900.0, 20.0)], [run(1, 920.0, 20.0)])  # -9%: beyond the default 5%, within 10%
    for gates, status in (({"total_token_throughput": 10.0}, "ok"), (None, "regressed")):  # None: an older report
        env = {"gates_pct": gates} if gates else {}
        reports = [write(tmp_path / f"r{n}.json", report([case(VLLM, r)], started_at=str(n), **env))
                   for n, r in enumerate(runs)]
        if gates is None:
            for path in reports:
                data = json.loads(path.read_text())
                del data["environment"]["gates_pct"]
                write(path, data)
        code, _, _ = cli(capsys, *reports, "-o", tmp_path / "all.json", "--baseline-dir", tree)
        merged = cases_of(tmp_path / "all.json")[VLLM]
        assert code == 0 and merged["status"] == status
        assert [v["metric"] for v in merged["verdicts"]] == sorted(gates or ["total_token_throughput", "mean_tpot_ms",
                                                                             "failed"])


def test_pooling_leaves_distorted_runs_out_and_judges_a_regression(capsys, tmp_path, tree):
    r1 = write(tmp_path / "r1.json", report([case(VLLM, [run(1, 800.0, 20.0), run(2, 100.0, 99.0, distorted=["busy"])])]))
    r2 = write(tmp_path / "r2.json", report([case(VLLM, [run(1, 820.0, 20.0)])], started_at="2026-01-05"))
    out_path = tmp_path / "all.json"
    code, out, _ = cli(capsys, r1, r2, "-o", out_path, "--baseline-dir", tree, "--gate-exit")
    assert code == 1
    merged = cases_of(out_path)[VLLM]
    assert merged["metrics"]["total_token_throughput"] == 810.0  # the distorted run does not count
    assert merged["status"] == "regressed" and merged["outcome"] == "failed"
    assert merged["message"].startswith(f"{VLLM} regressed against {tree_path(tree, 'sim', 'vllm-tp8')} (median of 2 runs):")
    assert merged["apparatus"]["runs_distorted"] == 1 and merged["apparatus"]["runs"] == 3


def test_without_a_readable_baseline_the_pooled_case_is_kept_and_says_so(capsys, tmp_path):
    r1 = write(tmp_path / "r1.json", report([case(VLLM, [run(1, 1000.0, 20.0)], baseline_file=str(tmp_path / "gone.json"))]))
    r2 = write(tmp_path / "r2.json", report([case(VLLM, [run(1, 900.0, 20.0)], status="regressed", outcome="failed",
                                                  baseline_file=str(tmp_path / "gone.json"))], started_at="2026-01-05"))
    out_path = tmp_path / "all.json"
    code, out, _ = cli(capsys, r1, r2, "-o", out_path)
    assert code == 0
    why = f"its baseline file {tmp_path / 'gone.json'} does not exist here"
    assert f"not judged again ({why}); its status is the worst of the reports' (regressed)" in out
    merged = cases_of(out_path)[VLLM]
    assert merged["metrics"]["total_token_throughput"] == 950.0 and len(merged["runs"]) == 2
    assert merged["status"] == "regressed" and merged["verdicts"] == [] and why in merged["message"]
    assert any("not judged again" in n for n in json.loads(out_path.read_text())["environment"]["notes"])
    # a corrupt baseline is not judged against either, and says why
    (tmp_path / "gone.json").write_text("{")
    code, out, _ = cli(capsys, r1, r2, "-o", out_path)
    assert code == 0 and "is not valid JSON" in cases_of(out_path)[VLLM]["message"]


def test_a_case_measured_once_and_errored_elsewhere_keeps_its_measurement(capsys, tmp_path):
    r1 = write(tmp_path / "r1.json", report([case(VLLM, [run(1, 1000.0, 20.0)])]))
    r2 = write(tmp_path / "r2.json", report([case(VLLM, [], status="error", outcome="error",
                                                  message="cannot boot sim/vllm-tp8: port in use")], started_at="x"))
    out_path = tmp_path / "all.json"
    code, out, _ = cli(capsys, r1, r2, "-o", out_path)
    assert code == 0
    assert cases_of(out_path)[VLLM] == json.loads(r1.read_text())["cases"][0]
    assert f"{VLLM} was also in {r2} (error: cannot boot sim/vllm-tp8: port in use), where it measured nothing" in out
    r3 = write(tmp_path / "r3.json", report([case(VLLM, [], status="not run", outcome="not run")], started_at="y"))
    code, out, _ = cli(capsys, r2, r3, "-o", out_path)
    assert code == 0 and cases_of(out_path)[VLLM]["status"] == "error"
    assert f"{VLLM} is in {r2}, {r3} and was measured in none of them; kept as {r2} has it (error)" in out


# ----------------------------------------------------------------- refusals: exit 2, one line
@pytest.mark.parametrize("key, value, what", [("suite", "other.toml", "suites"), ("model", "org/other", "models"),
                                              ("gpus", "h100x8", "GPU specs")])
def test_reports_of_other_suites_models_or_gpus_are_refused(capsys, tmp_path, halves, key, value, what):
    data = json.loads(halves[1].read_text())
    data["environment"][key] = value
    write(halves[1], data)
    out_path = tmp_path / "all.json"
    code, out, err = cli(capsys, *halves, "-o", out_path)
    assert code == 2 and out == "" and not out_path.exists()
    original = {"suite": "suite.toml", "model": MODEL, "gpus": "h200x8"}[key]
    assert err.splitlines() == [f"error: cannot merge {halves[1]} into {halves[0]}: they ran different {what} "
                                f"({key} {value!r} in {halves[1]}, {original!r} in {halves[0]})"]


def test_the_same_suite_read_from_another_checkout_merges(capsys, tmp_path, halves):
    data = json.loads(halves[1].read_text())
    data["environment"]["suite"] = "/elsewhere/checkout/suite.toml"
    write(halves[1], data)
    code, _, _ = cli(capsys, *halves, "-o", tmp_path / "all.json")
    assert code == 0


def test_other_bad_inputs_exit_2_with_one_line(capsys, tmp_path, halves, tree):
    r1, r2 = halves
    copy = write(tmp_path / "copy.json", json.loads(r1.read_text()))
    other_workload = write(tmp_path / "w.json", report([case(VLLM, [run(1, 1.0, 1.0)],
                                                             workload={**WORKLOAD, "num_prompts": 8})]))
    (tmp_path / "text.json").write_text("nope")
    out_path = tmp_path / "all.json"
    cases = [
        ((r1, r1), f"error: {r1}: given twice (also as {r1}): its runs would count twice"),
        ((r1, copy), f"error: {copy} is the same report as {r1}: merging it twice would count its runs twice"),
        ((r1, other_workload), f"error: cannot merge {other_workload} into {r1}: they measured {VLLM} with different "
                               f"workloads (num_prompts: 24 in {r1}, 8 in {other_workload})"),
        ((r1, tmp_path / "missing.json"), f"error: {tmp_path / 'missing.json'}: no such file"),
        ((r1, tmp_path / "text.json"), f"error: {tmp_path / 'text.json'}: not JSON (Expecting value"),
        ((r1, tree_path(tree, "sim", "vllm-tp8")), f"error: {tree_path(tree, 'sim', 'vllm-tp8')}: a baseline file, not a JSON report"),
        ((r1, "--update-baselines"), "error: --update-baselines needs --baseline-dir DIR"),
        ((r1, "--baseline-history", "x"), "error: --baseline-history: expected a positive integer, got 'x'"),
    ]
    for args, message in cases:
        code, out, err = cli(capsys, *args, "-o", out_path)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith(message), (args, err)
        assert not out_path.exists()
    assert main(["merge", str(r1)]) == 2  # -o is required: a usage error


# ----------------------------------------------------------------- baselines
def test_update_baselines_records_each_measured_case_and_refuses_the_inconclusive(capsys, tmp_path, tree):
    r1 = write(tmp_path / "r1.json", report([
        case(VLLM, [run(1, 1100.0, 19.0)], status="improved", date="2026-02-01T00:00:00+00:00"),
        case(OTHER, [run(1, 1.0, 900.0, distorted=["the GPUs were throttled (hw_slowdown)"])], status="inconclusive",
             outcome="failed"),
    ]))
    r2 = write(tmp_path / "r2.json", report([
        case(VLLM, [run(1, 1200.0, 18.0)], status="improved", date="2026-02-02T00:00:00+00:00"),
        case(SGLANG, [run(1, 2100.0, 9.5)], status="ok"),
    ], started_at="2026-02-02"))
    out_path = tmp_path / "all.json"
    before = tree_path(tree, "sim", "vllm-tp8").read_text()
    code, out, err = cli(capsys, r1, r2, "-o", out_path, "--update-baselines", "--baseline-dir", tree,
                         "--baseline-history", "2")
    assert code == 0 and err == ""
    assert f"baseline updated: {VLLM} -> {tree_path(tree, 'sim', 'vllm-tp8')}" in out
    assert f"baseline updated: {SGLANG} -> {tree_path(tree, 'sim', 'sglang-dpattn')}" in out
    assert f"not recorded: {OTHER}: inconclusive: every run's measurement was distorted" in out
    vllm = read_baseline(tree_path(tree, "sim", "vllm-tp8"))
    history = vllm["cases"]["tiny"]["history"]
    assert len(history) == 2 and history[0]["metrics"]["total_token_throughput"] == 1000.0
    assert history[1]["metrics"]["total_token_throughput"] == 1150.0  # the pooled median of both nodes' runs
    assert [r["total_token_throughput"] for r in history[1]["runs"]] == [1100.0, 1200.0]
    assert history[1]["provenance"]["date"] == "2026-02-02T00:00:00+00:00"  # the newest source's
    assert vllm["cases"]["long"] == json.loads(before)["cases"]["long"]  # the refused case's entry is untouched
    sglang = read_baseline(tree_path(tree, "sim", "sglang-dpattn"))["cases"]["tiny"]["history"]
    assert [h["metrics"]["total_token_throughput"] for h in sglang] == [2000.0, 2100.0]
    data = json.loads(out_path.read_text())
    assert [u["case"] for u in data["baseline_updates"]] == [VLLM, SGLANG]
    assert any("total_token_throughput: 1000 -> 1150 (+15.0%) updated" in line for line in data["baseline_updates"][0]["lines"])
    statuses = {c["id"]: c["status"] for c in data["cases"]}
    assert statuses == {VLLM: "updated", OTHER: "inconclusive", SGLANG: "updated"}
    assert data["environment"]["update_baselines"] is True and data["environment"]["baseline_dir"] == str(tree)
    # the history rolls: K=2 keeps the last two
    code, _, _ = cli(capsys, r2, "-o", out_path, "--update-baselines", "--baseline-dir", tree, "--baseline-history", "2")
    history = read_baseline(tree_path(tree, "sim", "vllm-tp8"))["cases"]["tiny"]["history"]
    assert code == 0 and [h["metrics"]["total_token_throughput"] for h in history] == [1150.0, 1200.0]


def test_update_baselines_into_a_tree_that_cannot_be_written_writes_nothing(capsys, tmp_path, halves):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    out_path = tmp_path / "all.json"
    code, out, err = cli(capsys, *halves, "-o", out_path, "--update-baselines", "--baseline-dir", blocker)
    assert code == 2 and out == "" and not out_path.exists()
    assert err.splitlines() == [f"error: --update-baselines: cannot write baselines under {blocker}/h200x8/"
                                f"{MODEL.replace('/', '__')}/sim: {blocker} is not a directory"]


# ----------------------------------------------------------------- other report formats
def test_report_md_writes_the_merged_summary(capsys, tmp_path, halves):
    md = tmp_path / "summary.md"
    code, out, _ = cli(capsys, *halves, "-o", tmp_path / "all.json", "--report-md", md)
    assert code == 0 and f"markdown summary written to {md}" in out
    text = md.read_text()
    assert text.startswith("## ") and "1 regressed" in text and "merged from 2 reports" in text


def test_report_html_writes_the_merged_page(capsys, tmp_path, halves):
    pytest.importorskip("plotly")
    page = tmp_path / "r.html"
    code, out, _ = cli(capsys, *halves, "-o", tmp_path / "all.json", "--report-html", page)
    assert code == 0 and f"HTML report written to {page}" in out
    text = page.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and SGLANG in text and VLLM in text


def test_report_html_without_its_writer_or_plotly_is_refused_in_one_line(capsys, tmp_path, halves, monkeypatch):
    out_path = tmp_path / "all.json"
    monkeypatch.setitem(sys.modules, "pytest_llmperf.report.html", None)  # a version without the HTML report
    code, out, err = cli(capsys, *halves, "-o", out_path, "--report-html", tmp_path / "r.html")
    assert code == 2 and out == "" and not out_path.exists()
    assert err.splitlines() == ["error: --report-html: this version of pytest-llmperf cannot write it "
                                "(pytest_llmperf.report.html.write_html is not available); upgrade pytest-llmperf "
                                "or leave --report-html out"]
    fake = types.ModuleType("pytest_llmperf.report.html")
    fake.write_html = lambda path, data: pytest.fail("written without plotly")

    def require_plotly():
        raise RuntimeError("--report-html needs plotly: pip install 'pytest-llmperf[html]'")

    fake.require_plotly = require_plotly
    monkeypatch.setitem(sys.modules, "pytest_llmperf.report.html", fake)
    code, out, err = cli(capsys, *halves, "-o", out_path, "--report-html", tmp_path / "r.html")
    assert code == 2 and out == "" and not out_path.exists()
    assert err.splitlines() == ["error: --report-html needs plotly: pip install 'pytest-llmperf[html]'"]


def test_an_output_that_cannot_be_written_exits_2_saying_which(capsys, tmp_path, halves):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = cli(capsys, *halves, "-o", blocker / "all.json", "--report-md", tmp_path / "s.md")
    assert code == 2 and out.startswith("merged 2 reports") and f"markdown summary written to {tmp_path / 's.md'}" in out
    (line,) = err.splitlines()
    assert line.startswith(f"error: {blocker / 'all.json'}: cannot write the merged report (")  # the OS's words


# ----------------------------------------------------------------- end to end: the halves of a suite on the sim
# Wide enough that no run-to-run noise reaches it; vLLM's baseline is made 10x faster than the sim, beyond it.
TOL = "--gate=total_token_throughput:80,mean_tpot_ms:300"
EXPECTED = {"sim/vllm-tp8/tiny-random": "regressed", "sim/vllm-tp8/tiny-sharegpt": "regressed",
            "sim/sglang-dpattn/tiny-random": "ok", "sim/sglang-dpattn/tiny-sharegpt": "ok"}


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory):
    """Baselines recorded (vLLM's made 10x faster: its cases regress), then the full suite and its two halves.

    The directory, and each case's expected status: as ``EXPECTED``, or missing when no attempt could record it.
    """
    from test_plugin_e2e import sim_processes

    model = f"test/model-{uuid.uuid4().hex[:8]}"
    cwd = tmp_path_factory.mktemp("merge-e2e")
    (cwd / "suite.toml").write_text(SUITE.format(model=model))
    report_run(cwd, "record-run.json", "--update-baselines")
    tree = cwd / "bl" / "h200x8" / model.replace("/", "__") / "sim"
    recorded = {f"sim/{p.stem}/{name}" for p in tree.glob("*.json") for name in json.loads(p.read_text())["cases"]}
    data = json.loads((tree / "vllm-tp8.json").read_text())
    for entry in data["cases"].values():
        for record in entry["history"]:
            record["metrics"]["total_token_throughput"] *= 10
            for one in record["runs"]:
                one["total_token_throughput"] *= 10
    (tree / "vllm-tp8.json").write_text(json.dumps(data))
    for name, k in (("full", ()), ("vllm", ("-k", "vllm")), ("sglang", ("-k", "sglang"))):
        report_run(cwd, f"{name}.json", TOL, *k)
    assert sim_processes(model) == [], "a sim engine outlived its run"
    return cwd, {c: s if c in recorded else "missing" for c, s in EXPECTED.items()}


def test_e2e_the_merged_halves_have_the_full_runs_cases_and_verdicts(suite_runs):
    suite_runs, expected = suite_runs
    result = command(suite_runs, "merge", "vllm.json", "sglang.json", "-o", "merged.json", "--report-md", "merged.md")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    full, merged = statuses(suite_runs / "full.json"), statuses(suite_runs / "merged.json")
    assert list(merged) == list(full) == list(EXPECTED)  # the same cases, in the suite's order
    halves = {**statuses(suite_runs / "vllm.json"), **statuses(suite_runs / "sglang.json")}
    assert merged == halves  # each case as the run that measured it judged it
    # a case whose measurement was distorted (a busy machine) is inconclusive there; every other has its verdict
    distorted = (inconclusive(suite_runs / "full.json") | inconclusive(suite_runs / "vllm.json")
                 | inconclusive(suite_runs / "sglang.json"))
    for case_id, status in expected.items():
        if case_id not in distorted:
            assert merged[case_id] == full[case_id] == status
    counts = {s: list(merged.values()).count(s) for s in set(merged.values())}
    assert result.stdout.startswith(f"merged 2 reports into merged.json: 4 cases (")
    assert all(f"{n} {s}" in result.stdout.splitlines()[0] for s, n in counts.items())
    data = json.loads((suite_runs / "merged.json").read_text())
    assert [m["file"] for m in data["environment"]["merged_from"]] == ["vllm.json", "sglang.json"]
    assert (suite_runs / "merged.md").read_text().startswith("## ")
    gated = command(suite_runs, "merge", "vllm.json", "sglang.json", "-o", "merged.json", "--gate-exit")
    assert gated.returncode == (1 if "regressed" in merged.values() else 0)


def test_e2e_an_overlapping_report_is_pooled_and_judged_again(suite_runs):
    suite_runs, expected = suite_runs
    result = command(suite_runs, "merge", "full.json", "vllm.json", "-o", "pooled.json")
    assert result.returncode == 0, result.stderr
    assert "2 measured in several and pooled" in result.stdout
    data = {c["id"]: c for c in json.loads((suite_runs / "pooled.json").read_text())["cases"]}
    for case_id in ("sim/vllm-tp8/tiny-random", "sim/vllm-tp8/tiny-sharegpt"):
        pooled = data[case_id]
        assert len(pooled["runs"]) == 2 and pooled["merged_from"] == ["full.json", "vllm.json"]
        counted = [r for r in pooled["runs"] if not r["distorted"]]
        assert pooled["status"] == (expected[case_id] if counted else "inconclusive")
        if len(counted) == 2 and expected[case_id] == "regressed":
            assert "(median of 2 runs)" in pooled["message"] and pooled["verdicts"][0]["history_n"] == 1
    full = json.loads((suite_runs / "full.json").read_text())["cases"]
    assert data["sim/sglang-dpattn/tiny-random"] == full[2]  # measured once: as it was


def test_e2e_merged_baselines_are_a_tree_the_next_comparison_reads(suite_runs):
    suite_runs, _ = suite_runs
    result = command(suite_runs, "merge", "vllm.json", "sglang.json", "-o", "recorded.json", "--update-baselines",
                     "--baseline-dir", "bl2")
    assert result.returncode == 0, result.stderr
    distorted = inconclusive(suite_runs / "vllm.json") | inconclusive(suite_runs / "sglang.json")
    measured = [c for c in EXPECTED if c not in distorted]
    recorded = [u["case"] for u in json.loads((suite_runs / "recorded.json").read_text())["baseline_updates"]]
    assert recorded == measured  # every measured case, none distorted
    compared = command(suite_runs, "compare", "bl2", "full.json", TOL)
    assert compared.returncode == 0 and compared.stderr == "", compared.stdout + compared.stderr
    assert "regressed" not in compared.stdout
