"""What every engine shares: the adapter interface and the engine process.

An ``EngineProcess`` runs in its own process group with its output in a log
file; it is ready when ``GET <ready_path>`` answers 200 (refused connections
and 503 mean "not yet"), fails at once when the process exits first, and is
stopped on every path: SIGTERM to the group, a grace period, then SIGKILL to
every process of the tree that is still alive.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from ..suite import EngineConfig

LOCALHOST = "127.0.0.1"
PORT_PLACEHOLDER = "{port}"
LOG_TAIL_LINES = 50


class EngineStartError(RuntimeError):
    """The engine did not become ready; the message carries its log tail."""


@dataclass(frozen=True)
class Launch:
    """Where and how one configuration is launched (chosen at boot, or shown by --dry-run)."""

    host: str = LOCALHOST
    port: str = PORT_PLACEHOLDER
    model: str = ""  # what the engine loads: a hub id or a local path
    served_model_name: str | None = None  # None: the engine's own default
    chat_template: Path | None = None
    slowdown: float = 1.0  # the simulated engine only
    gpu_uuids: tuple[str, ...] = ()  # the checked GPUs the engine gets


class EngineAdapter:
    """One engine: its command line, environment, readiness and version.

    Each engine's flags live in its own module; nothing here knows them.
    """

    name = "engine"
    ready_path = "/health"
    version_paths: tuple[str, ...] = ("/version",)
    uses_gpus = False  # the engine runs on the node's GPUs (gets CUDA_VISIBLE_DEVICES, is watched by NVML)
    boots = True  # False: the engine is already running somewhere (nothing to launch)
    startup_timeout_s = 600.0  # default wait for readiness; --startup-timeout overrides
    takes_served_model_name = True  # the engine can serve under another name (or, external: already does)
    option_keys: frozenset[str] = frozenset()  # engine-specific keys a suite configuration may set
    # Top-level request fields the engine accepts, per endpoint path; None: any (the OpenAI fields the client sends).
    request_fields: Mapping[str, frozenset[str]] | None = None

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        raise NotImplementedError

    def validate(self, config: EngineConfig) -> None:
        """Raise ValueError, naming the configuration, if it cannot be launched."""
        unknown = sorted(k for k, _ in config.options if k not in self.option_keys)
        if unknown:
            valid = ", ".join(sorted(self.option_keys)) or "none"
            raise ValueError(f"{config.id}: unknown keys {unknown} for engine {self.name}; valid engine keys: {valid}")

    def env(self, config: EngineConfig, launch: Launch) -> dict[str, str]:
        """Variables set on top of the current environment."""
        env = dict(config.env)
        if self.uses_gpus and launch.gpu_uuids:
            # NVML's index order ignores CUDA_VISIBLE_DEVICES; UUIDs name the checked GPUs exactly.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(launch.gpu_uuids)
        return env

    def notes(self, config: EngineConfig, launch: Launch) -> list[str]:
        """Things a user should know about how this configuration is launched."""
        return []

    def missing_executable(self, config: EngineConfig) -> str | None:
        """Why the engine's program cannot be started here, or None."""
        return None

    def display_argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        """The command line as stored with baselines: no port, no interpreter path."""
        argv = self.argv(config, replace(launch, host=LOCALHOST, port=PORT_PLACEHOLDER))
        return ["python" if a == sys.executable else a for a in argv]

    def version(self, base_url: str) -> str:
        """The version the running engine reports, or ``unknown (why)``."""
        import requests

        why = "no version route answered"
        with requests.Session() as http:
            http.trust_env = False  # engines are local: never through a proxy
            for path in self.version_paths:
                try:
                    resp = http.get(base_url + path, timeout=5)
                    if resp.status_code != 200:
                        why = f"{path} answered HTTP {resp.status_code}"
                        continue
                    version = resp.json().get("version")
                except (requests.RequestException, ValueError, AttributeError) as exc:
                    why = f"{path}: {type(exc).__name__}"
                    continue
                if version:
                    return str(version)
                why = f"{path} has no 'version'"
        return f"unknown ({why})"


def find_executable(program: str) -> str | None:
    """Why ``program`` cannot be run from here, or None when it can."""
    if os.sep in program:
        return None if os.access(program, os.X_OK) else f"{program} is not an executable file"
    return None if shutil.which(program) else f"{program} is not on PATH"


def python_module_missing(python: str, module: str) -> str | None:
    """Why ``python -m module`` cannot run, or None (checked only for this interpreter)."""
    if python != sys.executable:
        return find_executable(python)
    import importlib.util

    try:
        # The top-level package only: importing a real engine's package is slow and may need a GPU.
        found = importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"module {module} is not importable by {python}"


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""


_LIVE: "weakref.WeakSet[EngineProcess]" = weakref.WeakSet()


def stop_all() -> None:
    """Stop every engine still running (last line of defence at exit)."""
    for proc in list(_LIVE):
        proc.stop()


class EngineProcess:
    """A launched engine: start, wait until ready, stop (whole tree)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path, base_url: str, ready_path: str = "/health"):
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.base_url = base_url
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None

    def exit_code(self) -> int | None:
        """The engine's exit status once it has exited, else None."""
        return self.proc.poll() if self.proc is not None else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(self.argv) + "\n").encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env},
                    start_new_session=True,  # own process group: signals reach the whole engine
                )
            except OSError as exc:
                log.write(f"cannot start {self.argv[0]}: {exc}\n".encode())
                raise EngineStartError(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}; is the engine installed "
                                       f"and on PATH? (log: {self.log_path})") from None
        _LIVE.add(self)

    def wait_ready(self, timeout_s: float, poll_s: float = 0.2) -> float:
        """Seconds until ready; EngineStartError on exit or timeout."""
        import requests

        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        url = self.base_url + self.ready_path
        last = "no answer yet"
        with requests.Session() as http:
            http.trust_env = False
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise EngineStartError(
                        f"engine exited with code {code} before it was ready; last lines of {self.log_path}:\n"
                        + tail(self.log_path)
                    )
                try:
                    status = http.get(url, timeout=2).status_code
                    if status == 200:
                        return time.monotonic() - t0
                    last = f"HTTP {status}"
                except requests.RequestException as exc:  # refused or reset: not listening yet
                    last = type(exc).__name__
                if time.monotonic() - t0 > timeout_s:
                    raise EngineStartError(
                        f"engine not ready after {timeout_s:g} s ({url} last answered: {last}); "
                        f"last lines of {self.log_path}:\n"
                        + tail(self.log_path)
                    )
                time.sleep(poll_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left of the tree.

        A Ctrl-C or SIGTERM arriving meanwhile does not cut this short: the
        tree is killed first, then the interrupt goes on.
        """
        interrupted: BaseException | None = None
        while self.proc is not None:
            try:
                self._stop(self.proc, grace_s)
            except KeyboardInterrupt as exc:
                interrupted, grace_s = exc, 0.0  # second signal: stop waiting, kill now
                continue
            self.proc = None
        _LIVE.discard(self)
        if interrupted is not None:
            raise interrupted

    @staticmethod
    def _stop(proc: "subprocess.Popen[bytes]", grace_s: float) -> None:
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

    def __enter__(self) -> "EngineProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
