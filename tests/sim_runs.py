"""Runs of the plugin on the sim that write JSON reports, for the compare and merge end-to-end tests.

A busy machine can distort a run (the sim falls behind its schedule, the
client reads chunks late): the plugin then calls the case inconclusive. That
says something about the machine, not about the commands under test, so a
run with an inconclusive case is made again a few times; the tests then
expect of each case what its reports hold, so that they never depend on how
busy the machine was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_plugin_e2e import suite_text

SUITE = suite_text("{model}", prompts=16)  # filled in with .format(model=...)
CASES = [f"sim/{config}/{workload}" for config in ("vllm-tp8", "sglang-dpattn")
         for workload in ("tiny-random", "tiny-sharegpt")]
ATTEMPTS = 3


def plugin(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The plugin on the suite in ``cwd``: one run per case, no confirming runs, baselines in ``cwd/bl``.

    Never on the CI page of the run testing it, nor acting as under CI (these runs start in module-scoped
    fixtures, before the repository's function-scoped guard against that applies).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_STEP_SUMMARY", "CI")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--suite=suite.toml",
                           "--engine=sim", "--repeats=1", "--confirm=0", f"--baseline-dir={cwd / 'bl'}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def inconclusive(path: Path) -> set[str]:
    """The cases of a report whose every run was distorted."""
    return {c["id"] for c in json.loads(Path(path).read_text())["cases"] if c["status"] == "inconclusive"}


def report_run(cwd: Path, name: str, *args: str) -> Path:
    """The plugin writing the JSON report ``name``, made again (up to ``ATTEMPTS``) while a case came out distorted."""
    path = cwd / name
    for _ in range(ATTEMPTS):
        result = plugin(cwd, f"--report-json={name}", *args)
        assert path.exists(), result.stdout[-3000:] + result.stderr[-3000:]
        if not inconclusive(path):
            break
    return path


def command(cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """``python -m pytest_llmperf ...`` as a subprocess: real exit status and stderr."""
    return subprocess.run([sys.executable, "-m", "pytest_llmperf", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def statuses(path: Path) -> dict[str, str]:
    return {c["id"]: c["status"] for c in json.loads(Path(path).read_text())["cases"]}
