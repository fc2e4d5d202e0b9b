"""The GPU node: snapshots, and the checks a run makes before any engine boots.

A snapshot is plain JSON (``{"driver_version", "cuda_driver_version",
"gpus": [...]}``, see README). ``check_node`` is pure: it takes a snapshot and
a spec and returns every problem found, each naming the GPU(s) involved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .gpus import GpuSpec

NODES_DIR = Path(__file__).parent / "data" / "nodes"
SIM_NODE_SNAPSHOT = NODES_DIR / "hgx-h200x8.json"

# A foreign process holding more than this on a GPU makes the node unfit.
FOREIGN_PROCESS_LIMIT_MIB = 1024


@dataclass(frozen=True)
class NodeVerdict:
    spec: str
    source: str  # where the snapshot came from
    problems: tuple[str, ...] = field(default_factory=tuple)
    gpu_indices: tuple[int, ...] = ()  # GPUs the engine gets, when fit

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            gpus = ",".join(str(i) for i in self.gpu_indices) or "-"
            return f"node fits {self.spec} ({self.source}; GPUs {gpus})"
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
    for i, gpu in enumerate(data["gpus"]):
        missing = [k for k in ("index", "name", "memory_total_mib") if k not in gpu]
        if missing:
            raise ValueError(f"GPU snapshot {path}: gpus[{i}] lacks {', '.join(missing)}")
    return data


def check_node(spec: GpuSpec, snapshot: Mapping[str, Any], source: str) -> NodeVerdict:
    """Every reason the node in ``snapshot`` does not fit ``spec``."""
    gpus = sorted(snapshot["gpus"], key=lambda g: g["index"])
    if spec.is_any:
        return NodeVerdict(str(spec), source, (), tuple(g["index"] for g in gpus))
    product = spec.product
    assert product is not None
    problems: list[str] = []
    if len(gpus) < spec.count:
        problems.append(f"{spec.count} GPUs needed, {len(gpus)} found")
    used = gpus[: spec.count]
    for gpu in used:
        idx = gpu["index"]
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
        if gpu.get("ecc_uncorrected", 0):
            problems.append(f"GPU {idx} reports {gpu['ecc_uncorrected']} volatile uncorrected ECC errors")
        for proc in gpu.get("processes", []):
            if proc.get("used_memory_mib", 0) > FOREIGN_PROCESS_LIMIT_MIB:
                problems.append(
                    f"GPU {idx}: process {proc['pid']} holds {proc['used_memory_mib']} MiB "
                    f"(limit {FOREIGN_PROCESS_LIMIT_MIB} MiB); stop it first"
                )
        state = gpu.get("fabric_state")
        if state is not None and state != "completed":
            problems.append(f"GPU {idx} fabric state is {state!r}, expected 'completed'")
    if spec.count > 1:
        indices = [g["index"] for g in used]
        peers = {g["index"]: set(g.get("nvlink_peers", [])) for g in used}
        missing = [(a, b) for n, a in enumerate(indices) for b in indices[n + 1 :] if b not in peers[a] or a not in peers[b]]
        if missing:
            pairs = ", ".join(f"{a}-{b}" for a, b in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            problems.append(f"no NVLink P2P between GPU pairs {pairs}{more}")
    return NodeVerdict(str(spec), source, tuple(problems), tuple(g["index"] for g in used) if not problems else ())
