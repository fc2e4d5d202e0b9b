"""Engines up and down: boot a configuration, or attach to a running endpoint, as context managers.

``boot`` starts the engine's process in its own process group with its output
in a log file, waits until it is ready, yields the running engine and a boot
record, and stops it on every path: SIGTERM to the group, a grace period,
then SIGKILL to every process of the tree still alive. The engine also dies
with pytest: on Linux the kernel sends it SIGTERM when pytest dies
(``PR_SET_PDEATHSIG``, even for ``kill -9``), and a watchdog process ends
what is left of its group and descendants. ``attach`` waits for an external
endpoint and stops nothing.

One readiness loop serves both (``wait_ready``): a launched engine that
refuses connections is "not up yet"; an external one that keeps refusing
them is an error within seconds, and a TLS failure is an error at once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from ..http import BROKEN, REFUSED, TLS, UNREACHABLE, ControlClient, HttpFailure, HttpOptions
from ..secrets import Redactor, redact_argv, redact_env
from ..suite import EngineConfig
from .base import LOCALHOST, EngineAdapter, Launch, free_port

LOG_TAIL_LINES = 50
EXTERNAL_REFUSED_GRACE_S = 3.0  # an external endpoint refusing connections this long is not there
READY_POLL_S = 0.2


class EngineStartError(RuntimeError):
    """The engine did not become ready; the message says why (with its log tail when it has one)."""


@dataclass(frozen=True)
class RunningEngine:
    """An engine that answers: where, what it reports, what it runs on."""

    config: EngineConfig
    base_url: str
    version: str
    served_model: str  # the name requests carry
    command: tuple[str, ...]  # as stored with baselines: no port, no interpreter path, secrets masked
    log_path: Path | None = None
    gpu_uuids: tuple[str, ...] = ()  # the checked GPUs it runs on
    node_live: bool = False  # the GPUs are this machine's, read through NVML (telemetry possible)
    request_fields: Mapping[str, frozenset[str]] | None = None  # accepted request fields per endpoint (None: any)
    http: HttpOptions = HttpOptions()
    process: "EngineProcess | None" = None  # None: not ours (an external endpoint)

    def exit_code(self) -> int | None:
        """The engine's exit status once it has exited (a launched engine only), else None."""
        return self.process.exit_code() if self.process is not None else None


@dataclass(frozen=True)
class BootRecord:
    """What the report says about one boot or attach."""

    config: str
    version: str
    served_model: str
    version_expected: str | None = None
    ready_s: float = 0.0
    log_path: str | None = None
    argv: tuple[str, ...] = ()  # secrets masked
    env: Mapping[str, str] | None = None  # secrets masked
    endpoint: str | None = None
    gpu_uuids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"config": self.config, "version": self.version,
                                "version_expected": self.version_expected, "served_model": self.served_model}
        if self.endpoint is not None:
            data["endpoint"] = self.endpoint
        else:
            data.update(ready_s=round(self.ready_s, 3), log_path=self.log_path, argv=list(self.argv),
                        env=dict(self.env or {}), gpu_uuids=list(self.gpu_uuids))
        return data


def tail(path: Path | None, lines: int = LOG_TAIL_LINES, redactor: Redactor | None = None) -> str:
    if path is None:
        return ""
    try:
        with open(path, errors="replace") as f:
            text = "".join(collections.deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""
    return redactor.scrub(text) if redactor is not None else text


# ----------------------------------------------------------------- readiness
def wait_ready(client: ControlClient, paths: Sequence[str], timeout_s: float, process: "EngineProcess | None" = None,
               poll_s: float = READY_POLL_S, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> float:
    """Seconds until ``paths[0]`` (or, where it answers 404, the next path) answers 200.

    With ``process`` (a launched engine): refused connections, resets and
    503 mean "not yet"; the process exiting fails at once. Without (an
    external endpoint): a TLS failure, a host that cannot be resolved or
    reached, and HTTP 401/403 (a key or header missing) fail at once;
    connections refused (or broken off: an https server asked over http) for
    a few seconds fail with "connection refused at URL". EngineStartError
    otherwise after ``timeout_s``, naming what was last seen.
    """
    start = clock()
    refused_since: float | None = None
    path_index = 0
    last = "no answer yet"
    while True:
        if process is not None and process.exit_code() is not None:
            raise EngineStartError(f"engine exited with code {process.exit_code()} before it was ready; "
                                   f"last lines of {process.log_path}:\n" + process.log_tail())
        path = paths[path_index]
        try:
            status = client.get(path, timeout_s=min(5.0, max(timeout_s, 0.1))).status
        except HttpFailure as exc:
            last = str(exc)
            if process is None and exc.kind in (TLS, UNREACHABLE):  # neither mends itself by waiting
                raise EngineStartError(f"endpoint {client.base_url} is not reachable: {exc}") from None
            if process is None and exc.kind in (REFUSED, BROKEN):
                refused_since = clock() if refused_since is None else refused_since
                if clock() - refused_since >= EXTERNAL_REFUSED_GRACE_S:
                    hint = ("is the server running, and is --endpoint right?" if exc.kind == REFUSED else
                            "if it serves https, give an https:// URL" if client.base_url.startswith("http:")
                            else "is it an OpenAI-compatible server?")
                    raise EngineStartError(f"endpoint {client.base_url} is not reachable: {exc}; {hint}") from None
            else:
                refused_since = None
        else:
            refused_since = None
            if status == 200:
                return clock() - start
            if status == 404 and path_index + 1 < len(paths):
                path_index += 1  # a server without this route: ready once the next one answers
                continue
            if process is None and status in (401, 403):
                raise EngineStartError(
                    f"endpoint {client.base_url} refused the plugin: {client.url(path)} answered HTTP {status}; "
                    f"give its API key (OPENAI_API_KEY, or --api-key-env NAME) or the header it needs (--header)")
            last = f"{client.url(path)} answered HTTP {status}"
        if clock() - start > timeout_s:
            where = f"; last lines of {process.log_path}:\n" + process.log_tail() if process is not None else ""
            raise EngineStartError(f"engine not ready after {timeout_s:g} s (last: {last}){where}")
        sleep(poll_s)


def served_model(client: ControlClient, launch: Launch, config: EngineConfig) -> str:
    """The model name requests carry: the one given, else what ``/v1/models`` lists (the loaded one first)."""
    if launch.served_model_name:
        return launch.served_model_name
    fallback = launch.model or config.model
    try:
        data = client.get("/v1/models", timeout_s=10).json().get("data", [])
        ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (HttpFailure, ValueError, AttributeError, TypeError):
        return fallback
    for candidate in (launch.model, config.model):
        if candidate in ids:
            return candidate
    return ids[0] if ids else fallback


# ----------------------------------------------------------------- boot and attach
class GpuRelease(Protocol):
    """What happens around an engine's life on live GPUs: note what was there before, wait until freed after."""

    def before(self) -> None: ...

    def wait_freed(self) -> None: ...


@contextlib.contextmanager
def boot(config: EngineConfig, adapter: EngineAdapter, launch: Launch, log_path: Path, http: HttpOptions,
         startup_timeout_s: float, redactor: Redactor, node_live: bool = False,
         gpus: GpuRelease | None = None, port: int | None = None) -> Iterator[tuple[RunningEngine, BootRecord]]:
    """Start ``config`` (its output to ``log_path``), wait until ready, yield it, stop it on every path.

    ``gpus`` (live GPUs only): what was on them is noted before the boot; after
    the stop, the engine's GPUs are waited for until freed (not after Ctrl-C).
    Its failure (GPUs not freed) is raised after the stop unless another
    failure came first. ``port``: the port it listens on (one reserved with its GPU lease), else a free one.
    """
    port = port or free_port()
    launch = replace(launch, port=str(port))
    argv = adapter.argv(config, launch)
    env = adapter.env(config, launch)
    base_url = f"http://{LOCALHOST}:{port}"
    process = EngineProcess(argv, env, log_path, redactor)
    if gpus is not None:
        gpus.before()
    try:
        with ControlClient(base_url, http) as client:
            process.start()
            ready_s = wait_ready(client, (adapter.ready_path,), startup_timeout_s, process)
            version = adapter.version(client)
            served = served_model(client, launch, config)
        engine = RunningEngine(config, base_url, version, served, tuple(redact_argv(adapter.display_argv(config, launch))),
                               log_path, launch.gpu_uuids, node_live, adapter.request_fields, http, process)
        record = BootRecord(config.id, version, served, config.engine_version or None, ready_s, str(log_path),
                            tuple(redact_argv(argv)), redact_env(env), None, launch.gpu_uuids)
        yield engine, record
    except Exception:
        process.stop()
        if gpus is not None:
            with contextlib.suppress(Exception):  # the failure that came first stays the one raised
                gpus.wait_freed()
        raise
    except BaseException:  # Ctrl-C: stop the engine, do not wait on NVML
        process.stop()
        raise
    process.stop()
    if gpus is not None:
        gpus.wait_freed()


@contextlib.contextmanager
def attach(config: EngineConfig, adapter: Any, launch: Launch, http: HttpOptions, timeout_s: float,
           node_live: bool = False) -> Iterator[tuple[RunningEngine, BootRecord]]:
    """An already-running endpoint: wait until it answers, read its version and model; nothing is stopped."""
    base_url = adapter.base_url(config)
    with ControlClient(base_url, http) as client:
        wait_ready(client, ("/health", "/v1/models"), timeout_s)
        version = adapter.version(client)
        served = served_model(client, launch, config)
    engine = RunningEngine(config, base_url, version, served, (base_url,), None, launch.gpu_uuids, node_live,
                           adapter.request_fields, http)
    yield engine, BootRecord(config.id, version, served, config.engine_version or None, endpoint=base_url)


# ----------------------------------------------------------------- the process
_LIVE: "weakref.WeakSet[EngineProcess]" = weakref.WeakSet()


def stop_all() -> None:
    """Stop every engine still running (last line of defence at exit)."""
    for proc in list(_LIVE):
        proc.stop()


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux only), looked up once in the parent."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs between fork and exec so the kernel signals it when pytest dies (Linux only).

    Everything is resolved here, in the parent: the child must neither import nor look anything up before
    exec. The kernel signals when the thread that started the engine ends: engines are started from pytest's
    main thread.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    pr_set_pdeathsig, sigterm, parent = 1, int(signal.SIGTERM), os.getpid()

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # pytest died before the request took hold: do not start at all
            os._exit(1)

    return die_with_parent


class EngineProcess:
    """A launched engine: start, watch, stop (whole tree). Its log file is the engine's output."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path, redactor: Redactor | None = None):
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.redactor = redactor or Redactor()
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None

    def exit_code(self) -> int | None:
        """The engine's exit status once it has exited, else None."""
        return self.proc.poll() if self.proc is not None else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines, self.redactor)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(redact_argv(self.argv)) + "\n").encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env},
                    start_new_session=True,  # own process group: signals reach the whole engine
                    preexec_fn=_die_with_parent(),
                )
            except OSError as exc:
                log.write(f"cannot start {self.argv[0]}: {exc}\n".encode())
                raise EngineStartError(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}; is the engine installed "
                                       f"and on PATH? (log: {self.log_path})") from None
        _LIVE.add(self)
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "pytest_llmperf.engines.watchdog", "--parent", str(os.getpid()),
             "--engine", str(self.proc.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is pytest's to handle, not the watchdog's
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left of the tree; then the watchdog.

        A Ctrl-C or SIGTERM arriving meanwhile does not cut this short: the
        tree is killed first, then the interrupt goes on.
        """
        interrupted: BaseException | None = None
        while self.proc is not None:
            try:
                _stop_tree(self.proc, grace_s)
            except KeyboardInterrupt as exc:
                interrupted, grace_s = exc, 0.0  # second signal: stop waiting, kill now
                continue
            self.proc = None
        if self.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                self.watchdog.terminate()
            try:
                self.watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - it sleeps 0.2 s at a time
                self.watchdog.kill()
                self.watchdog.wait()
            self.watchdog = None
            self._scrub_log()
        _LIVE.discard(self)
        if interrupted is not None:
            raise interrupted

    def _scrub_log(self) -> None:
        """Mask secrets the engine printed (an API key among its arguments, say) in its log.

        Read line by line (logs can be large); rewritten, atomically, only when a line held one.
        """
        if not self.redactor.active:
            return
        try:
            with open(self.log_path, errors="replace") as log:
                if not any(self.redactor.scrub(line) != line for line in log):
                    return
                log.seek(0)
                fd, tmp = tempfile.mkstemp(dir=self.log_path.parent, prefix=f".{self.log_path.name}.")
                with os.fdopen(fd, "w") as out:
                    out.writelines(self.redactor.scrub(line) for line in log)
            os.replace(tmp, self.log_path)
        except OSError:
            return

    def __enter__(self) -> "EngineProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_tree(proc: "subprocess.Popen[bytes]", grace_s: float) -> None:
    import psutil

    def tree() -> list[psutil.Process]:
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    members = {p.pid: p for p in tree()}
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    members.update((p.pid, p) for p in tree())  # children spawned since
    _, alive = psutil.wait_procs(list(members.values()), timeout=max(0.0, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    psutil.wait_procs(alive, timeout=5)
    proc.wait()
