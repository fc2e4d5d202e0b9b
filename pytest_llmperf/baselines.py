"""Baselines: where they live, how they are read and checked, how they are updated.

One JSON file per engine configuration:
``<baseline_dir>/<gpus>/<model slug>/<engine>/<config>.json``::

    {
      "schema": 1,
      "engine": "sim", "config": "vllm-tp8", "gpus": "h200x8",
      "model": "deepseek-ai/DeepSeek-V3.2",
      "tolerances_pct": {"total_token_throughput": 10},      # optional, file-wide
      "cases": {
        "sharegpt": {
          "workload": {...}, "command": [...], "metrics": {...},
          "provenance": {...},
          "tolerances_pct": {"mean_tpot_ms": 8}               # optional, per case
        }
      }
    }

Judging a run against an entry is ``verdict``'s (pure). Here: reading and
validating files, checking up front that an update can be written, and
updates that are atomic (a temporary file renamed over), serialised by a lock
file kept outside the baseline tree (so the tree holds baseline files only),
and never drop cases that the run did not measure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .files import atomic_write_text
from .metrics import metric_direction

SCHEMA_VERSION = 1
LOCK_DIR_NAME = "pytest-llmperf-locks"


def model_slug(model: str) -> str:
    """A model name as one path component: ``org/name`` -> ``org__name``."""
    return model.strip("/").replace("/", "__")


def baseline_path(baseline_dir: Path, gpus: str, model: str, engine: str, config: str) -> Path:
    return Path(baseline_dir) / gpus / model_slug(model) / engine / f"{config}.json"


# ---------------------------------------------------------------- files (IO)


def read_baseline(path: Path) -> dict[str, Any] | None:
    """The file's content, None if it does not exist; ValueError naming file and key if invalid."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"baseline file {path} is not valid JSON ({exc}); fix or delete it") from None
    problems = _validate(data)
    if problems:
        raise ValueError(f"baseline file {path}: " + "; ".join(problems))
    return data


@dataclass(frozen=True)
class BaselineRead:
    """What the baseline file holds for a case: its path, the file's data (None: no file), or why it is unreadable."""

    path: Path
    data: Mapping[str, Any] | None = None
    error: str = ""


def read_for(path: Path) -> BaselineRead:
    """The baseline file at ``path`` as a value for the verdict: its data, None when absent, or why it is unreadable."""
    try:
        return BaselineRead(Path(path), read_baseline(path))
    except ValueError as exc:
        return BaselineRead(Path(path), None, str(exc))
    except OSError as exc:
        return BaselineRead(Path(path), None, f"baseline file {path} cannot be read: {exc.strerror or exc}")


def unwritable(paths: Iterable[Path]) -> str | None:
    """Why these baseline files could not be written (checked before anything runs), or None.

    A file is written as a temporary file beside it, renamed over: its
    directory (or the nearest one that exists, where the rest will be made)
    must be writable.
    """
    for path in sorted({Path(p) for p in paths}):
        directory = path.parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        if not directory.is_dir():
            return f"cannot write baselines under {path.parent}: {directory} is not a directory"
        if not os.access(directory, os.W_OK | os.X_OK):
            return (f"cannot write baselines: the directory {directory} is not writable; fix its permissions or "
                    f"give another --baseline-dir")
        if path.exists() and not os.access(path, os.R_OK):
            return f"cannot update baseline file {path}: it is not readable"
    return None


def _validate(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return ["expected a JSON object"]
    problems = []
    schema = data.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        problems.append(f"schema: expected an integer, got {schema!r}")
    elif schema > SCHEMA_VERSION:
        problems.append(f"schema {schema} is newer than this version reads ({SCHEMA_VERSION}); upgrade pytest-llmperf")
    problems += _validate_tolerances(data.get("tolerances_pct", {}), "tolerances_pct")
    cases = data.get("cases", {})
    if not isinstance(cases, dict):
        return problems + ["cases: expected an object of case name -> entry"]
    for name, entry in cases.items():
        where = f"cases.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        metrics = entry.get("metrics", {})
        if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
        ):
            problems.append(f"{where}.metrics: expected an object of metric name -> number")
        if not isinstance(entry.get("workload", {}), dict):
            problems.append(f"{where}.workload: expected an object")
        problems += _validate_tolerances(entry.get("tolerances_pct", {}), f"{where}.tolerances_pct")
    return problems


def _validate_tolerances(tolerances: Any, where: str) -> list[str]:
    if not isinstance(tolerances, dict):
        return [f"{where}: expected an object of metric name -> percent"]
    problems = []
    for metric, pct in tolerances.items():
        try:
            metric_direction(metric)
        except ValueError as exc:
            problems.append(f"{where}.{metric}: {exc}")
            continue
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not math.isfinite(pct) or pct < 0:
            problems.append(f"{where}.{metric}: expected a percentage >= 0, got {pct!r}")
    return problems


def dumps(data: Mapping[str, Any]) -> str:
    """Deterministic formatting so diffs review well."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


LOCK_TIMEOUT_S = 600.0


def lock_path(path: Path) -> Path:
    """The lock file serialising writers of ``path``: in a private directory, never beside the baseline."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]
    return _lock_dir() / f"baseline-{digest}.lock"


def _lock_dir() -> Path:
    """``$XDG_RUNTIME_DIR`` (or the system temp dir) / pytest-llmperf-locks-<uid>, this user's own (mode 0700)."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"{LOCK_DIR_NAME}-{uid}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = lock_path(path)
    directory = lock.parent
    directory.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not os.path.isdir(directory) or os.path.islink(directory) or (
            hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise OSError(f"the lock directory {directory} is not this user's own directory; remove it")
    try:
        with FileLock(str(lock), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise OSError(f"another process has held the lock {lock} of {path} for {LOCK_TIMEOUT_S:g} s") from None


def _finite(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}


def update_cases(path: Path, header: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Write these case entries (case key -> entry) into one baseline file.

    Other cases and any tolerance overrides in the file are kept. ValueError
    when the file on disk is not a valid baseline (it is never overwritten).
    """
    path = Path(path)
    with _locked(path):
        data = read_baseline(path) or {}
        cases = data.setdefault("cases", {})
        for case_key, entry in entries.items():
            old = cases.get(case_key)
            new_entry = dict(entry)
            new_entry["metrics"] = _finite(entry["metrics"])
            if old and "tolerances_pct" in old:
                new_entry["tolerances_pct"] = old["tolerances_pct"]
            cases[case_key] = new_entry
        data.update(header)
        data["schema"] = SCHEMA_VERSION
        atomic_write_text(path, dumps(data))


def new_entry(workload_params: Mapping[str, Any], command: Iterable[str], metrics: Mapping[str, Any],
              provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A case's entry as an update records it."""
    return {"workload": dict(workload_params), "command": list(command), "metrics": dict(metrics),
            "provenance": dict(provenance)}


class PendingUpdates:
    """Baseline entries measured by this run, written together at its end (one write per file)."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}

    def add(self, path: Path, header: Mapping[str, Any], case_key: str, entry: Mapping[str, Any]) -> None:
        _, entries = self._files.setdefault(Path(path), (dict(header), {}))
        entries[case_key] = dict(entry)

    def write(self) -> dict[Path, str]:
        """Write every file; the files that could not be written, each with why in one line."""
        problems: dict[Path, str] = {}
        for path, (header, entries) in sorted(self._files.items()):
            try:
                update_cases(path, header, entries)
            except ValueError as exc:
                problems[path] = f"{exc}; its update was not written"
            except OSError as exc:
                problems[path] = f"cannot write baseline file {path}: {exc.strerror or exc}"
        self._files.clear()
        return problems
