"""pytest glue only: options, ini, collection, parametrization, fixtures, summary.

Everything a run does happens in the ``Session``; this module turns pytest's
hooks into calls on it, and its answers into pytest outcomes. Heavy imports
(aiohttp, pynvml, psutil) happen only when a case runs, so ``pytest --help``
works on any machine.
"""

from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .settings import OPTIONS, Settings, SettingsError, resolve

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session
    from .suite import Case

CASES_MODULE = Path(__file__).with_name("cases.py")
SESSION_KEY = pytest.StashKey["Session"]()
SIGNALS_KEY = pytest.StashKey[dict]()
CASE_KEY = pytest.StashKey["Case"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM serving performance (pytest-llmperf)")
    for spec in OPTIONS:
        if spec.is_flag:
            group.addoption(spec.flag, action="store_true", default=False, dest=f"llmperf_{spec.dest}", help=spec.help)
        elif spec.repeatable:
            group.addoption(spec.flag, action="append", default=None, dest=f"llmperf_{spec.dest}",
                            metavar=spec.metavar, help=spec.help)
        else:
            group.addoption(spec.flag, default=None, dest=f"llmperf_{spec.dest}", metavar=spec.metavar, help=spec.help)
        if spec.ini:
            parser.addini(spec.ini, help=spec.help, type="linelist" if spec.repeatable else "string",
                          default=[] if spec.repeatable else "")


def _settings(config: pytest.Config) -> Settings:
    cli = {s.dest: config.getoption(f"llmperf_{s.dest}") for s in OPTIONS}
    ini = {s.ini: config.getini(s.ini) for s in OPTIONS if s.ini}
    try:
        return resolve(cli, os.environ, ini, config.rootpath, config.invocation_params.dir)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmperf: a performance case of pytest-llmperf")
    if not config.pluginmanager.hasplugin("xdist"):  # the cases carry xdist_group marks (their configuration)
        config.addinivalue_line("markers", "xdist_group(name): cases pytest-xdist keeps on one worker")
    settings = _settings(config)
    if not settings.active:
        return
    worker = getattr(config, "workerinput", None)
    distributed = worker is None and _distributed(config)
    if distributed and config.option.dist != "loadgroup":
        raise pytest.UsageError(f"performance cases under pytest-xdist need --dist loadgroup (not "
                                f"{config.option.dist}): each engine configuration then runs on one worker and boots "
                                f"once; add --dist loadgroup")
    if distributed and settings.dry_run:
        raise pytest.UsageError("--dry-run prints the plan without pytest-xdist: drop -n/--tx")
    from .session import UsageProblem, start_session

    try:
        session = start_session(settings)
    except UsageProblem as exc:
        raise pytest.UsageError(str(exc)) from None
    if worker is not None:
        session.role, session.worker_id = "worker", str(worker.get("workerid", "worker"))
    elif distributed:
        session.role = "controller"
    session.say = _sayer(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(_Reporter(session, config), "llmperf-session")
    atexit.register(_stop_engines)
    # SIGTERM and SIGHUP (a dropped terminal) take the Ctrl-C path, so fixtures tear engines down.
    config.stash[SIGNALS_KEY] = {
        sig: signal.signal(sig, _signal_as_interrupt)
        for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
        if sig is not None
    }


def _distributed(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller handing the cases to workers."""
    option = config.option
    return (getattr(option, "dist", "no") != "no" and bool(getattr(option, "tx", None))
            and not option.collectonly)


def _sayer(config: pytest.Config) -> Any:
    """A line for the user now, past pytest's capture (a worker's goes to the terminal pytest-xdist started from)."""
    import contextlib
    import sys

    def say(text: str) -> None:
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            sys.stderr.write(f"\n{text}\n")
            sys.stderr.flush()

    return say


def _stop_engines() -> None:
    from .engines.lifecycle import stop_all

    stop_all()


def _signal_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        _stop_engines()
        for sig, previous in config.stash.get(SIGNALS_KEY, {}).items():
            signal.signal(sig, previous)


def _session(config: pytest.Config) -> "Session | None":
    return config.stash.get(SESSION_KEY, None)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With --engine, the performance cases are the whole session.
    if _session(config) is not None and collection_path != CASES_MODULE:
        return True
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    perf = _session(config)
    if perf is None:
        return (yield)
    # Paths named on the command line are collected even when ignored: with --engine they are not run.
    foreign = [item for item in items if item.path != CASES_MODULE]
    if foreign:
        items[:] = [item for item in items if item.path == CASES_MODULE]
        config.hook.pytest_deselected(items=foreign)
    module = pytest.Module.from_parent(session, path=CASES_MODULE, nodeid="llmperf")
    items.extend(session.genitems(module))
    for item in items:
        item.stash[CASE_KEY] = item.callspec.params["llmperf_case"]
    result = yield
    # Keep the suite's order (configurations grouped, workloads as written).
    order = {case_id: n for n, case_id in enumerate(perf.cases)}
    items.sort(key=lambda item: order.get(item.stash[CASE_KEY].id, -1))
    perf.select({item.stash[CASE_KEY].id for item in items})
    return result


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    perf = _session(metafunc.config)
    if perf is None or metafunc.definition.path != CASES_MODULE:
        return
    cases = list(perf.cases.values())
    metafunc.parametrize(
        ("llmperf_config", "llmperf_case"),
        # one xdist group per configuration: under --dist loadgroup its cases run on one worker
        [pytest.param(c.config, c, marks=pytest.mark.xdist_group(c.config.id)) for c in cases],
        ids=[c.id for c in cases],
        indirect=["llmperf_config"],
        scope="session",
    )


@pytest.fixture(scope="session")
def llmperf_session(request: pytest.FixtureRequest) -> "Session":
    """The performance session (settings, cases, results)."""
    perf = _session(request.config)
    if perf is None:
        pytest.skip("performance cases run only with --engine")
    return perf


@pytest.fixture(scope="session")
def llmperf_config(request: pytest.FixtureRequest):
    """The engine configuration of this group of cases."""
    return request.param


@pytest.fixture(scope="session")
def llmperf_engine(llmperf_config, llmperf_session, tmp_path_factory: pytest.TempPathFactory):
    """The configuration's engine, booted once, stopped on every path."""
    from .session import NodeDirty

    log_dir = llmperf_session.settings.log_dir or tmp_path_factory.getbasetemp() / "llmperf-logs"
    up = None
    failure = None
    try:
        with llmperf_session.engine(llmperf_config, log_dir) as up:
            if up.engine is not None:
                yield up.engine
    except NodeDirty as exc:  # after the engine stopped: the message says it all
        failure = str(exc)
    # outside the except blocks, so pytest does not print the message twice ("during handling of ...")
    if up is not None and up.engine is None:
        if up.expected:
            pytest.xfail(up.failure)
        pytest.fail(up.failure, pytrace=False)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def _short(report: pytest.TestReport) -> str:
    """What went wrong, as the exception said it (not where)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # skip: (file, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr or "")
    return text.strip()[:2000]


def _outcome(report: pytest.TestReport) -> tuple[str, str] | None:
    """A report as the session records it: (outcome, message), or None when it changes nothing."""
    if hasattr(report, "wasxfail"):
        return "xfailed", str(report.wasxfail)
    if report.when == "call":
        outcome = "passed" if report.passed else "skipped" if report.skipped else "failed"
        return outcome, _short(report) if not report.passed else ""
    if report.failed:
        return "error", _short(report)
    if report.skipped and report.when == "setup":
        return "skipped", _short(report)
    return None


class _Reporter:
    """Hooks of an active session: outcomes to the session, then the summary and the reports."""

    def __init__(self, session: "Session", config: pytest.Config):
        self.session = session
        self.config = config
        self._selected = False

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from .progress import LogProgress, progress_for, under_ci

        if self.session.role != "worker":
            self.session.progress = progress_for(session.config, os.environ)
        elif under_ci(os.environ) and session.config.option.verbose >= -1:
            # A worker has no terminal line of its own to draw on; under CI its line a minute goes to the log.
            self.session.progress = LogProgress(self.session.say)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any):
        report = yield
        case = item.stash.get(CASE_KEY, None)
        if case is not None:
            report.llmperf_case = case.id  # travels with the report, whatever pytest calls the item
            if report.when == "call" or (report.when == "setup" and not report.passed):
                # JUnit XML takes properties from the teardown report, which copies the item's
                item.user_properties.extend(self._properties(case.id, report))
            if report.when in ("setup", "teardown") and self.session.role == "worker":
                # The controller writes every result: the case, and the worker's run so far, travel with the
                # report; with the setup report too, so a worker that dies mid-case has told where its engine ran.
                report.llmperf_wire = self.session.case_wire(case.id)
                report.llmperf_worker = self.session.worker_state()
        return report

    def _properties(self, case_id: str, report: pytest.TestReport) -> list[tuple[str, str]]:
        from .report.junit import case_status, junit_properties

        result = self.session.results.get(case_id)
        if result is None:
            return []
        outcome = _outcome(report)
        status = case_status(result.verdict_status, outcome[0] if outcome else "")
        properties = junit_properties([v.to_json() for v in result.verdicts], status, result.engine_version,
                                      result.baseline_file, result.colocated_with)
        return [(name, self.session.redactor.scrub(value)) for name, value in properties]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        wire, state = getattr(report, "llmperf_wire", None), getattr(report, "llmperf_worker", None)
        if self.session.role == "controller":
            if state:
                self.session.absorb_worker(state)
            if wire:
                self.session.absorb_case(wire)
        outcome = _outcome(report)
        case_id = getattr(report, "llmperf_case", None)
        if outcome is not None and case_id is not None:
            self.session.record_outcome(case_id, *outcome)
        for nodeid, message in getattr(report, "llmperf_not_run", None) or []:
            self._fail_unrun(report, nodeid, message)

    def _fail_unrun(self, crashed: pytest.TestReport, nodeid: str, message: str) -> None:
        """A case of a crashed worker's configuration, never run: failed, as the crash says."""
        from .fleet import case_id_of

        where = nodeid.split("::")[0]
        report = pytest.TestReport(nodeid=nodeid, location=(where, None, nodeid), keywords={}, outcome="failed",
                                   longrepr=message, when="call")
        report.node = getattr(crashed, "node", None)  # type: ignore[attr-defined]
        report.llmperf_case = case_id_of(nodeid)  # type: ignore[attr-defined]
        self.config.hook.pytest_runtest_logreport(report=report)

    # ----------------------------------------------------------- pytest-xdist, on the controller
    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.option.dist != "loadgroup":
            return None
        from .fleet import make_scheduler

        return make_scheduler(config, log)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Any) -> None:
        from .fleet import case_id_of

        if not self._selected:  # every worker collects the same items
            self._selected = True
            self.session.select({c for c in map(case_id_of, ids) if c})

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        from .fleet import case_id_of, crash_message, not_run_message

        case_id = case_id_of(crashitem)
        if case_id is None:
            return
        node = getattr(report, "node", None)
        worker = str(node.gateway.id) if node is not None else "?"
        report.llmperf_case = case_id  # type: ignore[attr-defined]
        known = self.session.results.get(case_id)
        log_path = known.log_path if known is not None else None
        report.longrepr = crash_message(worker, case_id, log_path or self._log_of(worker, case_id))
        report.when = "call"  # the case failed while it ran (xdist's "???" would count it as an error)
        dropped = getattr(sched, "dropped", {}).pop(crashitem, [])
        self.session.worker_died(worker, case_id, [c for c in map(case_id_of, dropped) if c])
        report.llmperf_not_run = [(n, not_run_message(worker, case_id, case_id_of(n) or n))  # type: ignore[attr-defined]
                                  for n in dropped]

    def _log_of(self, worker: str, case_id: str) -> str | None:
        """Where a local worker that died before it said anything (while its engine booted) kept the engine's log:
        its --log-dir, or its basetemp's (pytest-xdist gives each worker basetemp/popen-<id>); None if not there."""
        from .fleet import config_id_of

        name = config_id_of(case_id).replace("/", "-", 1) + ".log"
        if self.session.settings.log_dir is not None:
            path = Path(self.session.settings.log_dir) / name
        else:
            factory = getattr(self.config, "_tmp_path_factory", None)  # where pytest-xdist itself takes it from
            if factory is None:
                return None
            path = factory.getbasetemp() / f"popen-{worker}" / "llmperf-logs" / name
        return str(path) if path.is_file() else None

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        state = getattr(node, "workeroutput", {}).get("llmperf_worker")
        if state and self.session.role == "controller":
            self.session.absorb_worker(state)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """--dry-run: say what would run, start nothing."""
        if not self.session.settings.dry_run or session.config.option.collectonly:
            return None
        lines, fits = self.session.dry_run()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_sep("=", "llmperf dry run: nothing is started")
            for line in lines:
                tr.write_line(line)
        if not fits:
            session.testsfailed += 1  # the node would refuse the run: fail the dry run too
        return True

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if config.option.collectonly or self.session.settings.dry_run or self.session.role == "worker":
            return
        from .report.terminal import summary_lines

        terminalreporter.write_sep("=", "llmperf summary")
        for line, warn in summary_lines(self.session):
            terminalreporter.write_line(line, yellow=warn, bold=warn)

    @pytest.hookimpl(trylast=True)  # after pytest tore the engines down (on -x or Ctrl-C it does so here)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.session.settings.dry_run or session.config.option.collectonly:
            return
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # what the last teardown report could not carry
            workeroutput["llmperf_worker"] = self.session.worker_state()
        self.session.finish()
        if self.session.write_problems and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
