"""The HTML report: a page made from the JSON report dict, its charts, its escaping, that it needs no network.

The unit tests work on synthetic report dicts shaped as the JSON report's
contract. The page test opens a written page in headless Chromium, as a
person would, and checks that every chart was drawn and that the browser
logged no error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_llmperf.report import html as report_html
from pytest_llmperf.report.html import (PLOTLY_MISSING, HtmlReportUnavailable, case_figures, html_report,
                                        require_plotly, write_html)

NASTY = "<script>alert('x')</script> & \"quoted\" </div>"


def quantile_list(lo: float, hi: float) -> list[float]:
    return [round(lo + (hi - lo) * (q / 100) ** 2, 3) for q in range(101)]


def series(n: int = 20, gpu: bool = False, gauges: bool = True, failed: tuple[int, ...] = (3,)) -> dict:
    starts = [round(i * 0.1, 3) for i in range(n)]
    ok = [i not in failed for i in range(n)]
    out = {
        "run": 2,
        "requests": {"start_s": starts,
                     "ttft_s": [0.2 + 0.01 * i if ok[i] else None for i in range(n)],
                     "latency_s": [1.5 + 0.02 * i if ok[i] else None for i in range(n)],
                     "output_tokens": [12 if ok[i] else 0 for i in range(n)], "success": ok, "sampled_from": n},
        "output_tok_s": {"t_s": [0.05 + 0.1 * i for i in range(30)], "tok_s": [100.0 + i for i in range(30)]},
        "quantiles": {"ttft_ms": quantile_list(200, 400), "tpot_ms": quantile_list(10, 30),
                      "itl_ms": quantile_list(8, 40), "e2el_ms": quantile_list(1500, 2000)},
    }
    if gpu:
        t = [0.5 * i for i in range(8)]
        out["gpu"] = {"t_s": t, "sm_clock_mhz": [1980.0] * 8, "power_w": [600.0 + i for i in range(8)],
                      "temperature_c": [55.0] * 8, "utilization_pct": [90.0] * 8, "memory_used_mib": [120000.0] * 8}
    if gauges:
        t = [float(i) for i in range(5)]
        out["engine"] = {"t_s": t, "running": [20, 18, 10, 4, 0], "waiting": [5, 2, 0, 0, 0],
                         "kv_usage": [0.4, 0.35, 0.2, 0.1, 0.0]}
    return out


def verdict(metric: str, reference: float, current: float, tolerance: float = 5.0, status: str = "ok") -> dict:
    change = (current - reference) / abs(reference) * 100 if reference else 0.0
    return {"metric": metric, "baseline": reference, "reference": reference, "current": current,
            "change_pct": change, "tolerance_pct": tolerance, "configured_pct": tolerance, "band_pct": 0.0,
            "tolerance_from": "configured", "status": status, "history_n": 3}


def measured_case(case_id: str = "sim/vllm-tp8/sharegpt", engine: str = "sim", config: str = "vllm-tp8",
                  **series_args) -> dict:
    metrics = {"total_token_throughput": 2400.0, "mean_tpot_ms": 38.0, "mean_ttft_ms": 1500.0, "failed": 1,
               "median_ttft_ms": 300.0, "p99_ttft_ms": 390.0}
    history = [{"date": f"2026-12-0{d}T10:00:00+00:00",
                "metrics": {"total_token_throughput": 2500.0 + d, "mean_tpot_ms": 35.0, "failed": 0,
                            "median_ttft_ms": 280.0 + d, "p99_ttft_ms": 380.0, "median_tpot_ms": 15.0,
                            "p99_itl_ms": 35.0}} for d in (1, 2, 3)]
    return {
        "id": case_id, "engine": engine, "config": config, "workload": case_id.rsplit("/", 1)[-1],
        "outcome": "failed", "status": "regressed", "metrics": metrics,
        "verdicts": [verdict("total_token_throughput", 2502.0, 2400.0, status="ok"),
                     verdict("mean_tpot_ms", 35.0, 38.0, status="regressed"),
                     verdict("failed", 0.0, 1.0, tolerance=0.0, status="regressed")],
        "message": "mean_tpot_ms regressed: 35.00 -> 38.00 (+8.6%, tolerance 5%)",
        "failure_reasons": ["HTTP 500: boom"], "changes": [], "engine_evidence": ["peak requests waiting: 2 -> 5"],
        "runs": [{"run": n, "confirming": n == 3, "distorted": ["loop lag"] if n == 2 else [],
                  "metrics": {"total_token_throughput": 2400.0 + n, "mean_tpot_ms": 38.0 + n / 10, "failed": 1}}
                 for n in (1, 2, 3)],
        "baseline_history": history, "series": series(**series_args), "engine_version": "0.1.0+sim",
        "apparatus": {"runs_distorted": 1, "runs": 3, "causes": ["loop lag"]}, "confirm_runs": 1,
        "baseline_file": "baselines/h200x8/m/sim/vllm-tp8.json",
    }


def report(*cases: dict, **environment) -> dict:
    env = {"plugin_version": "0.1.0", "started_at": "2026-12-04T18:20:30+00:00", "engines": ["sim"],
           "gpus": "h200x8", "suite": "presets/sim.toml", "model": "deepseek-ai/DeepSeek-V3.2",
           "gates_pct": {"total_token_throughput": 5.0, "mean_tpot_ms": 5.0, "failed": 0.0},
           "node": {"sim": {"gpu_name": "NVIDIA H200", "driver_version": "570", "gpu_indices": list(range(8)),
                            "source": "simulated node hgx-h200x8.json", "live": False}},
           "engines_booted": [{"config": "sim/vllm-tp8", "version": "0.1.0+sim", "version_expected": None}],
           "notes": ["warm-up of sim/vllm-tp8: 4 requests"]}
    env.update(environment)
    return {"schema": "pytest-llmperf/report/2", "environment": env,
            "metric_units": {"total_token_throughput": "tok/s", "mean_tpot_ms": "ms", "failed": "requests"},
            "cases": list(cases), "baseline_updates": []}


def skipped_case(case_id: str = "sim/vllm-tp8/short", message: str = "the engine did not start") -> dict:
    return {"id": case_id, "engine": "sim", "config": "vllm-tp8", "workload": "short", "outcome": "error",
            "status": "error", "metrics": {}, "verdicts": [], "message": message, "runs": [],
            "baseline_history": [], "series": None}


class Page(HTMLParser):
    """The page's tags as a browser would parse them (script contents are not markup)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.figures: dict[str, str] = {}  # div id -> kind
        self.figure_json: dict[str, dict] = {}
        self.sections: dict[str, list[str]] = {}  # case anchor -> kinds of its chart divs
        self.notes: dict[str, list[str]] = {}  # case anchor -> kinds of its one-line notes
        self._section: str | None = None
        self._script_for: str | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = []
            self.notes[self._section] = []
        if tag == "div" and "figure" in (a.get("class") or "").split():
            self.figures[a["id"]] = a.get("data-kind")
            self.sections[self._section].append(a.get("data-kind"))
        if tag == "p" and a.get("data-kind") and self._section:
            self.notes[self._section].append(a["data-kind"])
        if tag == "script" and a.get("data-figure"):
            self._script_for = a["data-figure"]
            self._text = []

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "script" and self._script_for:
            self.figure_json[self._script_for] = json.loads("".join(self._text))
            self._script_for = None

    def handle_data(self, data):
        if self._script_for:
            self._text.append(data)


def anchor(case_id: str) -> str:
    return "case-" + re.sub(r"[^A-Za-z0-9_-]", "_", case_id)


@pytest.fixture(scope="module")
def page_text() -> str:
    return html_report(report(measured_case(gpu=True), skipped_case()))


def test_measured_case_has_every_chart(page_text):
    page = Page(page_text)
    kinds = page.sections[anchor("sim/vllm-tp8/sharegpt")]
    assert kinds == ["gates", "trend", "latency", "timeline", "gpu", "engine"]
    assert set(page.figure_json) == set(page.figures)  # one figure JSON per chart div
    gates = page.figure_json[next(k for k, v in page.figures.items() if v == "gates")]
    # one row per gated metric: the band, the reference, this run's median and its runs
    assert {d.get("xaxis", "x") for d in gates["data"]} == {"x", "x2", "x3"}
    assert "regressed" in gates["layout"]["title"]["text"]
    subtitles = [a["text"] for a in gates["layout"]["annotations"]]
    assert any("mean_tpot_ms</b>: regressed" in t and "+8.6%" in t for t in subtitles)
    tpot_bands = [s for s in gates["layout"]["shapes"] if s["type"] == "rect" and s["xref"] == "x2"]
    assert sorted((s["x0"], s["x1"]) for s in tpot_bands) == [(33.25, 35.0), (35.0, 36.75)]  # better, worse (+5%)
    worse = next(s for s in tpot_bands if s["x0"] == 35.0)
    assert worse["fillcolor"] == report_html.WORSE_FILL  # lower is better: the worse side lies above the reference
    throughput_worse = next(s for s in gates["layout"]["shapes"]
                            if s["type"] == "rect" and s["xref"] == "x" and s["fillcolor"] == report_html.WORSE_FILL)
    assert throughput_worse["x1"] == 2502.0 and throughput_worse["x0"] == pytest.approx(2376.9)


def test_trend_has_history_this_run_and_its_runs(page_text):
    page = Page(page_text)
    trend = page.figure_json[next(k for k, v in page.figures.items() if v == "trend")]
    throughput = [d for d in trend["data"] if d.get("xaxis", "x") == "x"]
    by_name = {d["name"]: d for d in throughput}
    assert by_name["baseline history"]["y"] == [2501.0, 2502.0, 2503.0]
    assert by_name["this run (median)"]["x"] == [3] and by_name["this run (median)"]["y"] == [2400.0]
    assert by_name["each run"]["y"] == [2401.0, 2402.0, 2403.0]
    assert by_name["reference"]["y"] == [2502.0, 2502.0]
    assert trend["layout"]["xaxis"]["ticktext"][-1] == "this run"
    assert trend["layout"]["xaxis"]["ticktext"][0] == "2026-12-01<br>10:00"


def test_latency_cdfs_mark_the_baseline_percentiles(page_text):
    page = Page(page_text)
    cdf = page.figure_json[next(k for k, v in page.figures.items() if v == "latency")]
    runs = [d for d in cdf["data"] if d["name"] == "this run"]
    assert len(runs) == 3 and all(d["y"] == list(range(101)) for d in runs)
    marks = {d["xaxis"] if "xaxis" in d else "x": d for d in cdf["data"] if d["name"].startswith("baseline")}
    assert marks["x"]["y"] == [50, 99] and marks["x"]["x"] == [282.0, 380.0]  # median over the history
    assert marks["x2"]["y"] == [50]  # TPOT: the history has its median only
    assert marks["x3"]["y"] == [99]  # ITL: p99 only


def test_timeline_draws_each_request_and_marks_failures(page_text):
    page = Page(page_text)
    fig = page.figure_json[next(k for k, v in page.figures.items() if v == "timeline")]
    by_name = {d["name"]: d for d in fig["data"]}
    assert by_name["failed"]["y"] == [3]
    assert len(by_name["to first token"]["x"]) == 3 * 19 and len(by_name["first token to end"]["x"]) == 3 * 19
    assert by_name["output tok/s"]["yaxis"] == "y2" and len(by_name["output tok/s"]["x"]) == 30


def test_gpu_and_engine_series(page_text):
    page = Page(page_text)
    gpu = page.figure_json[next(k for k, v in page.figures.items() if v == "gpu")]
    assert [d["name"] for d in gpu["data"]] == ["SM clock MHz", "power W", "temperature °C", "utilisation %",
                                               "memory used MiB"]
    assert gpu["data"][1]["y"] == [600.0 + i for i in range(8)]
    engine = page.figure_json[next(k for k, v in page.figures.items() if v == "engine")]
    by_name = {d["name"]: d for d in engine["data"]}
    assert by_name["kv_usage %"]["y"] == [40.0, 35.0, 20.0, 10.0, 0.0] and by_name["kv_usage %"]["yaxis"] == "y2"
    assert by_name["running"]["y"] == [20, 18, 10, 4, 0]


def test_without_gpu_or_engine_series_a_line_says_why():
    sim = measured_case(gpu=False, gauges=False)
    external = measured_case("external/ep/short", engine="external", config="ep", gpu=False)
    page_text = html_report(report(sim, external))
    page = Page(page_text)
    assert page.sections[anchor(sim["id"])] == ["gates", "trend", "latency", "timeline"]
    assert page.notes[anchor(sim["id"])] == ["gpu", "engine"]
    assert "No GPU telemetry: the simulated engine runs on no GPU." in page_text
    assert "No GPU telemetry: an external endpoint&#x27;s GPUs are not sampled." in page_text


def test_case_without_series_has_its_message_and_no_chart(page_text):
    page = Page(page_text)
    assert page.sections[anchor("sim/vllm-tp8/short")] == []
    assert "the engine did not start" in page_text
    assert "No charts: nothing was measured for this case." in page_text


def test_case_without_baseline_says_so_instead_of_a_gate_chart():
    case = measured_case()
    case.update(verdicts=[{**verdict("total_token_throughput", 1.0, 2400.0), "baseline": None, "reference": None,
                           "status": "missing"}], baseline_history=[], status="missing")
    page = Page(html_report(report(case)))
    assert page.sections[anchor(case["id"])] == ["trend", "latency", "timeline", "engine"]
    assert page.notes[anchor(case["id"])] == ["gates", "gpu"]


def test_status_overview_has_every_case_with_changes(page_text):
    overview = page_text.split('<h2 id="overview">', 1)[1].split("</table>", 1)[0]
    rows = overview.split("<tr>")[2:]
    assert len(rows) == 2
    assert 'href="#case-sim_vllm-tp8_sharegpt"' in rows[0] and ">regressed<" in rows[0]
    assert "2,400.0" in rows[0] and "-4.1%" in rows[0] and "38.00" in rows[0] and "+8.6%" in rows[0]
    assert ">error<" in rows[1]


def test_header_names_node_model_suite_engines_and_notes(page_text):
    header = page_text.split('<h2 id="overview">', 1)[0]
    for text in ("h200x8", "NVIDIA H200", "deepseek-ai/DeepSeek-V3.2", "presets/sim.toml", "sim/vllm-tp8: 0.1.0+sim",
                 "2026-12-04T18:20:30+00:00", "pytest-llmperf 0.1.0", "warm-up of sim/vllm-tp8: 4 requests"):
        assert text in header, text


def test_every_string_from_the_report_is_escaped():
    case = measured_case(f"sim/{NASTY}/w")
    case["message"] = NASTY
    case["verdicts"][0]["metric"] = "total_token_throughput"
    text = html_report(report(case, skipped_case(message=NASTY), notes=[NASTY], model=NASTY, suite=NASTY))
    assert NASTY not in text
    assert "<script>alert" not in text
    assert html_escaped(NASTY) in text
    page = Page(text)
    assert [t for t, _ in page.tags].count("script") == 2 + len(page.figures)  # plotly.js, the figures, the loader
    for figure in page.figure_json.values():  # labels inside charts are escaped too (plotly reads them as HTML)
        assert NASTY not in json.dumps(figure)
    # inside the figure blocks nothing can close the script tag
    for block in re.findall(r'<script type="application/json" data-figure="[^"]+">(.*?)</script>', text, re.S):
        assert "<" not in block and ">" not in block


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_non_finite_figures_do_not_break_the_page():
    case = measured_case()
    case["metrics"]["mean_tpot_ms"] = math.nan
    case["series"]["quantiles"]["tpot_ms"][5] = math.inf
    case["runs"][0]["metrics"]["total_token_throughput"] = math.nan
    page = Page(html_report(report(case)))
    assert len(page.figure_json) == 5


def test_one_legend_entry_for_the_baseline_marks_even_when_a_latency_has_no_values():
    case = measured_case()
    case["series"]["quantiles"]["tpot_ms"] = []
    case["series"]["quantiles"]["ttft_ms"] = [1.0, 2.0, 3.0]  # not the usual 101: spread over 0..100
    figure = dict(case_figures(case, {}, {}))["latency"]
    marks = [d for d in figure["data"] if d["name"].startswith("baseline")]
    assert [d["showlegend"] for d in marks] == [True, False, False]
    assert figure["data"][0]["y"] == [0.0, 50.0, 100.0]


def test_empty_quantiles_and_empty_report():
    case = measured_case()
    case["series"]["quantiles"]["itl_ms"] = []
    page = Page(html_report(report(case)))
    cdf = page.figure_json[next(k for k, v in page.figures.items() if v == "latency")]
    assert any(a["text"] == "no ITL values" for a in cdf["layout"]["annotations"])
    assert Page(html_report({})).figures == {}


def test_long_series_are_thinned():
    case = measured_case()
    n = 10_000
    case["series"]["output_tok_s"] = {"t_s": [i * 0.1 for i in range(n)], "tok_s": [1.0] * n}
    case["series"]["engine"] = {"t_s": [float(i) for i in range(n)], "running": [1] * n}
    figures = dict(case_figures(case, {}, {}))
    rate = next(d for d in figures["timeline"]["data"] if d["name"] == "output tok/s")
    assert len(rate["x"]) == report_html.MAX_POINTS and rate["x"][0] == 0.0 and rate["x"][-1] == 999.9
    assert len(figures["engine"]["data"][0]["x"]) == report_html.MAX_POINTS


def test_figures_are_valid_plotly():
    """plotly's own validation of every figure: a misspelt property fails here, not silently in the browser."""
    import plotly.graph_objects as go

    for case in (measured_case(gpu=True), measured_case(gauges=False)):
        for kind, figure in case_figures(case, {"total_token_throughput": "tok/s"}, {"failed": 0}):
            if isinstance(figure, dict):
                go.Figure(figure)


def test_the_page_loads_nothing_from_the_network(page_text):
    page = Page(page_text)
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "data", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, name, value)
        assert tag not in ("link", "iframe", "img", "object", "embed") or (attrs.get("href") or "").startswith("data:")
    style = page_text.split("<style>", 1)[1].split("</style>", 1)[0]
    assert "url(" not in style and "@import" not in style
    assert page_text.count("<script>") == 2  # plotly.js once, then the loader


def test_write_html_is_atomic_and_complete(tmp_path):
    path = tmp_path / "sub" / "r.html"
    write_html(path, report(measured_case()))
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]


@pytest.fixture
def no_plotly(monkeypatch):
    """plotly as if not installed: importing it fails."""
    for name in list(sys.modules):
        if name == "plotly" or name.startswith("plotly."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)
    report_html._plotly_js.cache_clear()
    yield
    report_html._plotly_js.cache_clear()


def test_without_plotly_a_clear_error(no_plotly, tmp_path):
    path = tmp_path / "r.html"
    with pytest.raises(HtmlReportUnavailable) as info:
        write_html(path, report(measured_case()))
    assert str(info.value) == "--report-html needs plotly: pip install 'pytest-llmperf[html]'" == PLOTLY_MISSING
    assert not path.exists()
    with pytest.raises(HtmlReportUnavailable, match=re.escape(PLOTLY_MISSING)):
        require_plotly()


def test_without_plotly_the_session_does_not_start(no_plotly, tmp_path):
    from pytest_llmperf.session import UsageProblem, start_session
    from pytest_llmperf.settings import resolve

    settings = resolve({"engine": "sim", "report_html": "r.html"}, {}, {}, tmp_path, tmp_path)
    with pytest.raises(UsageProblem, match=re.escape(PLOTLY_MISSING)):
        start_session(settings)
    dry = resolve({"engine": "sim", "report_html": "r.html", "dry_run": True}, {}, {}, tmp_path, tmp_path)
    start_session(dry)  # a dry run writes no report


def test_report_html_option_resolves_like_report_json(tmp_path):
    from pytest_llmperf.settings import resolve

    inv = tmp_path / "inv"
    assert resolve({}, {}, {}, tmp_path, inv).report_html is None
    assert resolve({"report_html": "a.html"}, {}, {}, tmp_path, inv).report_html == inv / "a.html"
    assert resolve({}, {"LLMPERF_REPORT_HTML": "b.html"}, {}, tmp_path, inv).report_html == inv / "b.html"
    assert resolve({}, {}, {"llmperf_report_html": "c.html"}, tmp_path, inv).report_html == tmp_path / "c.html"
    assert resolve({"report_html": "a.html"}, {"LLMPERF_REPORT_HTML": "b.html"}, {}, tmp_path, inv).report_html == \
        inv / "a.html"


def test_plotly_is_imported_only_to_write_the_page():
    import subprocess

    code = ("import sys, pytest_llmperf.plugin, pytest_llmperf.session, pytest_llmperf.report.html;"
            "print('plotly' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------ in a browser
HEADLESS_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium driven by selenium (skipped when either is absent); always quit."""
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser = None
    if not browser or not driver_path:
        pytest.skip("headless Chromium not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (*HEADLESS_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,3200"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
    import psutil

    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(tmp_path / "chromium-profile") in part for part in p.info["cmdline"] or [])]
    assert left == [], f"Chromium processes left running: {left}"


def test_page_in_a_browser_draws_every_chart_without_errors(chromium, tmp_path):
    data = report(measured_case(gpu=True), measured_case("sim/vllm-tp8/medium"), skipped_case())
    path = tmp_path / "r.html"
    write_html(path, data)
    expected = len(Page(path.read_text()).figures)
    assert expected == 6 + 5
    chromium.get(path.as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    # charts are drawn as the page settles (those in view first); wait for the page to say all are drawn
    WebDriverWait(chromium, 120).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-charts-drawn')") == "all")
    drawn = chromium.execute_script(
        "return Array.from(document.querySelectorAll('div.figure.js-plotly-plot'))"
        ".filter(function(d){return d.querySelector('svg.main-svg')!==null}).length")
    plots = chromium.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
    assert (plots, drawn) == (expected, expected)
    failed = chromium.execute_script("return document.body.innerText.indexOf('could not be drawn')")
    assert failed == -1
    shot = tmp_path / "llmperf-html.png"
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    out = os.environ.get("LLMPERF_SCREENSHOT_OUT")  # a .png path, or any other value for the default place
    if out:
        import tempfile

        shutil.copyfile(shot, out if out.endswith(".png") else Path(tempfile.gettempdir()) / "llmperf-html-screenshot.png")
    errors = [e for e in chromium.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    # nothing was fetched: no script, style, image or font came from anywhere but the file itself
    fetched = chromium.execute_script("return performance.getEntriesByType('resource').map(function(e){return e.name})")
    assert fetched == []
