"""Whether a node fits a GPU spec, and which of its GPUs an engine gets. Pure: a snapshot in, a verdict out.

Every problem is reported together, each naming the GPU(s) involved: the
count, the product, its memory, MIG, volatile uncorrected ECC errors, foreign
processes (and memory no listed process accounts for), NVLink P2P between
every pair used, and the NVSwitch fabric state where NVML reports one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..gpus import GpuProduct, GpuSpec
from .snapshot import GpuState, NodeSnapshot

# A foreign process holding more than this on a GPU makes the node unfit.
FOREIGN_PROCESS_LIMIT_MIB = 1024
# Memory in use that no listed process accounts for (processes of another
# container are invisible to NVML) makes a GPU unfit above this share of it.
UNACCOUNTED_MEMORY_LIMIT_PCT = 5.0


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


def gpu_problems(product: GpuProduct, gpu: GpuState) -> list[str]:
    """What makes one GPU unfit for ``product``, each naming it."""
    idx = gpu.index
    problems: list[str] = []
    if gpu.name not in product.nvml_names:
        problems.append(f"GPU {idx} is {gpu.name!r}, expected {' or '.join(map(repr, product.nvml_names))}")
    else:
        expected = product.memory_total_mib
        off_pct = abs(gpu.memory_total_mib - expected) / expected * 100
        if off_pct > product.memory_tolerance_pct:
            problems.append(
                f"GPU {idx} has {gpu.memory_total_mib} MiB, expected about {expected} MiB for {product.key}")
    if gpu.mig_enabled:
        problems.append(f"GPU {idx} has MIG enabled; disable it (nvidia-smi -i {idx} -mig 0)")
    if gpu.ecc_uncorrected:
        problems.append(f"GPU {idx} reports {gpu.ecc_uncorrected} volatile uncorrected ECC errors")
    listed_mib = 0
    for proc in gpu.processes:
        listed_mib += proc.used_memory_mib
        if proc.used_memory_mib > FOREIGN_PROCESS_LIMIT_MIB:
            problems.append(
                f"GPU {idx}: process {proc.pid} holds {proc.used_memory_mib} MiB "
                f"(limit {FOREIGN_PROCESS_LIMIT_MIB} MiB); stop it first"
            )
    if gpu.memory_used_mib is not None and gpu.memory_total_mib > 0:
        unaccounted = gpu.memory_used_mib - listed_mib
        if unaccounted > gpu.memory_total_mib * UNACCOUNTED_MEMORY_LIMIT_PCT / 100:
            problems.append(
                f"GPU {idx} has {gpu.memory_used_mib} MiB in use, {unaccounted} MiB of it by no process NVML lists "
                "(a process in another container?); free the GPU first"
            )
    state = gpu.fabric_state
    if state is not None and state not in ("completed", "not_supported"):
        problems.append(f"GPU {idx} fabric state is {state!r}, expected 'completed' (is nvidia-fabricmanager running?)")
    elif state == "completed" and gpu.fabric_status:
        problems.append(f"GPU {idx} fabric registration failed (NVML status {gpu.fabric_status})")
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


def _uuids(gpus: Sequence[GpuState]) -> tuple[str, ...]:
    uuids = tuple(g.uuid or "" for g in gpus)
    return uuids if all(uuids) else ()


def check_node(spec: GpuSpec, snapshot: NodeSnapshot, source: str) -> NodeVerdict:
    """Which GPUs of the node in ``snapshot`` an engine for ``spec`` gets, or every reason it cannot.

    ``source`` says where the snapshot came from, for the verdict's text. When
    the node has more GPUs than needed, the engine gets the lowest-indexed GPUs
    that pass every per-GPU check and (for more than one GPU) are all NVLinked
    to each other. When no such set exists, the problems reported are those of
    the first ``spec.count`` GPUs.
    """
    gpus = sorted(snapshot.gpus, key=lambda g: g.index)
    if spec.is_any:
        return NodeVerdict(str(spec), source, (), tuple(g.index for g in gpus), _uuids(gpus))
    product = spec.product
    assert product is not None
    by_index = {g.index: g for g in gpus}
    per_gpu = {g.index: gpu_problems(product, g) for g in gpus}
    peers = {g.index: set(g.nvlink_peers) for g in gpus}

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
        problems += per_gpu[gpu.index]
    if spec.count > 1:
        missing = _missing_links([g.index for g in used], peers)
        if missing:
            pairs = ", ".join(f"{a}-{b}" for a, b in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            problems.append(f"no NVLink P2P between GPU pairs {pairs}{more}")
    if not problems:  # cannot happen: a first-count set without problems is itself a fit set
        problems.append(f"no {spec.count} GPUs of the node pass every check and are NVLinked to each other")
    return NodeVerdict(str(spec), source, tuple(problems), ())
