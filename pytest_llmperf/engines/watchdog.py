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

POLL_S = 0.2  # how often the parent is checked
TREE_POLL_S = 1.0  # how often the engine's descendants are listed (a scan of /proc: kept rare)
GRACE_S = 2.0  # between SIGTERM and SIGKILL once pytest is gone


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def watch(parent: int, engine: int, grace_s: float = GRACE_S, poll_s: float = POLL_S,
          tree_poll_s: float = TREE_POLL_S) -> int:
    """Poll until the engine and what it started are gone (0), or the parent died and they were ended (1).

    Descendants are kept as psutil processes (pid and start time), so a pid
    reused by another process after a descendant exited is never signalled.
    """
    import psutil

    try:
        root = psutil.Process(engine)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, psutil.Process] = {engine: root}
    listed_at = 0.0
    while True:
        if os.getppid() != parent:  # re-parented: pytest is gone
            break
        now = time.monotonic()
        if now - listed_at >= tree_poll_s:
            listed_at = now
            if root.is_running():
                try:
                    seen.update((p.pid, p) for p in root.children(recursive=True))
                except psutil.Error:
                    pass
            seen = {pid: p for pid, p in seen.items() if p.is_running()}  # is_running checks the start time too
            if not seen and not _group_alive(engine):
                return 0
        time.sleep(poll_s)
    if root.is_running():
        try:
            seen.update((p.pid, p) for p in root.children(recursive=True))
        except psutil.Error:
            pass
    living = [p for p in seen.values() if p.is_running()]
    _end(engine, living, signal.SIGTERM)
    _, alive = psutil.wait_procs(living, timeout=grace_s)
    _end(engine, alive, signal.SIGKILL)
    return 1


def _end(pgid: int, processes: list, sig: int) -> None:
    """``sig`` to the engine's group and to each process (psutil checks it is still the one seen)."""
    import psutil

    _signal_group(pgid, sig)
    for p in processes:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


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
