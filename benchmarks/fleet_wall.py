"""Wall time of two 4-GPU configurations side by side (``-n 2 --dist loadgroup``) against one after the other (``-n 0``).

    .venv/bin/python benchmarks/fleet_wall.py --repeats 3

The suite: two sim configurations of 4 GPUs each (the vLLM TP8 profile's timing on 4 of the simulated
node's GPUs), each running the default sim suite's three workloads once. Each repeat runs both modes, in
alternating order, as fresh pytest processes recording into a scratch baseline tree (nothing is gated).
Printed: every run's wall time and exit code, then the medians and the ratio -n 2 / -n 0. On a machine with
fewer cores than the two sims and their clients need, the side-by-side run shares the CPUs, so the ratio
says what this machine allows, not what a GPU node would.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "pytest_llmperf" / "sim" / "profiles" / "vllm-tp8.toml"

SUITE = '''
model = "deepseek-ai/DeepSeek-V3.2"
gpus = "h200x8"

[workloads.sharegpt]
preset = "sharegpt"
num_prompts = 100

[workloads.short]
preset = "short"
num_prompts = 500

[workloads.medium]
preset = "medium"
num_prompts = 50

[[configs]]
engine = "sim"
name = "a-tp4"
profile = "tp4.toml"

[[configs]]
engine = "sim"
name = "b-tp4"
profile = "tp4.toml"
'''


def one_run(workdir: Path, parallel: bool, n: int) -> tuple[int, float]:
    bdir = workdir / f"bl-{'par' if parallel else 'seq'}-{n}"
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--suite=suite.toml", "--engine=sim",
            f"--baseline-dir={bdir}", "--update-baselines", f"--gpu-lock-dir={workdir / 'locks'}",
            *(["-n", "2", "--dist", "loadgroup"] if parallel else ["-n", "0"])]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    return proc.returncode, time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    walls: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        profile = re.sub(r"(?m)^gpus\s*=.*\n", "", PROFILE.read_text())
        (work / "tp4.toml").write_text("gpus = 4\n" + profile)
        (work / "suite.toml").write_text(SUITE)
        for n in range(args.repeats):
            for parallel in ((True, False) if n % 2 == 0 else (False, True)):
                rc, wall_s = one_run(work, parallel, n)
                walls[parallel].append(wall_s)
                print(f"repeat {n + 1}: {'-n 2 --dist loadgroup' if parallel else '-n 0':22} exit {rc}  "
                      f"{wall_s:6.1f} s", flush=True)
    par, seq = statistics.median(walls[True]), statistics.median(walls[False])
    print(f"median wall: -n 2 {par:.1f} s, -n 0 {seq:.1f} s; ratio -n 2 / -n 0 = {par / seq:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
