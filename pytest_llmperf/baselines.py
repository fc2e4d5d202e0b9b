"""Baselines: where they live, how they are read and checked, how they are updated.

One JSON file per engine configuration:
``<baseline_dir>/<gpus>/<model slug>/<engine>/<config>.json``::

    {
      "schema": 2,
      "engine": "sim", "config": "vllm-tp8", "gpus": "h200x8",
      "model": "deepseek-ai/DeepSeek-V3.2",
      "tolerances_pct": {"total_token_throughput": 10},      # optional, file-wide
      "cases": {
        "sharegpt": {
          "workload": {...},
          "tolerances_pct": {"mean_tpot_ms": 8},              # optional, per case
          "history": [                                        # oldest first, at most --baseline-history
            {"metrics": {...},                                # the medians of its runs
             "runs": [{...}, ...],                            # each run's gateable metrics
             "command": [...], "provenance": {...},           # date, versions, node, environment
             "engine_metrics": {...}}                         # what the engine said about itself
          ]
        }
      }
    }

A schema-1 file (one ``metrics``/``command``/``provenance`` per case) is read
as a history of one entry, and written back in schema 2 with nothing lost.

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

SCHEMA_VERSION = 2
SCHEMA_ONE_KEYS = ("metrics", "command", "provenance")  # a schema-1 entry's record, moved into its history
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
    return upgrade(data)


def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """A valid baseline file's content in the current schema (a schema-1 case becomes a history of one)."""
    out = dict(data)
    out["cases"] = {name: _upgrade_entry(entry) for name, entry in data.get("cases", {}).items()}
    out["schema"] = SCHEMA_VERSION
    return out


def _upgrade_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    if "history" in entry:
        return dict(entry)
    out = {k: v for k, v in entry.items() if k not in SCHEMA_ONE_KEYS}
    record = {k: entry[k] for k in SCHEMA_ONE_KEYS if k in entry}
    out["history"] = [record] if "metrics" in record else []
    return out


def history(entry: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """A case entry's recorded results, oldest first (empty for no entry)."""
    return list(entry.get("history", [])) if entry else []


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
        if "history" in entry:
            problems += _validate_history(entry["history"], f"{where}.history")
        elif not _numbers(entry.get("metrics", {})):
            problems.append(f"{where}.metrics: expected an object of metric name -> number")
        if not isinstance(entry.get("workload", {}), dict):
            problems.append(f"{where}.workload: expected an object")
        problems += _validate_tolerances(entry.get("tolerances_pct", {}), f"{where}.tolerances_pct")
    return problems


def _numbers(metrics: Any) -> bool:
    return isinstance(metrics, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())


def _validate_history(records: Any, where: str) -> list[str]:
    if not isinstance(records, list):
        return [f"{where}: expected a list of recorded results"]
    problems = []
    for n, record in enumerate(records):
        if not isinstance(record, dict) or not _numbers(record.get("metrics")):
            problems.append(f"{where}[{n}].metrics: expected an object of metric name -> number")
            continue
        runs = record.get("runs", [])
        if not isinstance(runs, list) or not all(_numbers(r) for r in runs):
            problems.append(f"{where}[{n}].runs: expected a list of objects of metric name -> number")
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


def update_cases(path: Path, header: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]],
                 history_limit: int = 5) -> None:
    """Append each case's new record (case key -> ``{"workload": ..., "record": ...}``) to its history in one file.

    A case keeps its last ``history_limit`` records (the oldest drop out);
    when its workload changed, its history restarts with the new record (old
    records measured another workload). Other cases and every tolerance
    override are kept. ValueError when the file on disk is not a valid
    baseline (it is never overwritten).
    """
    path = Path(path)
    with _locked(path):
        data = read_baseline(path) or {}
        cases = data.setdefault("cases", {})
        for case_key, new in entries.items():
            old = cases.get(case_key) or {}
            record = dict(new["record"])
            record["metrics"] = _finite(record["metrics"])
            record["runs"] = [_finite(r) for r in record.get("runs", [])]
            kept = history(old) if old.get("workload", new["workload"]) == new["workload"] else []
            entry = {k: v for k, v in old.items() if k not in ("history", "workload")}
            entry["workload"] = dict(new["workload"])
            entry["history"] = (kept + [record])[-max(1, history_limit):]
            cases[case_key] = entry
        data.update(header)
        data["schema"] = SCHEMA_VERSION
        atomic_write_text(path, dumps(data))


def new_record(metrics: Mapping[str, Any], runs: Iterable[Mapping[str, Any]], command: Iterable[str],
               provenance: Mapping[str, Any], engine_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One recorded result of a case, as an update appends it to the case's history."""
    record = {"metrics": dict(metrics), "runs": [dict(r) for r in runs], "command": list(command),
              "provenance": dict(provenance)}
    if engine_metrics:
        record["engine_metrics"] = finite_data(engine_metrics)
    return record


def finite_data(data: Any) -> Any:
    """``data`` with every non-finite float dropped from its objects (None in lists): strict JSON holds no NaN/inf."""
    if isinstance(data, Mapping):
        return {k: finite_data(v) for k, v in data.items() if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(data, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else finite_data(v) for v in data]
    return data


class PendingUpdates:
    """Baseline entries measured by this run, written together at its end (one write per file)."""

    def __init__(self, history_limit: int = 5) -> None:
        self.history_limit = history_limit
        self._files: dict[Path, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}

    def add(self, path: Path, header: Mapping[str, Any], case_key: str, workload: Mapping[str, Any],
            record: Mapping[str, Any]) -> None:
        _, entries = self._files.setdefault(Path(path), (dict(header), {}))
        entries[case_key] = {"workload": dict(workload), "record": dict(record)}

    def write(self) -> dict[Path, str]:
        """Write every file; the files that could not be written, each with why in one line."""
        problems: dict[Path, str] = {}
        for path, (header, entries) in sorted(self._files.items()):
            try:
                update_cases(path, header, entries, self.history_limit)
            except ValueError as exc:
                problems[path] = f"{exc}; its update was not written"
            except OSError as exc:
                problems[path] = f"cannot write baseline file {path}: {exc.strerror or exc}"
        self._files.clear()
        return problems
