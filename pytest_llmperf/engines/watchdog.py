"""``python -m pytest_llmperf.engines.watchdog``: ends an engine whose pytest died.

The kernel signals the engine's own process when pytest dies
(``PR_SET_PDEATHSIG``, Linux only), but not what that process started, nor
anything on other systems. This watchdog, one per engine, runs in a session
of its own (so a terminal's Ctrl-C does not reach it) and polls: when its
parent (the pytest process) is gone, it sends SIGTERM to the engine's process
group and every descendant it has seen, waits briefly, then SIGKILLs what is
left. When the engine is gone on its own (stopped normally), it exits.

    python -m pytest_llmperf.engines.watchdog --parent PID --engine PID [--grace S]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

POLL_S = 0.2
GRACE_S = 2.0  # between SIGTERM and SIGKILL once pytest is gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(root: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(root).children(recursive=True)}
    except psutil.Error:
        return set()


def _signal_all(pgid: int, pids: set[int], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def watch(parent: int, engine: int, grace_s: float = GRACE_S, poll_s: float = POLL_S) -> int:
    """Poll until the engine is gone (0) or the parent died and the engine was ended (1)."""
    seen: set[int] = set()
    while True:
        if os.getppid() != parent or not _alive(parent):
            break
        if not _alive(engine) and not _group_alive(engine):
            return 0
        seen |= _descendants(engine)
        time.sleep(poll_s)
    seen |= _descendants(engine)
    _signal_all(engine, seen | {engine}, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(engine) and not any(_alive(p) for p in seen):
            return 1
        time.sleep(0.05)
    _signal_all(engine, seen | {engine}, signal.SIGKILL)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmperf.engines.watchdog")
    parser.add_argument("--parent", type=int, required=True, help="the pytest process")
    parser.add_argument("--engine", type=int, required=True, help="the engine's pid (and process group id)")
    parser.add_argument("--grace", type=float, default=GRACE_S, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the parent's death or SIGTERM from pytest ends it
    return watch(args.parent, args.engine, args.grace)


if __name__ == "__main__":
    sys.exit(main())
