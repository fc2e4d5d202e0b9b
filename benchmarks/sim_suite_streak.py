"""How far the gate's verdicts can be trusted: the default sim suite run again and again.

    .venv/bin/python benchmarks/sim_suite_streak.py --quiet 10 --slow 5 --slowdown 1.15 --busy 5 --busy-slow 1

Modes, each run a fresh ``pytest --engine=sim`` process against the committed
baselines, its figures read from its JSON report:

- ``--quiet N``: N runs as they are; every case should pass (a false alarm is a failure).
- ``--slow N``: N runs with ``--sim-slowdown=FACTOR`` (``--slowdown``, default 1.15); every
  case should be ``regressed``, never ``inconclusive`` or ``ok``.
- ``--busy N``: N runs while ``--spinners`` processes (default 2) spin ``while True: pass``
  for the whole run; no case may be ``regressed`` (``ok`` or ``inconclusive`` naming the cause).
- ``--busy-slow N``: N runs with ``--sim-slowdown=1.5`` under the same load; none may pass.

Per run it prints the exit code, the wall time and each case's status with the cause
of any distortion; at the end, per mode, the counts. Nothing here asserts speed; the
spinners are started and stopped by their process ids.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(extra: list[str]) -> tuple[int, float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "--engine=sim", "-p", "no:cacheprovider", "-q", f"--report-json={report}",
             *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait()
        finally:  # interrupted: the run stops its engines on SIGTERM; wait for it
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        wall_s = time.monotonic() - t0
        data = json.loads(report.read_text()) if report.exists() else {"cases": []}
    return proc.returncode, wall_s, data


def spin(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def describe(data: dict) -> list[str]:
    out = []
    for case in data["cases"]:
        changes = ", ".join(f"{v['metric']} {v['change_pct']:+.1f}% (tol {v['tolerance_pct']:.1f})"
                            for v in case["verdicts"] if v.get("change_pct") is not None)
        causes = "; ".join(case.get("apparatus", {}).get("causes", []))
        runs = len(case.get("runs", []))
        out.append(f"    {case['id']}: {case['status']} [{runs} runs] {changes}" + (f" | {causes}" if causes else ""))
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # so that the current run and the spinners are stopped too
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quiet", type=int, default=0)
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--slowdown", type=float, default=1.15)
    ap.add_argument("--busy", type=int, default=0)
    ap.add_argument("--busy-slow", type=int, default=0)
    ap.add_argument("--spinners", type=int, default=2)
    args = ap.parse_args()

    plan = [("quiet", args.quiet, [], False), ("slow", args.slow, [f"--sim-slowdown={args.slowdown}"], False),
            ("busy", args.busy, [], True), ("busy-slow", args.busy_slow, ["--sim-slowdown=1.5"], True)]
    summary = {}
    for mode, runs, extra, busy in plan:
        statuses: collections.Counter = collections.Counter()
        walls, codes = [], []
        for n in range(runs):
            spinners = spin(args.spinners) if busy else []
            try:
                code, wall, data = one_run(extra)
            finally:
                stop(spinners)
            walls.append(wall)
            codes.append(code)
            statuses.update(c["status"] for c in data["cases"])
            print(f"{mode} run {n + 1}: exit {code}, {wall:.0f} s", flush=True)
            print("\n".join(describe(data)), flush=True)
        if runs:
            summary[mode] = (runs, codes, statistics.median(walls), dict(statuses))
    print("\nmode        runs  exit codes            median wall  case statuses")
    for mode, (runs, codes, wall, statuses) in summary.items():
        print(f"{mode:<11} {runs:>4}  {str(codes):<21} {wall:>9.0f} s  {statuses}")


if __name__ == "__main__":
    main()
