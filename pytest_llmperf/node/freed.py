"""After an engine stops: wait until its GPUs are free again, so the next engine boots on a clean node.

``record_gpus_before`` notes what was on the GPUs before the engine booted
(other jobs are not the engine's and are never waited for); ``wait_gpus_freed``
polls NVML, on an injected clock and sleep, until nothing new holds memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

from .check import FOREIGN_PROCESS_LIMIT_MIB
from .nvml import (
    NoGpuDriver,
    describe_error,
    index_of_uuid,
    memory_used_mib_by_uuid,
    nvml_error_class,
    nvml_session,
    processes_by_uuid,
)


class GpusNotFreed(RuntimeError):
    """Processes still hold memory on GPUs an engine used, after the timeout."""


@dataclass(frozen=True)
class GpusBefore:
    """What was on an engine's GPUs before it booted."""

    pids: frozenset[int] = frozenset()  # processes listed then: never waited for
    memory_used_mib: Mapping[str, int] | None = None  # uuid -> MiB used then; None: unknown, wait on processes only


def record_gpus_before(uuids: Sequence[str], nvml: Any = None) -> GpusBefore:
    """The processes and memory on these GPUs now; an empty record when NVML cannot tell (a hiccup is no failure)."""
    uuids = list(uuids)
    if not uuids:
        return GpusBefore()
    try:
        with nvml_session(nvml) as m:
            try:
                procs = processes_by_uuid(m, uuids)
                memory = memory_used_mib_by_uuid(m, uuids)
            except nvml_error_class(m):
                return GpusBefore()
    except (NoGpuDriver, RuntimeError, OSError):
        return GpusBefore()
    return GpusBefore(frozenset(p.pid for listed in procs.values() for p in listed), memory)


def wait_gpus_freed(
    uuids: Sequence[str],
    timeout_s: float,
    poll_s: float = 0.5,
    nvml: Any = None,
    limit_mib: int = FOREIGN_PROCESS_LIMIT_MIB,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    ignore_pids: Collection[int] = (),
    memory_before_mib: Mapping[str, int] | None = None,
) -> float:
    """Wait until no process holds more than ``limit_mib`` on any of these GPUs; the seconds waited.

    ``ignore_pids``: processes that were there before (not the engine's), never waited for.
    ``memory_before_mib``: memory used on each GPU before the engine booted; when given, also wait
    until no GPU uses more than ``limit_mib`` above it (processes NVML does not list still hold memory).
    Raises GpusNotFreed after ``timeout_s``, naming each GPU, pid and MiB still held.
    """
    ignored = set(ignore_pids)
    uuids = list(uuids)
    with nvml_session(nvml) as m:
        start = clock()
        while True:
            held: dict[str, list[tuple[int, int]]] = {}
            grown: dict[str, int] = {}
            error = ""
            try:
                procs = processes_by_uuid(m, uuids)
            except nvml_error_class(m) as exc:
                error = describe_error(exc)
            else:
                held = {u: [(p.pid, p.used_memory_mib) for p in listed
                            if p.used_memory_mib > limit_mib and p.pid not in ignored]
                        for u, listed in procs.items()}
                held = {u: p for u, p in held.items() if p}
                if memory_before_mib is not None:
                    used = memory_used_mib_by_uuid(m, uuids)
                    grown = {u: mib for u, mib in used.items() if mib > memory_before_mib.get(u, 0) + limit_mib}
                if not held and not grown:
                    return clock() - start
            waited = clock() - start
            if waited >= timeout_s:
                raise GpusNotFreed(_not_freed(m, timeout_s, limit_mib, held, grown, memory_before_mib or {}, error))
            sleep(max(0.0, min(poll_s, timeout_s - waited)))


def _not_freed(m: Any, timeout_s: float, limit_mib: int, held: Mapping[str, list[tuple[int, int]]],
               grown: Mapping[str, int], memory_before_mib: Mapping[str, int], error: str) -> str:
    parts = []
    for uuid in dict.fromkeys([*held, *grown]):
        index = index_of_uuid(m, uuid)
        name = f"GPU {index} ({uuid})" if index is not None else f"GPU {uuid}"
        what = [f"process {pid} holds {mib} MiB" for pid, mib in held.get(uuid, [])]
        if uuid in grown and not what:
            what.append(f"{grown[uuid]} MiB used, {memory_before_mib.get(uuid, 0)} MiB before the engine "
                        f"booted (by processes NVML does not list)")
        parts.append(name + ": " + ", ".join(what))
    if error:
        parts.append(f"NVML could not list the processes: {error}")
    return (f"GPUs not freed within {timeout_s:g} s (limit {limit_mib} MiB per process): " + "; ".join(parts)
            + "; stop those processes, or allow more time with --gpu-free-timeout")
