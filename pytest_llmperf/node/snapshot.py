"""A GPU node as plain, typed values: what NVML read, or what a recorded file says. Pure.

The JSON layout (``python -m pytest_llmperf.topology snapshot``, the files in
``data/nodes/``)::

    {"driver_version": str, "cuda_driver_version": int, "description": str (recorded files only),
     "gpus": [{"index", "name", "uuid", "pci_bus_id", "memory_total_mib", "memory_used_mib",
               "mig_enabled", "ecc_uncorrected", "nvlink_peers": [int], "processes": [{"pid", "used_memory_mib"}],
               "fabric_state", "fabric_status", "nvlink_links_up", "numa_node"}]}

Only ``index``, ``name`` and ``memory_total_mib`` are required of a GPU; a key
the snapshot lacks (or NVML did not report: ``fabric_state`` where there is
no NVSwitch fabric) is None and is left out again by ``to_json``. Unknown
keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

NODES_DIR = Path(__file__).parent.parent / "data" / "nodes"
SIM_NODE_SNAPSHOT = NODES_DIR / "hgx-h200x8.json"


@dataclass(frozen=True)
class GpuProcess:
    """A compute process NVML lists on a GPU."""

    pid: int
    used_memory_mib: int


@dataclass(frozen=True, kw_only=True)
class GpuState:
    """One GPU of a node; None where the snapshot (or NVML) has no value."""

    index: int  # NVML index (ignores CUDA_VISIBLE_DEVICES)
    name: str  # as nvmlDeviceGetName returns it, e.g. "NVIDIA H200"
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total_mib: int
    memory_used_mib: int | None = None  # by anyone, listed or not
    mig_enabled: bool | None = None
    ecc_uncorrected: int | None = None  # volatile uncorrected ECC errors
    nvlink_peers: tuple[int, ...] = ()  # indices this GPU has NVLink P2P to
    processes: tuple[GpuProcess, ...] = ()  # by pid
    fabric_state: str | None = None  # NVSwitch fabric registration: "completed", "in_progress", ...
    fabric_status: int | None = None  # NVML status of that registration; nonzero: failed
    nvlink_links_up: int | None = None
    numa_node: int | None = None


@dataclass(frozen=True)
class NodeSnapshot:
    """A node: its driver and its GPUs, in the order the snapshot lists them."""

    driver_version: str | None
    cuda_driver_version: int | None
    gpus: tuple[GpuState, ...]
    description: str | None = None  # recorded files say what node they are

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> "NodeSnapshot":
        """The snapshot in ``data`` (parsed JSON); ValueError naming ``where`` (the file) and the key."""
        return _Reader(str(where)).node(data)

    def to_json(self) -> dict[str, Any]:
        """The JSON layout above: what ``from_json`` reads back to an equal snapshot."""
        out: dict[str, Any] = {"gpus": [_gpu_json(g) for g in self.gpus]}
        for key in ("driver_version", "cuda_driver_version", "description"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


_GPU_KEYS = tuple(f.name for f in dataclasses.fields(GpuState))


def _gpu_json(gpu: GpuState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _GPU_KEYS:
        value = getattr(gpu, key)
        if key == "nvlink_peers":
            out[key] = list(value)
        elif key == "processes":
            out[key] = [{"pid": p.pid, "used_memory_mib": p.used_memory_mib} for p in value]
        elif value is not None:
            out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Reader:
    """Validates parsed JSON into a NodeSnapshot; every error names the file and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, text: str) -> ValueError:
        return ValueError(f"GPU snapshot {self.where}: {text}")

    def optional(self, data: Mapping[str, Any], key: str, label: str, kind: type, what: str) -> Any:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"{label}.{key} must be {what}, not {value!r}")
        return value

    def node(self, data: Any) -> NodeSnapshot:
        if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
            raise self.fail("expected an object with a 'gpus' list")
        gpus = []
        seen: set[int] = set()
        for i, gpu in enumerate(data["gpus"]):
            state = self.gpu(gpu, f"gpus[{i}]")
            if state.index in seen:
                raise self.fail(f"GPU index {state.index} appears twice")
            seen.add(state.index)
            gpus.append(state)
        return NodeSnapshot(
            driver_version=self.optional(data, "driver_version", "snapshot", str, "a string"),
            cuda_driver_version=self.optional(data, "cuda_driver_version", "snapshot", int, "an integer"),
            gpus=tuple(gpus),
            description=self.optional(data, "description", "snapshot", str, "a string"),
        )

    def gpu(self, gpu: Any, label: str) -> GpuState:
        if not isinstance(gpu, dict):
            raise self.fail(f"{label} is not an object")
        missing = [k for k in ("index", "name", "memory_total_mib") if k not in gpu]
        if missing:
            raise self.fail(f"{label} lacks {', '.join(missing)}")
        for key in ("index", "memory_total_mib"):
            if not _is_int(gpu[key]):
                raise self.fail(f"{label}.{key} must be an integer, not {gpu[key]!r}")
        if not isinstance(gpu["name"], str):
            raise self.fail(f"{label}.name must be a string, not {gpu['name']!r}")
        peers = gpu.get("nvlink_peers") or []
        if not isinstance(peers, list) or not all(_is_int(p) for p in peers):
            raise self.fail(f"{label}.nvlink_peers must be a list of GPU indices, not {peers!r}")
        return GpuState(
            index=gpu["index"],
            name=gpu["name"],
            uuid=self.optional(gpu, "uuid", label, str, "a string"),
            pci_bus_id=self.optional(gpu, "pci_bus_id", label, str, "a string"),
            memory_total_mib=gpu["memory_total_mib"],
            memory_used_mib=self.optional(gpu, "memory_used_mib", label, int, "an integer"),
            mig_enabled=self.optional(gpu, "mig_enabled", label, bool, "true or false"),
            ecc_uncorrected=self.optional(gpu, "ecc_uncorrected", label, int, "an integer"),
            nvlink_peers=tuple(peers),
            processes=self.processes(gpu.get("processes") or [], f"{label}.processes"),
            fabric_state=self.optional(gpu, "fabric_state", label, str, "a string"),
            fabric_status=self.optional(gpu, "fabric_status", label, int, "an integer"),
            nvlink_links_up=self.optional(gpu, "nvlink_links_up", label, int, "an integer"),
            numa_node=self.optional(gpu, "numa_node", label, int, "an integer"),
        )

    def processes(self, procs: Any, label: str) -> tuple[GpuProcess, ...]:
        if not isinstance(procs, list):
            raise self.fail(f"{label} must be a list, not {procs!r}")
        out = []
        for j, proc in enumerate(procs):
            if not isinstance(proc, dict) or not _is_int(proc.get("pid")) or not _is_int(proc.get("used_memory_mib")):
                raise self.fail(f"{label}[{j}] must be {{\"pid\": int, \"used_memory_mib\": int}}, not {proc!r}")
            out.append(GpuProcess(proc["pid"], proc["used_memory_mib"]))
        return tuple(out)


def load_snapshot(path: str | Path) -> NodeSnapshot:
    """Read and validate a recorded node snapshot; ValueError naming the file (and the key) when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"GPU snapshot {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"GPU snapshot {path} is not valid JSON: {exc}") from None
    return NodeSnapshot.from_json(data, path)


def restrict_to_visible(snapshot: NodeSnapshot, visible: str) -> NodeSnapshot:
    """The snapshot's GPUs that ``CUDA_VISIBLE_DEVICES=visible`` exposes (entries: indices or UUIDs), in its order.

    ValueError for entries that name no GPU of the node (or MIG devices, which the checks do not cover).
    """
    by_index = {g.index: g for g in snapshot.gpus}
    by_uuid = {g.uuid: g for g in snapshot.gpus if g.uuid}
    chosen: list[GpuState] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        if entry.startswith("MIG-"):
            raise ValueError(f"CUDA_VISIBLE_DEVICES names MIG device {entry}; the node checks cover whole GPUs only")
        gpu = by_uuid.get(entry) or next(
            (g for u, g in by_uuid.items() if u.startswith(entry) and entry.startswith("GPU-")), None)
        if gpu is None and entry.isdigit():
            gpu = by_index.get(int(entry))
        if gpu is None:
            raise ValueError(f"CUDA_VISIBLE_DEVICES entry {entry!r} names no GPU of this node")
        if gpu not in chosen:
            chosen.append(gpu)
    return dataclasses.replace(snapshot, gpus=tuple(chosen))


def without_use_on(snapshot: NodeSnapshot, uuids: "set[str] | frozenset[str]") -> NodeSnapshot:
    """The node with the processes and memory use of these GPUs left out (they are leased to this run's other
    engines: their processes are not foreign, and their health was checked by whoever leased them)."""
    return dataclasses.replace(snapshot, gpus=tuple(
        dataclasses.replace(g, processes=(), memory_used_mib=0) if g.uuid in uuids else g for g in snapshot.gpus))


def hardware_only(snapshot: NodeSnapshot) -> NodeSnapshot:
    """The node with no process on it and no memory in use: its hardware alone.

    What the node of an external endpoint is checked as, since the endpoint's own processes are not foreign.
    """
    return dataclasses.replace(
        snapshot, gpus=tuple(dataclasses.replace(g, processes=(), memory_used_mib=0) for g in snapshot.gpus))
