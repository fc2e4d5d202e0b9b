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
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from ..suite import EngineConfig

LOCALHOST = "127.0.0.1"
PORT_PLACEHOLDER = "{port}"
LOG_TAIL_LINES = 50


class EngineStartError(RuntimeError):
    """The engine did not become ready; the message carries its log tail."""


class EngineAdapter:
    """One engine: its command line, environment, readiness and version."""

    name = "engine"
    ready_path = "/health"
    version_path = "/version"

    def argv(self, config: EngineConfig, host: str, port: str, slowdown: float) -> list[str]:
        raise NotImplementedError

    def validate(self, config: EngineConfig) -> None:
        """Raise ValueError, naming the configuration, if it cannot be launched."""

    def env(self, config: EngineConfig) -> dict[str, str]:
        """Variables set on top of the current environment."""
        return dict(config.env)

    def display_argv(self, config: EngineConfig, slowdown: float) -> list[str]:
        """The command line as stored with baselines: no port, no interpreter path."""
        argv = self.argv(config, LOCALHOST, PORT_PLACEHOLDER, slowdown)
        return ["python" if a == sys.executable else a for a in argv]

    def node_snapshot(self) -> tuple[Mapping[str, Any], str]:
        """The node this engine runs on, as a snapshot, and where it came from."""
        raise NotImplementedError

    def version(self, base_url: str) -> str:
        import requests

        try:
            with requests.Session() as http:
                http.trust_env = False  # engines are local: never through a proxy
                resp = http.get(base_url + self.version_path, timeout=5)
            resp.raise_for_status()
            return str(resp.json().get("version", "unknown"))
        except (requests.RequestException, ValueError) as exc:
            return f"unknown ({type(exc).__name__})"


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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(self.argv) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # own process group: signals reach the whole engine
            )
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
