"""--report-html end to end: the plugin on the simulated engine writes the page; without plotly it stops at once."""

from __future__ import annotations

import json
import uuid

import pytest

from test_plugin_e2e import sim_processes
from test_report_html import Page, anchor

# Gates that no loaded machine can fail, so these runs are about the page, not the figures.
TOL = "total_token_throughput:80,mean_tpot_ms:300"


def suite_text(model: str) -> str:
    return f'''
model = "{model}"
gpus = "h200x8"

[workloads.tiny-random]
dataset = "random"
input_len = 64
output_len = 12
num_prompts = 8

[workloads.tiny-sharegpt]
dataset = "sharegpt"
num_prompts = 8
output_len = 12

[[configs]]
engine = "sim"
name = "vllm-tp8"
profile = "vllm-tp8"
warmup_requests = 0
'''


@pytest.fixture
def project(pytester):
    model = f"test/model-{uuid.uuid4().hex[:8]}"
    pytester.makefile(".toml", suite=suite_text(model))
    yield pytester
    assert sim_processes(model) == [], "a sim engine outlived the run"


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--suite=suite.toml", "--engine=sim", *args,
                                         timeout=300)


def test_report_html_has_the_charts_of_every_case(project):
    pytest.importorskip("plotly")
    from pytest_llmperf.report.html import case_figures

    bdir = project.path / "bl"
    run(project, f"--baseline-dir={bdir}", "--update-baselines").assert_outcomes(passed=2)
    result = run(project, f"--baseline-dir={bdir}", f"--gate={TOL}", "--report-json=r.json", "--report-html=out/r.html")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*HTML report written to *out/r.html"])
    report = json.loads((project.path / "r.json").read_text())
    page = Page((project.path / "out" / "r.html").read_text())
    assert len(report["cases"]) == 2
    for case in report["cases"]:
        expected = [kind for kind, figure in case_figures(case, report["metric_units"],
                                                          report["environment"]["gates_pct"])
                    if isinstance(figure, dict)]
        kinds = page.sections[anchor(case["id"])]
        assert kinds == expected
        assert {"gates", "trend", "latency", "timeline"} <= set(kinds), case["id"]
        assert "gpu" in page.notes[anchor(case["id"])]  # the sim has no GPU telemetry: a line says so
    assert set(page.figure_json) == set(page.figures)


def test_without_plotly_the_run_stops_with_one_usage_line(project):
    project.makepyfile(noplotly="import sys\nsys.modules['plotly'] = None  # as if plotly were not installed\n")
    result = run(project, "-p", "noplotly", "--report-html=r.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert errors == ["ERROR: --report-html needs plotly: pip install 'pytest-llmperf[html]'"]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not (project.path / "r.html").exists()
