"""Run the default sim suite N times against the committed baselines, then
with a slowdown, and report wall times, the pass streak and the detection rate.

    .venv/bin/python benchmarks/sim_suite_streak.py --runs 10 --slow-runs 3 --slowdown 1.5

Each run is a fresh `pytest --engine=sim` process; figures come from its JSON
report. Medians are reported; nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import json
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
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--engine=sim", "-p", "no:cacheprovider", "-q", f"--report-json={report}", *extra],
            cwd=ROOT, capture_output=True, text=True,
        )
        wall_s = time.monotonic() - t0
        data = json.loads(report.read_text()) if report.exists() else {"cases": []}
    return proc.returncode, wall_s, data


def changes(data: dict) -> dict[str, dict[str, float]]:
    return {c["id"]: {v["metric"]: v["change_pct"] for v in c["verdicts"] if v["change_pct"] is not None} for c in data["cases"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--slow-runs", type=int, default=3)
    ap.add_argument("--slowdown", type=float, default=1.5)
    args = ap.parse_args()

    walls, passes, worst = [], 0, {}
    for i in range(args.runs):
        code, wall, data = one_run([])
        walls.append(wall)
        passes += code == 0
        for case, ch in changes(data).items():
            for metric, pct in ch.items():
                worst[(case, metric)] = max(worst.get((case, metric), 0.0), abs(pct))
        print(f"run {i + 1}: exit {code}, {wall:.1f} s", flush=True)
        for case in data["cases"]:
            if case["outcome"] != "passed":
                bad = [f"{v['metric']} {v['change_pct']:+.1f}%" for v in case["verdicts"] if v["status"] != "ok" and v["change_pct"] is not None]
                print(f"    {case['id']}: {case['outcome']} {', '.join(bad)} {case['message'][:200]}", flush=True)
    print(f"\nbaseline runs: {passes}/{args.runs} passed; wall time median {statistics.median(walls):.1f} s, max {max(walls):.1f} s")
    print("largest |change| seen per gated metric (%):")
    for (case, metric), pct in sorted(worst.items()):
        print(f"  {case:45s} {metric:24s} {pct:5.1f}")

    detected = 0
    for i in range(args.slow_runs):
        code, wall, data = one_run([f"--sim-slowdown={args.slowdown}"])
        failed = [c["id"] for c in data["cases"] if c["outcome"] == "failed"]
        detected += code != 0 and len(failed) == len(data["cases"])
        regressed = sorted({v["metric"] for c in data["cases"] for v in c["verdicts"] if v["status"] == "regressed"})
        print(f"slowdown {args.slowdown} run {i + 1}: exit {code}, {len(failed)}/{len(data['cases'])} cases failed, "
              f"regressed metrics: {', '.join(regressed)}, {wall:.1f} s", flush=True)
    print(f"slowdown {args.slowdown}: {detected}/{args.slow_runs} runs failed every case")


if __name__ == "__main__":
    main()
