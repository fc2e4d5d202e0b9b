"""The GPU node: snapshots, the live NVML probe, and the checks a run makes before any engine boots.

A snapshot is plain JSON::

    {"driver_version": str, "cuda_driver_version": int,
     "gpus": [{"index", "name", "uuid", "pci_bus_id", "memory_total_mib", "memory_used_mib",
               "mig_enabled", "ecc_uncorrected", "nvlink_peers": [int], "processes": [{"pid", "used_memory_mib"}],
               "fabric_state" (only where NVML reports one), ...}]}

``probe_node`` reads one from NVML; ``load_snapshot`` reads a recorded one.
``check_node`` is pure: it takes a snapshot and a spec, picks the GPUs an
engine gets and returns every problem found, each naming the GPU(s) involved.
``gpu_processes`` and ``wait_gpus_freed`` watch GPUs by UUID after an engine
stops. ``pynvml`` (the nvidia-ml-py bindings) is imported lazily, inside the
functions that need it, so this module loads on machines without a driver.

Command line::

    python -m pytest_llmperf.topology snapshot [--output FILE]
    python -m pytest_llmperf.topology check --gpus SPEC [--gpu-snapshot FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Any, Callable, Iterator, Mapping, Sequence

from .gpus import GpuProduct, GpuSpec, parse_gpu_spec

NODES_DIR = Path(__file__).parent / "data" / "nodes"
SIM_NODE_SNAPSHOT = NODES_DIR / "hgx-h200x8.json"

# A foreign process holding more than this on a GPU makes the node unfit.
FOREIGN_PROCESS_LIMIT_MIB = 1024
# Memory in use that no listed process accounts for (processes of another
# container are invisible to NVML) makes a GPU unfit above this share of it.
UNACCOUNTED_MEMORY_LIMIT_PCT = 5.0

MIB = 1024 * 1024
# NVML return codes (stable across driver versions).
_NVML_SUCCESS = 0
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
_NVLINK_MAX_LINKS_FALLBACK = 18

NEXT_STEP = "real engines need one; use --gpu-snapshot FILE to check against a recorded node, or --engine=sim"


class NoGpuDriver(RuntimeError):
    """NVML cannot be used on this machine (no package, no library, no driver)."""


class GpuUnreadable(NoGpuDriver):
    """NVML started but could not read a GPU the node reports (GPU lost, driver fault)."""


class GpusNotFreed(RuntimeError):
    """Processes still hold memory on GPUs an engine used, after the timeout."""


# ----------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class NodeVerdict:
    spec: str
    source: str  # where the snapshot came from
    problems: tuple[str, ...] = field(default_factory=tuple)
    gpu_indices: tuple[int, ...] = ()  # GPUs the engine gets (NVML indices), when fit
    gpu_uuids: tuple[str, ...] = ()  # the same GPUs by UUID, in order; empty when unfit or the snapshot has none
    notes: tuple[str, ...] = ()  # GPUs passed over while picking a fit set, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            gpus = ",".join(str(i) for i in self.gpu_indices) or "-"
            lines = [f"node fits {self.spec} ({self.source}; GPUs {gpus})"]
            lines += [f"  note: {n}" for n in self.notes]
            return "\n".join(lines)
        lines = [f"node does not fit {self.spec} ({self.source}):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def load_snapshot(path: Path) -> dict[str, Any]:
    """Read and minimally validate a node snapshot."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"GPU snapshot {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"GPU snapshot {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise ValueError(f"GPU snapshot {path}: expected an object with a 'gpus' list")
    seen: set[int] = set()
    for i, gpu in enumerate(data["gpus"]):
        if not isinstance(gpu, dict):
            raise ValueError(f"GPU snapshot {path}: gpus[{i}] is not an object")
        missing = [k for k in ("index", "name", "memory_total_mib") if k not in gpu]
        if missing:
            raise ValueError(f"GPU snapshot {path}: gpus[{i}] lacks {', '.join(missing)}")
        for key in ("index", "memory_total_mib"):
            if not isinstance(gpu[key], int) or isinstance(gpu[key], bool):
                raise ValueError(f"GPU snapshot {path}: gpus[{i}].{key} must be an integer, not {gpu[key]!r}")
        if gpu["index"] in seen:
            raise ValueError(f"GPU snapshot {path}: GPU index {gpu['index']} appears twice")
        seen.add(gpu["index"])
    return data


def _gpu_problems(product: GpuProduct, gpu: Mapping[str, Any]) -> list[str]:
    """What makes one GPU unfit, each naming it."""
    idx = gpu["index"]
    problems: list[str] = []
    if gpu["name"] not in product.nvml_names:
        problems.append(f"GPU {idx} is {gpu['name']!r}, expected {' or '.join(map(repr, product.nvml_names))}")
    else:
        expected = product.memory_total_mib
        off_pct = abs(gpu["memory_total_mib"] - expected) / expected * 100
        if off_pct > product.memory_tolerance_pct:
            problems.append(
                f"GPU {idx} has {gpu['memory_total_mib']} MiB, expected about {expected} MiB for {product.key}"
            )
    if gpu.get("mig_enabled"):
        problems.append(f"GPU {idx} has MIG enabled; disable it (nvidia-smi -i {idx} -mig 0)")
    if gpu.get("ecc_uncorrected") or 0:
        problems.append(f"GPU {idx} reports {gpu['ecc_uncorrected']} volatile uncorrected ECC errors")
    listed_mib = 0
    for proc in gpu.get("processes") or []:
        used = proc.get("used_memory_mib") or 0
        listed_mib += used
        if used > FOREIGN_PROCESS_LIMIT_MIB:
            problems.append(
                f"GPU {idx}: process {proc['pid']} holds {used} MiB "
                f"(limit {FOREIGN_PROCESS_LIMIT_MIB} MiB); stop it first"
            )
    used_mib = gpu.get("memory_used_mib")
    if isinstance(used_mib, (int, float)) and gpu["memory_total_mib"] > 0:
        unaccounted = used_mib - listed_mib
        if unaccounted > gpu["memory_total_mib"] * UNACCOUNTED_MEMORY_LIMIT_PCT / 100:
            problems.append(
                f"GPU {idx} has {used_mib} MiB in use, {unaccounted} MiB of it by no process NVML lists "
                "(a process in another container?); free the GPU first"
            )
    state = gpu.get("fabric_state")
    if state is not None and state not in ("completed", "not_supported"):
        problems.append(f"GPU {idx} fabric state is {state!r}, expected 'completed' (is nvidia-fabricmanager running?)")
    elif state == "completed" and gpu.get("fabric_status"):
        problems.append(f"GPU {idx} fabric registration failed (NVML status {gpu['fabric_status']})")
    return problems


def _linked(peers: Mapping[int, set[int]], a: int, b: int) -> bool:
    return b in peers.get(a, set()) and a in peers.get(b, set())


def _first_clique(candidates: Sequence[int], peers: Mapping[int, set[int]], size: int) -> list[int] | None:
    """The lexicographically first ``size`` candidates that are all NVLinked to each other."""
    chosen: list[int] = []

    def extend(start: int) -> bool:
        if len(chosen) == size:
            return True
        for pos in range(start, len(candidates)):
            if len(candidates) - pos < size - len(chosen):
                return False
            c = candidates[pos]
            if all(_linked(peers, c, other) for other in chosen):
                chosen.append(c)
                if extend(pos + 1):
                    return True
                chosen.pop()
        return False

    return chosen if extend(0) else None


def _missing_links(indices: Sequence[int], peers: Mapping[int, set[int]]) -> list[tuple[int, int]]:
    return [(a, b) for n, a in enumerate(indices) for b in indices[n + 1 :] if not _linked(peers, a, b)]


def _uuids(gpus: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    uuids = tuple(g.get("uuid") or "" for g in gpus)
    return uuids if all(uuids) else ()


def check_node(spec: GpuSpec, snapshot: Mapping[str, Any], source: str) -> NodeVerdict:
    """Which GPUs of the node in ``snapshot`` an engine for ``spec`` gets, or every reason it cannot.

    When the node has more GPUs than needed, the engine gets the lowest-indexed
    GPUs that pass every per-GPU check and (for more than one GPU) are all
    NVLinked to each other. When no such set exists, the problems reported are
    those of the first ``spec.count`` GPUs.
    """
    gpus = sorted(snapshot["gpus"], key=lambda g: g["index"])
    if spec.is_any:
        return NodeVerdict(str(spec), source, (), tuple(g["index"] for g in gpus), _uuids(gpus))
    product = spec.product
    assert product is not None
    by_index = {g["index"]: g for g in gpus}
    per_gpu = {g["index"]: _gpu_problems(product, g) for g in gpus}
    peers = {g["index"]: set(g.get("nvlink_peers") or []) for g in gpus}

    if len(gpus) >= spec.count:
        healthy = [i for i in by_index if not per_gpu[i]]
        if spec.count == 1:
            picked = healthy[:1] or None
        else:
            picked = _first_clique(healthy, peers, spec.count)
        if picked:
            notes = []
            for i in by_index:
                if i > picked[-1]:
                    break
                if i in picked:
                    continue
                if per_gpu[i]:
                    notes.append(f"GPU {i} passed over: " + "; ".join(per_gpu[i]))
                else:
                    unlinked = [j for j in picked if not _linked(peers, i, j)]
                    why = f"no NVLink P2P to GPU {', '.join(map(str, unlinked))}" if unlinked else "not needed"
                    notes.append(f"GPU {i} passed over: {why}")
            chosen = [by_index[i] for i in picked]
            return NodeVerdict(str(spec), source, (), tuple(picked), _uuids(chosen), tuple(notes))

    problems: list[str] = []
    if len(gpus) < spec.count:
        problems.append(f"{spec.count} GPU{'s' if spec.count > 1 else ''} needed, {len(gpus)} found")
    used = gpus[: spec.count]
    for gpu in used:
        problems += per_gpu[gpu["index"]]
    if spec.count > 1:
        missing = _missing_links([g["index"] for g in used], peers)
        if missing:
            pairs = ", ".join(f"{a}-{b}" for a, b in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            problems.append(f"no NVLink P2P between GPU pairs {pairs}{more}")
    if not problems:  # cannot happen: a first-count set without problems is itself a fit set
        problems.append(f"no {spec.count} GPUs of the node pass every check and are NVLinked to each other")
    return NodeVerdict(str(spec), source, tuple(problems), ())


# ----------------------------------------------------------------- NVML access
def _import_nvml() -> Any:
    try:
        with warnings.catch_warnings():
            # the deprecated "pynvml" distribution warns on import; nvidia-ml-py does not
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml  # type: ignore[import-not-found]
    except ImportError as exc:
        raise NoGpuDriver(
            f"no NVIDIA driver on this machine (NVML: the nvidia-ml-py package is not importable: {exc}); {NEXT_STEP}"
        ) from None
    return pynvml


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _is_error(nvml: Any, exc: BaseException, code: int, class_name: str) -> bool:
    cls = getattr(nvml, class_name, None)
    return _code(exc) == code or (isinstance(cls, type) and isinstance(exc, cls))


def _unsupported(nvml: Any, exc: BaseException) -> bool:
    """NotSupported or FunctionNotFound: the driver or GPU lacks this call."""
    return _is_error(nvml, exc, _NVML_ERROR_NOT_SUPPORTED, "NVMLError_NotSupported") or _is_error(
        nvml, exc, _NVML_ERROR_FUNCTION_NOT_FOUND, "NVMLError_FunctionNotFound"
    )


def _nvml_error(nvml: Any) -> type[BaseException]:
    cls = getattr(nvml, "NVMLError", None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else Exception


def _describe_error(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # NVMLError.__str__ may itself call into NVML
        text = ""
    return text or f"{type(exc).__name__} (code {_code(exc)})"


@contextlib.contextmanager
def nvml_session(nvml: Any = None) -> Iterator[Any]:
    """``nvmlInit`` ... ``nvmlShutdown`` around a block; yields the module. NoGpuDriver when NVML cannot start."""
    if nvml is None:
        nvml = _import_nvml()
    try:
        nvml.nvmlInit()
    except _nvml_error(nvml) as exc:
        if _is_error(nvml, exc, _NVML_ERROR_LIBRARY_NOT_FOUND, "NVMLError_LibraryNotFound") or _is_error(
            nvml, exc, _NVML_ERROR_DRIVER_NOT_LOADED, "NVMLError_DriverNotLoaded"
        ):
            raise NoGpuDriver(f"no NVIDIA driver on this machine (NVML: {_describe_error(exc)}); {NEXT_STEP}") from None
        raise NoGpuDriver(
            f"NVML could not start on this machine (NVML: {_describe_error(exc)}); check nvidia-smi; {NEXT_STEP}"
        ) from None
    try:
        yield nvml
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(nvml: Any, fn_name: str, *args: Any) -> Any:
    """Call ``nvml.<fn_name>(*args)``; None when the driver or GPU does not support it."""
    fn = getattr(nvml, fn_name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except _nvml_error(nvml) as exc:
        if _unsupported(nvml, exc):
            return None
        raise


def _fabric(nvml: Any, handle: Any) -> tuple[str, int] | None:
    """(state, status) of the GPU's NVSwitch fabric registration; None when NVML reports none."""
    variants = (("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfoV_t"),
                ("nvmlDeviceGetGpuFabricInfo", "c_nvmlGpuFabricInfo_t"))
    for fn_name, struct_name in variants:
        fn, struct = getattr(nvml, fn_name, None), getattr(nvml, struct_name, None)
        if fn is None or struct is None:
            continue
        info = struct()
        try:
            fn(handle, ctypes.byref(info))
        except _nvml_error(nvml):
            continue  # NotSupported, FunctionNotFound, version mismatch: try the older call, else none
        state = int(info.state)
        return _FABRIC_STATES.get(state, f"unknown({state})"), int(getattr(info, "status", 0) or 0)
    return None


def _processes(nvml: Any, handle: Any) -> list[dict[str, int]]:
    procs = None
    # the newest symbol is missing from older drivers (FunctionNotFound): fall back to the previous one
    for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"):
        procs = _optional(nvml, fn_name, handle)
        if procs is not None:
            break
    out = []
    for p in procs or []:
        used = getattr(p, "usedGpuMemory", None)
        out.append({"pid": int(p.pid), "used_memory_mib": int(used) // MIB if used is not None else 0})
    return sorted(out, key=lambda p: p["pid"])


def _nvlink_links_up(nvml: Any, handle: Any) -> int | None:
    if getattr(nvml, "nvmlDeviceGetNvLinkState", None) is None:
        return None
    up, answered = 0, False
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", _NVLINK_MAX_LINKS_FALLBACK))):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except _nvml_error(nvml) as exc:
            if _unsupported(nvml, exc) or _is_error(nvml, exc, _NVML_ERROR_INVALID_ARGUMENT,
                                                    "NVMLError_InvalidArgument"):
                continue
            raise
        answered = True
        up += 1 if state else 0
    return up if answered else None


def _probe_gpu(nvml: Any, index: int, handle: Any) -> dict[str, Any]:
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    gpu: dict[str, Any] = {
        "index": index,
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
        "memory_total_mib": int(memory.total) // MIB,
        "memory_used_mib": int(memory.used) // MIB,
    }
    mig = _optional(nvml, "nvmlDeviceGetMigMode", handle)
    gpu["mig_enabled"] = bool(mig and mig[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))
    ecc = _optional(nvml, "nvmlDeviceGetTotalEccErrors", handle,
                    getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1), getattr(nvml, "NVML_VOLATILE_ECC", 0))
    gpu["ecc_uncorrected"] = int(ecc or 0)
    gpu["processes"] = _processes(nvml, handle)
    fabric = _fabric(nvml, handle)
    if fabric is not None:
        gpu["fabric_state"] = fabric[0]
        if fabric[1]:
            gpu["fabric_status"] = fabric[1]
    links = _nvlink_links_up(nvml, handle)
    if links is not None:
        gpu["nvlink_links_up"] = links
    numa = _optional(nvml, "nvmlDeviceGetNumaNodeId", handle)
    if isinstance(numa, int) and numa >= 0:
        gpu["numa_node"] = numa
    return gpu


def probe_node(nvml: Any = None) -> dict[str, Any]:
    """This machine's GPUs as a snapshot, read through NVML (``nvml``: an injected module, default ``pynvml``).

    Raises NoGpuDriver when NVML cannot be used, GpuUnreadable when a GPU
    cannot be read.
    """
    with nvml_session(nvml) as m:
        where = "nvmlSystemGetDriverVersion"
        try:
            snapshot: dict[str, Any] = {
                "driver_version": _text(m.nvmlSystemGetDriverVersion()),
                "cuda_driver_version": int(_optional(m, "nvmlSystemGetCudaDriverVersion") or 0),
            }
            where = "nvmlDeviceGetCount"
            handles = []
            for i in range(int(m.nvmlDeviceGetCount())):
                where = f"GPU {i}"
                handles.append(m.nvmlDeviceGetHandleByIndex(i))
            gpus = []
            for i, h in enumerate(handles):
                where = f"GPU {i}"
                gpus.append(_probe_gpu(m, i, h))
            p2p_index = getattr(m, "NVML_P2P_CAPS_INDEX_NVLINK", 2)
            p2p_ok = getattr(m, "NVML_P2P_STATUS_OK", 0)
            for i, gpu in enumerate(gpus):
                where = f"GPU {i} NVLink P2P"
                peers = []
                if len(handles) > 1 and getattr(m, "nvmlDeviceGetP2PStatus", None) is not None:
                    for j, other in enumerate(handles):
                        if j != i and _optional(m, "nvmlDeviceGetP2PStatus", handles[i], other, p2p_index) == p2p_ok:
                            peers.append(j)
                gpu["nvlink_peers"] = peers
        except _nvml_error(m) as exc:
            raise GpuUnreadable(
                f"NVML could not read {where} ({_describe_error(exc)}); check nvidia-smi and the driver log; "
                f"use --gpu-snapshot FILE to check against a recorded node"
            ) from None
        snapshot["gpus"] = gpus
        return snapshot


def _processes_by_uuid(m: Any, uuids: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for uuid in uuids:
        handle = m.nvmlDeviceGetHandleByUUID(uuid)
        out[uuid] = [(p["pid"], p["used_memory_mib"]) for p in _processes(m, handle)]
    return out


def _memory_used_by_uuid(m: Any, uuids: Sequence[str]) -> dict[str, int]:
    return {u: int(m.nvmlDeviceGetMemoryInfo(m.nvmlDeviceGetHandleByUUID(u)).used) // 2**20 for u in uuids}


def gpu_memory_used_mib(uuids: Sequence[str], nvml: Any = None) -> dict[str, int]:
    """uuid -> memory used (MiB), whoever holds it (NVML may not list processes of other containers)."""
    with nvml_session(nvml) as m:
        return _memory_used_by_uuid(m, list(uuids))


def _index_of(m: Any, uuid: str) -> int | None:
    try:
        return int(m.nvmlDeviceGetIndex(m.nvmlDeviceGetHandleByUUID(uuid)))
    except Exception:
        return None


def restrict_to_visible(snapshot: Mapping[str, Any], visible: str) -> dict[str, Any]:
    """The snapshot's GPUs that ``CUDA_VISIBLE_DEVICES=visible`` exposes (entries: indices or UUIDs).

    ValueError for entries that name no GPU of the node (or MIG devices, which the checks do not cover).
    """
    gpus = {g["index"]: g for g in snapshot["gpus"]}
    by_uuid = {str(g.get("uuid", "")): g for g in snapshot["gpus"] if g.get("uuid")}
    chosen: list[Any] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        if entry.startswith("MIG-"):
            raise ValueError(f"CUDA_VISIBLE_DEVICES names MIG device {entry}; the node checks cover whole GPUs only")
        gpu = by_uuid.get(entry) or next((g for u, g in by_uuid.items() if u.startswith(entry) and entry.startswith("GPU-")), None)
        if gpu is None and entry.isdigit():
            gpu = gpus.get(int(entry))
        if gpu is None:
            raise ValueError(f"CUDA_VISIBLE_DEVICES entry {entry!r} names no GPU of this node")
        if gpu not in chosen:
            chosen.append(gpu)
    return {**snapshot, "gpus": chosen}


def gpu_processes(uuids: Sequence[str], nvml: Any = None) -> dict[str, list[tuple[int, int]]]:
    """uuid -> [(pid, used MiB)] of the compute processes on each GPU, looked up by UUID.

    NVML's index order ignores CUDA_VISIBLE_DEVICES, so GPUs are always named by UUID.
    """
    with nvml_session(nvml) as m:
        return _processes_by_uuid(m, list(uuids))


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
                procs = _processes_by_uuid(m, uuids)
            except _nvml_error(m) as exc:
                error = _describe_error(exc)
            else:
                held = {u: [(pid, mib) for pid, mib in p if mib > limit_mib and pid not in ignored] for u, p in procs.items()}
                held = {u: p for u, p in held.items() if p}
                if memory_before_mib is not None:
                    used = _memory_used_by_uuid(m, uuids)
                    grown = {u: mib for u, mib in used.items() if mib > memory_before_mib.get(u, 0) + limit_mib}
                if not held and not grown:
                    return clock() - start
            waited = clock() - start
            if waited >= timeout_s:
                parts = []
                for uuid in dict.fromkeys([*held, *grown]):
                    index = _index_of(m, uuid)
                    name = f"GPU {index} ({uuid})" if index is not None else f"GPU {uuid}"
                    what = [f"process {pid} holds {mib} MiB" for pid, mib in held.get(uuid, [])]
                    if uuid in grown and not what:
                        what.append(f"{grown[uuid]} MiB used, {memory_before_mib.get(uuid, 0)} MiB before the engine "  # type: ignore[union-attr]
                                    f"booted (by processes NVML does not list)")
                    parts.append(name + ": " + ", ".join(what))
                if error:
                    parts.append(f"NVML could not list the processes: {error}")
                raise GpusNotFreed(
                    f"GPUs not freed within {timeout_s:g} s (limit {limit_mib} MiB per process): "
                    + "; ".join(parts)
                    + "; stop those processes, or allow more time with --gpu-free-timeout"
                )
            sleep(max(0.0, min(poll_s, timeout_s - waited)))


# ----------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmperf.topology",
        description="Record this node's GPUs as a JSON snapshot, or check a node against a GPU spec.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="print this node (live NVML) as a JSON snapshot")
    snap.add_argument("--output", "-o", metavar="FILE", help="write the snapshot to FILE instead of printing it")
    check = sub.add_parser("check", help="check a node against a GPU spec; exit 0 fit, 1 unfit, 2 error")
    check.add_argument("--gpus", required=True, metavar="SPEC", help="e.g. h200x8, h200x1, any")
    check.add_argument("--gpu-snapshot", metavar="FILE", help="check this recorded snapshot instead of live NVML")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors and --help
        return int(exc.code or 0)

    try:
        if args.command == "snapshot":
            text = json.dumps(probe_node(), indent=2, sort_keys=True) + "\n"
            if args.output:
                Path(args.output).write_text(text)
                print(f"wrote {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return 0
        spec = parse_gpu_spec(args.gpus)
        if args.gpu_snapshot:
            snapshot, source = load_snapshot(Path(args.gpu_snapshot)), f"snapshot {args.gpu_snapshot}"
        else:
            snapshot, source = probe_node(), "live NVML"
    except (NoGpuDriver, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = check_node(spec, snapshot, source)
    print(verdict.describe())
    if verdict.ok and verdict.gpu_uuids:
        print("CUDA_VISIBLE_DEVICES=" + ",".join(verdict.gpu_uuids))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
