"""pytest glue only: options, ini, collection, parametrization, fixtures, summary.

Heavy imports (aiohttp, pynvml, requests) happen only when a case runs, so
``pytest --help`` works on any machine.
"""

from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .engines import EngineUnavailable, get_adapter
from .settings import OPTIONS, Settings, SettingsError, resolve
from .suite import SuiteError, load_builtin_suite, load_suite_file

CASES_MODULE = Path(__file__).with_name("cases.py")
RUN_KEY = pytest.StashKey["PerfRun"]()
SIGNALS_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM serving performance (pytest-llmperf)")
    for spec in OPTIONS:
        if spec.is_flag:
            group.addoption(spec.flag, action="store_true", default=False, dest=f"llmperf_{spec.dest}", help=spec.help)
        else:
            group.addoption(spec.flag, default=None, dest=f"llmperf_{spec.dest}", metavar=spec.metavar, help=spec.help)
        if spec.ini:
            parser.addini(spec.ini, help=spec.help, default="")


def _settings(config: pytest.Config) -> Settings:
    cli = {s.dest: config.getoption(f"llmperf_{s.dest}") for s in OPTIONS}
    ini = {s.ini: config.getini(s.ini) for s in OPTIONS if s.ini}
    try:
        return resolve(cli, os.environ, ini, config.rootpath, config.invocation_params.dir)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmperf: a performance case of pytest-llmperf")
    settings = _settings(config)
    if not settings.active:
        return
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError("performance cases cannot run under pytest-xdist (-n): workers would share the node")
    from .runner import PerfRun

    try:
        for engine in settings.engines:
            get_adapter(engine)
        suite = load_suite_file(settings.suite_file) if settings.suite_file else load_builtin_suite(settings.engines)
        for engine_config in suite.configs:
            if engine_config.engine in settings.engines:
                get_adapter(engine_config.engine).validate(engine_config)
    except (EngineUnavailable, SuiteError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    missing = [e for e in settings.engines if e not in suite.engines()]
    if missing:
        raise pytest.UsageError(f"suite {suite.source} has no configurations for engine(s) {', '.join(missing)}; "
                                f"it has: {', '.join(suite.engines())}")
    if settings.num_prompts:
        suite = suite.with_num_prompts(settings.num_prompts)
    run = PerfRun(settings, suite, suite.cases(settings.engines))
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(_RunReporter(run), "llmperf-run")
    atexit.register(_stop_engines)
    # SIGTERM and SIGHUP (a dropped terminal) take the Ctrl-C path, so fixtures tear engines down.
    config.stash[SIGNALS_KEY] = {
        sig: signal.signal(sig, _signal_as_interrupt)
        for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
        if sig is not None
    }


def _stop_engines() -> None:
    from .engines.base import stop_all

    stop_all()


def _signal_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if RUN_KEY in config.stash:
        _stop_engines()
        for sig, previous in config.stash.get(SIGNALS_KEY, {}).items():
            signal.signal(sig, previous)


def _run(config: pytest.Config) -> "PerfRun | None":
    return config.stash.get(RUN_KEY, None)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With --engine, the performance cases are the whole session.
    if _run(config) is not None and collection_path != CASES_MODULE:
        return True
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    run = _run(config)
    if run is None:
        return (yield)
    # Paths named on the command line are collected even when ignored: with
    # --engine they are not run.
    foreign = [item for item in items if item.path != CASES_MODULE]
    if foreign:
        items[:] = [item for item in items if item.path == CASES_MODULE]
        config.hook.pytest_deselected(items=foreign)
    module = pytest.Module.from_parent(session, path=CASES_MODULE, nodeid="llmperf")
    items.extend(session.genitems(module))
    result = yield
    # Keep the suite's order (configurations grouped, workloads as written).
    order = {case.id: n for n, case in enumerate(run.cases)}
    items.sort(key=lambda item: order.get(_case_id(item.nodeid), -1))
    selected = {_case_id(item.nodeid) for item in items}
    run.results = {case_id: r for case_id, r in run.results.items() if case_id in selected}
    return result


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    run = _run(metafunc.config)
    if run is None or metafunc.definition.path != CASES_MODULE:
        return
    metafunc.parametrize(
        ("llmperf_config", "llmperf_workload"),
        [(c.config, c.workload) for c in run.cases],
        ids=[c.id for c in run.cases],
        indirect=["llmperf_config"],
        scope="session",
    )


@pytest.fixture(scope="session")
def llmperf_run(request: pytest.FixtureRequest) -> "PerfRun":
    """The performance run of this session (settings, suite, results)."""
    run = _run(request.config)
    if run is None:
        pytest.skip("performance cases run only with --engine")
    return run


@pytest.fixture(scope="session")
def llmperf_config(request: pytest.FixtureRequest):
    """The engine configuration of this group of cases."""
    return request.param


@pytest.fixture(scope="session")
def llmperf_engine(llmperf_config, llmperf_run, tmp_path_factory: pytest.TempPathFactory):
    """The configuration's engine, booted once, stopped on every path."""
    log_dir = llmperf_run.settings.log_dir or tmp_path_factory.getbasetemp() / "llmperf-logs"
    with llmperf_run.engine(llmperf_config, log_dir) as engine:
        yield engine


def _case_id(nodeid: str) -> str:
    return nodeid[nodeid.find("[") + 1 : -1] if nodeid.endswith("]") else ""


def _short(report: pytest.TestReport) -> str:
    """What went wrong, as the exception said it (not where)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # skip: (file, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr or "")
    return text.strip()[:2000]


class _RunReporter:
    """Per-session hooks of an active run: outcomes, summary, JSON report."""

    def __init__(self, run: "PerfRun"):
        self.run = run

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.run.results.get(_case_id(report.nodeid))
        if result is None:
            return
        if report.when == "call":
            result.outcome = "passed" if report.passed else "skipped" if report.skipped else "failed"
        if report.failed:
            if report.when != "call":
                result.outcome = "error"
            if not result.message:
                result.message = _short(report)
        elif report.skipped and report.when == "setup":
            result.outcome = "skipped"
            result.message = _short(report)

    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        from .report import summary_tables

        if config.option.collectonly:
            return
        run, tr = self.run, terminalreporter
        tr.write_sep("=", "llmperf summary")
        for verdict in (run._node_verdicts or {}).values():
            tr.write_line(verdict.describe())
        if run.results:
            tr.write_line(summary_tables(run.results.values()))
        for update in run.updates:
            tr.write_line(f"baseline updated: {update.case_id} -> {update.path}")
            for line in update.lines:
                tr.write_line(f"    {line}")
        if run.settings.report_json:
            tr.write_line(f"report written to {run.settings.report_json}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.run.settings.report_json and not session.config.option.collectonly:
            from .report import json_report, write_json

            write_json(self.run.settings.report_json, json_report(self.run.results.values(), self.run.environment()))
