"""GPU leases by UUID: one OS file lock per GPU in a node-local directory, and who ran beside whom.

Several pytest-xdist workers (or several pytest runs) on one node each boot
engines that need N GPUs. ``lease_gpus`` takes N of the node's checked GPUs,
all or nothing, with one ``filelock`` lock per GPU UUID; it waits (telling
``on_wait``) while they are taken, and the OS drops the locks if the holder
dies. Each lease also reserves a TCP port for the engine and writes a holder
record (``lease-<id>.json``) that names it to whoever waits, and that the
co-location check reads afterwards.

The edge (locks, records, the directory) is ``lease_gpus`` and
``read_records``; ``colocated_with``, ``live_others`` and ``waiting_text`` are
pure. flock locks need a node-local file system: on NFS mounted with
``nolock`` they silently do nothing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..files import atomic_write_text

LOCK_DIR_ENV = "LLMPERF_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "pytest-llmperf-gpu-locks"
DIR_MODE = 0o1777  # every user of the node shares it; sticky: only a file's owner may remove or replace it
LOCK_FILE_MODE = 0o666  # another user's run can lock it too
RECORD_KEEP_S = 86400.0  # ended and dead holder records are pruned after a day
PORT_TRIES = 100
_NEXT_STEP = f"give a writable node-local directory with --gpu-lock-dir or {LOCK_DIR_ENV}"


class LeaseError(RuntimeError):
    """GPUs could not be leased; the message is one line naming the cause and the next step."""


@dataclass(frozen=True)
class Lease:
    """GPUs held for one engine configuration, and the port reserved for it."""

    uuids: tuple[str, ...]  # the GPUs leased, in the candidates' order
    ports: tuple[int, ...]  # TCP ports on 127.0.0.1 no other lease of this node hands out while this one lasts
    waited_s: float  # how long the GPUs were waited for
    record_id: str  # names this lease's holder record (lease-<record_id>.json in the lock directory)

    @property
    def port(self) -> int:
        """The engine's own (HTTP) port: the first reserved."""
        return self.ports[0]


@dataclass(frozen=True)
class LeaseRecord:
    """A holder record as read back: who leased which GPUs of which node, from when to when."""

    record_id: str
    label: str
    pid: int
    host: str
    uuids: tuple[str, ...]
    node_uuids: tuple[str, ...]
    started: float  # wall clock (time.time())
    ended: float | None  # None: not released (still held, or its holder died)
    alive: bool  # holder alive (this host's pid); another host's record counts alive unless ended


def lock_dir_for(value: str | None, environ: Mapping[str, str]) -> Path:
    """The lock directory: ``value`` (from --gpu-lock-dir), else $LLMPERF_GPU_LOCK_DIR, else the default."""
    chosen = value or environ.get(LOCK_DIR_ENV) or ""
    return Path(chosen).expanduser() if chosen else DEFAULT_LOCK_DIR


# ---------------------------------------------------------------------------------------------- pure


def colocated_with(records: Sequence[LeaseRecord], own_record_id: str, node_uuids: Sequence[str],
                   case_start: float, case_end: float, live_at_start: set[str] | frozenset[str]) -> list[str]:
    """Labels of other leases on this node that overlapped [case_start, case_end] (wall clock), earliest first.

    A record is on this node when its node UUIDs meet ours. It overlapped when it started before the case
    ended and either ended after the case started, or has not ended and is alive (or was live when the case
    started: a holder that died during the case still ran beside it).
    """
    node = set(node_uuids)
    labels: list[str] = []
    for r in sorted(records, key=lambda r: r.started):
        if r.record_id == own_record_id or not node.intersection(r.node_uuids):
            continue
        if r.started >= case_end:
            continue
        if r.ended is not None:
            overlapped = r.ended > case_start
        else:
            overlapped = r.alive or r.record_id in live_at_start
        if overlapped and r.label not in labels:
            labels.append(r.label)
    return labels


def live_others(records: Sequence[LeaseRecord], own_record_id: str, node_uuids: Sequence[str]) -> set[str]:
    """Record ids of the other leases on this node that are alive and not ended (taken when a case starts)."""
    node = set(node_uuids)
    return {r.record_id for r in records
            if r.record_id != own_record_id and r.ended is None and r.alive and node.intersection(r.node_uuids)}


def holder_name(record: LeaseRecord) -> str:
    """'sim/a (gw0, pid 123, host h)': the label with the holder's pid and host inside its parentheses."""
    who = f"pid {record.pid}, host {record.host}"
    label = record.label
    if label.endswith(")") and "(" in label:
        return f"{label[:-1]}, {who})"
    return f"{label} ({who})"


def holders_text(records: Sequence[LeaseRecord], busy: Sequence[str], now: float) -> str:
    """Who holds the ``busy`` GPUs, from the live, not ended records: 'sim/a (gw0, pid 1, host h) for 40 s'."""
    busy_set = set(busy)
    parts: list[str] = []
    covered: set[str] = set()
    for r in sorted(records, key=lambda r: r.started):
        if r.ended is not None or not r.alive:
            continue
        mine = busy_set.intersection(r.uuids)
        if not mine:
            continue
        covered |= mine
        parts.append(f"{holder_name(r)} for {max(0, round(now - r.started))} s")
    unknown = len(busy_set - covered)
    if unknown:
        parts.append(f"{unknown} GPU{'s' if unknown != 1 else ''} by a process with no lease record")
    return ", ".join(parts) if parts else "another process"


def waiting_text(label: str, count: int, candidates: int, records: Sequence[LeaseRecord], busy: Sequence[str],
                 now: float) -> str:
    """'sim/b (gw1): waiting for 4 GPUs of 8; held by sim/a (gw0, pid 123, host h) for 40 s'."""
    return (f"{label}: waiting for {count} GPU{'s' if count != 1 else ''} of {candidates}; "
            f"held by {holders_text(records, busy, now)}")


# ---------------------------------------------------------------------------------------------- edge


def read_records(lock_dir: Path) -> list[LeaseRecord]:
    """Every holder record in ``lock_dir`` (unreadable or partial files skipped), oldest first."""
    return [record for _, record in _record_files(Path(lock_dir))]


def _record_files(lock_dir: Path) -> list[tuple[Path, LeaseRecord]]:
    try:
        paths = list(lock_dir.glob("lease-*.json"))
    except OSError:
        return []
    this_host = socket.gethostname()
    found = []
    for path in paths:
        try:
            found.append((path, _record_from(json.loads(path.read_text(encoding="utf-8")), this_host)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    found.sort(key=lambda pair: pair[1].started)
    return found


def _record_from(data: Any, this_host: str) -> LeaseRecord:
    ended = data["ended"]
    pid = int(data["pid"])
    host = str(data["host"])
    started = float(data["started"])
    if host == this_host:
        alive = _pid_alive(pid, started)
    else:
        alive = ended is None
    uuids = data["uuids"]
    node_uuids = data["node_uuids"]
    if not isinstance(uuids, list) or not isinstance(node_uuids, list):
        raise TypeError("uuids must be lists")
    return LeaseRecord(record_id=str(data["record_id"]), label=str(data["label"]), pid=pid, host=host,
                       uuids=tuple(str(u) for u in uuids), node_uuids=tuple(str(u) for u in node_uuids),
                       started=started, ended=None if ended is None else float(ended), alive=alive)


def _pid_alive(pid: int, started: float) -> bool:
    """Whether ``pid`` runs on this host and is the process that wrote a record at ``started`` (not a reuse)."""
    if pid <= 0:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A process started after the record was written reuses a dead holder's pid.
        return proc.create_time() <= started + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another account's process: alive
        return True


@contextmanager
def lease_gpus(
    lock_dir: Path,
    candidates: Sequence[str],
    count: int,
    label: str,
    node_uuids: Sequence[str],
    on_wait: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
    note_every_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    timeout_s: float | None = None,
    ports: int = 1,
) -> Iterator[Lease]:
    """Lease ``count`` of ``candidates`` (GPU UUIDs, preference order), all or nothing; yields a Lease.

    Each attempt tries the candidates' locks without blocking, in sorted UUID order, until ``count`` are held;
    short of that it releases them all, tells ``on_wait`` who holds them (at once, then every
    ``note_every_s``), sleeps ``poll_s`` and tries again. ``timeout_s`` None waits for ever; else LeaseError
    after it. While leased, a port lock and a holder record are held too; on every way out (an exception,
    KeyboardInterrupt included) the record gets ``ended`` and then the locks are released.
    """
    candidates = list(dict.fromkeys(candidates))
    if count < 0:
        raise LeaseError(f"{label}: cannot lease {count} GPUs; the count must be 0 or more")
    if count > len(candidates):
        raise LeaseError(f"{label}: needs {count} GPU{'s' if count != 1 else ''} but only {len(candidates)} "
                         f"of this node passed the check; lower the configuration's GPU count or free GPUs")
    lock_dir = Path(lock_dir)
    _ensure_dir(lock_dir)
    _prepare_gpu_lock_files(lock_dir, node_uuids)
    _prune_records(lock_dir)
    start = clock()
    last_note: float | None = None
    while True:
        held, busy = _try_take(lock_dir, candidates, count)
        if held is not None:
            break
        now = clock()
        if timeout_s is not None and now - start >= timeout_s:
            holders = holders_text(read_records(lock_dir), busy, time.time())
            raise LeaseError(f"{label}: {count} GPU{'s' if count != 1 else ''} of {len(candidates)} not free after "
                             f"{round(now - start)} s; held by {holders}; wait for the holders to end or raise the "
                             f"lease timeout")
        if on_wait is not None and (last_note is None or now - last_note >= note_every_s):
            last_note = now
            records = read_records(lock_dir)
            # An attempt stops at the first GPU that puts the lease out of reach: name every live holder too.
            held_by_others = [u for r in records if r.alive and r.ended is None for u in r.uuids if u in candidates]
            on_wait(waiting_text(label, count, len(candidates), records, list(dict.fromkeys([*busy, *held_by_others])),
                                 time.time()))
        pause = poll_s if timeout_s is None else max(0.0, min(poll_s, start + timeout_s - now))
        sleep(pause)
    waited_s = clock() - start
    locks = [lock for _, lock in held]
    try:
        reserved: list[int] = []
        for _ in range(max(1, ports)):  # the engine's port, and one per other port it would take at a fixed default
            port, port_lock = _reserve_port(lock_dir)
            locks.append(port_lock)
            reserved.append(port)
        taken = {uuid for uuid, _ in held}
        uuids = tuple(u for u in candidates if u in taken)
        record_id = secrets.token_hex(8)
        path = lock_dir / f"lease-{record_id}.json"
        record = {"record_id": record_id, "label": label, "pid": os.getpid(), "host": socket.gethostname(),
                  "uuids": list(uuids), "node_uuids": list(node_uuids), "started": time.time(), "ended": None}
        try:
            _write_record(path, record)
        except OSError as exc:
            raise LeaseError(f"cannot write the GPU lease record {path}: {exc.strerror or exc}; {_NEXT_STEP}") from exc
        try:
            yield Lease(uuids=uuids, ports=tuple(reserved), waited_s=waited_s, record_id=record_id)
        finally:
            record["ended"] = time.time()
            try:
                _write_record(path, record)
            except OSError:
                pass  # the locks below are what others wait on; a record without its end reads as dead later
    finally:
        _release_all(locks)


def _ensure_dir(lock_dir: Path) -> None:
    """Create the lock directory (shared and sticky) if missing; LeaseError when that fails."""
    try:
        lock_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(lock_dir, 0o777)
        except FileExistsError:
            if not lock_dir.is_dir():
                raise LeaseError(f"GPU lock directory {lock_dir} exists but is not a directory; {_NEXT_STEP}")
        else:
            os.chmod(lock_dir, DIR_MODE)
    except OSError as exc:
        raise LeaseError(f"cannot create GPU lock directory {lock_dir}: {exc.strerror or exc}; {_NEXT_STEP}") from exc


def _lock_name(uuid: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", uuid) + ".lock"


def _file_lock(path: Path) -> Any:
    from filelock import FileLock

    # No soft fallback: a soft lock outlives a killed holder, which is exactly what these locks must not do.
    return FileLock(path, mode=LOCK_FILE_MODE, thread_local=False, fallback_to_soft=False)


def _lock_error(lock_dir: Path, path: Path, exc: OSError) -> LeaseError:
    """One line for a lock file that could not be opened or locked (not: held by another)."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        try:
            owner = path.stat().st_uid
        except OSError:
            owner = None
        if owner is not None and owner != os.geteuid():
            return LeaseError(f"cannot lock {path}: it belongs to another account (uid {owner}) and a lock file in "
                              f"a shared sticky directory is taken only by its owner or the directory's; run this "
                              f"node's jobs under one account, or {_NEXT_STEP}")
        if owner is None:
            return LeaseError(f"cannot create GPU lock files in {lock_dir}: {reason}; {_NEXT_STEP}")
    if exc.errno == errno.ENOSYS:
        return LeaseError(f"the file system of {lock_dir} has no flock (a network mount?); {_NEXT_STEP}")
    return LeaseError(f"cannot lock {path}: {reason}; {_NEXT_STEP}")


def _try_take(lock_dir: Path, candidates: Sequence[str], count: int) -> tuple[list[tuple[str, Any]] | None, list[str]]:
    """One attempt: lock ``count`` of the candidates without blocking, in sorted UUID order; all or none.

    Returns the (uuid, lock) pairs held, or None and the UUIDs found taken.
    """
    from filelock import Timeout

    held: list[tuple[str, Any]] = []
    busy: list[str] = []
    try:
        for uuid in sorted(candidates):
            if len(held) == count:
                break
            path = lock_dir / _lock_name(uuid)
            lock = _file_lock(path)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                busy.append(uuid)
                if len(busy) > len(candidates) - count:  # out of reach this time: hold nothing a moment longer
                    break
                continue
            except OSError as exc:
                raise _lock_error(lock_dir, path, exc) from exc
            held.append((uuid, lock))
    except BaseException:
        _release_all([lock for _, lock in held])
        raise
    if len(held) < count:
        _release_all([lock for _, lock in held])
        return None, busy
    return held, busy


def _reserve_port(lock_dir: Path) -> tuple[int, Any]:
    """A free TCP port on 127.0.0.1 and the held lock ``port-<N>.lock`` that reserves it among this node's leases."""
    from filelock import Timeout

    from ..engines import base as engine_base

    last = ""
    for _ in range(PORT_TRIES):
        port = engine_base.free_port()
        path = lock_dir / f"port-{port}.lock"
        lock = _file_lock(path)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            last = f"port {port} reserved by another lease"
            continue
        except PermissionError as exc:
            if not path.exists():
                raise _lock_error(lock_dir, path, exc) from exc
            last = f"{path.name} belongs to another account"  # another port will do
            continue
        except OSError as exc:
            raise _lock_error(lock_dir, path, exc) from exc
        return port, lock
    raise LeaseError(f"no TCP port could be reserved in {lock_dir} after {PORT_TRIES} tries (last: {last}); "
                     f"{_NEXT_STEP}")


def _release_all(locks: Sequence[Any]) -> None:
    """Release every lock, the last taken first; one that fails does not keep the others held."""
    for lock in reversed(locks):
        try:
            lock.release(force=True)
        except Exception:  # the OS drops it when this process ends
            pass


def _prepare_gpu_lock_files(lock_dir: Path, node_uuids: Sequence[str]) -> None:
    """As the directory's owner, create the node's missing GPU lock files: in a sticky directory a lock file is
    taken only by its owner or the directory's, so files the directory's owner made serve every account."""
    from filelock import Timeout

    try:
        if lock_dir.stat().st_uid != os.geteuid():
            return
    except OSError:
        return
    for uuid in node_uuids:
        path = lock_dir / _lock_name(uuid)
        if path.exists():
            continue
        lock = _file_lock(path)
        try:
            lock.acquire(blocking=False)
        except (Timeout, OSError):
            continue  # taken meanwhile, or a failure the lease attempt reports
        _release_all([lock])


def _write_record(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def _prune_records(lock_dir: Path, now: float | None = None, keep_s: float = RECORD_KEEP_S) -> None:
    """Remove holder records that ended, or whose holder died, more than ``keep_s`` ago.

    In the sticky directory only a record's owner (or the directory's) can remove it; the others stay.
    """
    now = time.time() if now is None else now
    for path, r in _record_files(lock_dir):
        if r.ended is not None:
            old = now - r.ended > keep_s
        else:
            old = not r.alive and now - r.started > keep_s
        if old:
            try:
                path.unlink()
            except OSError:
                pass
