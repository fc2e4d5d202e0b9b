"""pytest glue only: options, ini, collection, parametrization, fixtures, summary.

Heavy imports (aiohttp, pynvml, requests) happen only when a case runs, so
``pytest --help`` works on any machine.
"""

from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .engines import EngineUnavailable, get_adapter
from .settings import OPTIONS, Settings, SettingsError, resolve
from .suite import SuiteError, load_builtin_suite, load_suite_file

if TYPE_CHECKING:  # pragma: no cover
    from .runner import PerfRun
    from .suite import Suite

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
        suite = _suite(settings)
        for engine_config in suite.configs:
            if engine_config.engine in settings.engines:
                get_adapter(engine_config.engine).validate(engine_config)
        if settings.gpu_snapshot is not None:
            from .node.snapshot import load_snapshot

            load_snapshot(settings.gpu_snapshot)
            real = sorted({c.engine for c in suite.configs if c.engine in settings.engines
                           and get_adapter(c.engine).uses_gpus})
            if real and not settings.dry_run:
                raise SettingsError(
                    f"--gpu-snapshot checks a recorded node, but {', '.join(real)} would boot on this machine's GPUs: "
                    f"use it with --dry-run (or the sim); real runs check the live node"
                )
    except (EngineUnavailable, SuiteError, SettingsError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    missing = [e for e in settings.engines if e not in suite.engines()]
    if missing:
        raise pytest.UsageError(f"suite {suite.source} has no configurations for engine(s) {', '.join(missing)}; "
                                f"it has: {', '.join(suite.engines())}")
    if settings.num_prompts:
        suite = suite.with_num_prompts(settings.num_prompts)
    run = PerfRun(settings, suite, suite.cases(settings.engines))
    if settings.tokenizer_path is not None:
        try:
            run.tokenizer()  # a bad tokenizer.json is a usage error, before anything boots
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(_RunReporter(run), "llmperf-run")
    atexit.register(_stop_engines)
    # SIGTERM and SIGHUP (a dropped terminal) take the Ctrl-C path, so fixtures tear engines down.
    config.stash[SIGNALS_KEY] = {
        sig: signal.signal(sig, _signal_as_interrupt)
        for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
        if sig is not None
    }


def _suite(settings: Settings) -> "Suite":
    """The suite file, or the built-in preset of the engines; ``external`` gets an endpoint configuration."""
    import dataclasses

    from .suite import EngineConfig

    if settings.suite_file:
        suite = load_suite_file(settings.suite_file)
    else:
        booted = [e for e in settings.engines if e != "external"]
        # An external endpoint alone runs the seed's workloads (the preset of the real engines).
        suite = load_builtin_suite(booted or ["vllm"])
        if not booted:
            suite = dataclasses.replace(suite, configs=())
    if "external" not in settings.engines:
        return suite
    external = [c for c in suite.configs if c.engine == "external"]
    if settings.endpoint is not None:
        configs = [
            dataclasses.replace(c, options=tuple(sorted({**dict(c.options), "endpoint": settings.endpoint}.items())))
            if c.engine == "external" else c
            for c in suite.configs
        ]
        if not external:
            configs.append(EngineConfig("external", "endpoint", suite.model, options=(("endpoint", settings.endpoint),),
                                        description=f"the server at {settings.endpoint}"))
        suite = dataclasses.replace(suite, configs=tuple(configs))
    elif not external:
        raise SuiteError("--engine=external needs --endpoint URL (the base URL of a running OpenAI-compatible server)")
    return suite


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
    from .engines.base import EngineStartError
    from .runner import ExpectedFailure, NodeUnfit

    log_dir = llmperf_run.settings.log_dir or tmp_path_factory.getbasetemp() / "llmperf-logs"
    expected = failure = None
    try:
        with llmperf_run.engine(llmperf_config, log_dir) as engine:
            yield engine
    except ExpectedFailure as exc:
        expected = str(exc)
    except (EngineStartError, NodeUnfit) as exc:  # the message says it all: no traceback of our own code
        failure = str(exc)
    # outside the except blocks, so pytest does not print the message twice ("during handling of ...")
    if expected is not None:
        pytest.xfail(expected)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


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

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from .progress import TerminalProgress

        self.run.progress = TerminalProgress.for_config(session.config)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.run.results.get(_case_id(report.nodeid))
        if result is None:
            return
        if hasattr(report, "wasxfail"):
            result.outcome = "xfailed"
            result.message = str(report.wasxfail)
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
        if run.settings.dry_run:
            return
        tr.write_sep("=", "llmperf summary")
        for text in dict.fromkeys(v.describe() for v in (run._node_verdicts or {}).values()):
            tr.write_line(text)
        for note in run.summary_notes():
            tr.write_line(f"note: {note}", yellow=True, bold=True)
        if run.results:
            tr.write_line(summary_tables(run.results.values()))
            for result in run.results.values():
                if result.failure_reasons and result.metrics.get("failed"):
                    tr.write_line(f"{result.id}: {result.metrics['failed']} requests failed: "
                                  + "; ".join(result.failure_reasons), yellow=True)
        for update in run.updates:
            tr.write_line(f"baseline updated: {update.case_id} -> {update.path}")
            for line in update.lines:
                tr.write_line(f"    {line}")
        if run.settings.report_json:
            tr.write_line(f"report written to {run.settings.report_json}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """--dry-run: say what would run, start nothing."""
        if not self.run.settings.dry_run or session.config.option.collectonly:
            return None
        configs: list = []
        for item in session.items:
            config = getattr(item, "callspec", None) and item.callspec.params.get("llmperf_config")
            if config is not None and config not in configs:
                configs.append(config)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = self.run.plan(configs) if configs else ["no configuration selected"]
        if tr is not None:
            tr.write_sep("=", "llmperf dry run: nothing is started")
            for line in lines:
                tr.write_line(line)
        if any(not v.ok for v in self.run.node_verdicts().values()):
            session.testsfailed += 1  # the node would refuse the run: fail the dry run too
        return True

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.run.settings.dry_run:
            return
        if self.run.settings.report_json and not session.config.option.collectonly:
            from .report import json_report, write_json

            write_json(self.run.settings.report_json, json_report(self.run.results.values(), self.run.environment()))
