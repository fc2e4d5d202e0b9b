"""The node gate: may an engine boot on this node, on which GPUs, and are they free again after it.

For each selected engine the node is read once from its snapshot source (a
recorded file with ``--gpu-snapshot``, the simulated node for the sim, live
NVML for real engines; an external endpoint only with ``--gpus``, and then
for hardware only) and checked against the GPU spec. After an engine on live
GPUs stops, its GPUs are waited for until freed; if they are not, the node is
marked dirty and nothing else may boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..gpus import GpuSpec
from .check import NodeVerdict, check_node
from .freed import GpusNotFreed


@dataclass(frozen=True)
class EngineNeeds:
    """What the gate needs to know of an engine."""

    uses_gpus: bool  # it runs on this node's GPUs
    own_source: Any = None  # the node it runs on when not this machine's (the sim's simulated node)
    largest_gpus: int | None = None  # GPUs of its largest selected configuration (None: all the spec's)


@dataclass(frozen=True)
class EngineNode:
    """The node as one engine meets it."""

    verdict: NodeVerdict
    live: bool = False  # the GPUs are this machine's, read through NVML (telemetry, wait until freed)
    gpu_name: str | None = None  # the product of the GPUs it gets, e.g. "NVIDIA H200" (baseline provenance)
    driver_version: str | None = None
    all_uuids: tuple[str, ...] = ()  # every GPU of the node (it names the node in GPU lease records)
    pids_at_check: frozenset[int] = frozenset()  # processes on its GPUs when checked (accepted; never waited for)

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        return tuple(self.verdict.gpu_uuids) if self.verdict.ok else ()


class NodeGate:
    """Checks the node once per selected engine; remembers a node left dirty."""

    not_freed = GpusNotFreed

    def __init__(self, spec: GpuSpec, engines: Mapping[str, EngineNeeds], spec_given: bool = False,
                 recorded: Path | None = None, free_timeout_s: float = 300.0, leased_now: Any = None):
        self.spec = spec
        self.engines = dict(engines)  # the selected engines (the session narrows them to what pytest selected)
        self.spec_given = spec_given  # --gpus was given (an external endpoint is checked only then)
        self.recorded = recorded  # --gpu-snapshot
        self.free_timeout_s = free_timeout_s
        self.leased_now = leased_now  # () -> GPU UUIDs other engines hold a lease on now (None: no leases)
        self.dirty: str | None = None
        self._nodes: dict[str, EngineNode] | None = None

    def source_for(self, needs: EngineNeeds) -> Any:
        """Where an engine's node is read from: the recorded file given, the engine's own simulated node,
        live NVML; None for an external endpoint without --gpus (its node may be another machine)."""
        from .sources import LiveNvml, RecordedFile

        if self.recorded is not None:
            return RecordedFile(self.recorded)
        if needs.own_source is not None:
            return needs.own_source
        if not needs.uses_gpus and not self.spec_given:
            return None
        return LiveNvml.from_environment()

    def nodes(self) -> dict[str, EngineNode]:
        """Every selected engine's node, read and checked on first use (each source read once)."""
        if self._nodes is None:
            from .snapshot import hardware_only, without_use_on

            nodes: dict[str, EngineNode] = {}
            readings: dict[Any, Any] = {}
            for engine, needs in sorted(self.engines.items()):
                source = self.source_for(needs)
                if source is None:
                    nodes[engine] = EngineNode(NodeVerdict("-", "not checked: an external endpoint is checked "
                                                                "only with --gpus"))
                    continue
                # Leases are read before and after the node: an engine freed and released in between is still
                # in the reading, and must not count as foreign.
                leased_before = set(self.leased_now()) if self.leased_now is not None else set()
                if source not in readings:
                    readings[source] = source.read()
                reading = readings[source]
                if reading.snapshot is None:
                    nodes[engine] = EngineNode(NodeVerdict(str(self.spec), reading.source, (reading.error,)))
                    continue
                snapshot, where = reading.snapshot, reading.source
                if reading.live and not needs.uses_gpus:  # an endpoint's own processes are not foreign
                    snapshot, where = hardware_only(snapshot), where + ", hardware only (external endpoint)"
                elif reading.live and self.leased_now is not None:
                    # engines of this run (other workers, or one that died and is letting go) or of another run
                    leased = leased_before | set(self.leased_now())
                    if leased & {g.uuid for g in snapshot.gpus}:
                        snapshot = without_use_on(snapshot, leased)
                pids_at_check = frozenset(p.pid for g in snapshot.gpus for p in g.processes)
                verdict = fit_largest(self.spec, snapshot, where, needs.largest_gpus)
                names = [g.name for g in snapshot.gpus if g.index in verdict.gpu_indices] or [g.name for g in snapshot.gpus]
                nodes[engine] = EngineNode(verdict, reading.live and needs.uses_gpus,
                                           names[0] if names else None, snapshot.driver_version,
                                           tuple(g.uuid for g in snapshot.gpus if g.uuid), pids_at_check)
            self._nodes = nodes
        return self._nodes

    def node(self, engine: str) -> EngineNode:
        return self.nodes().get(engine) or EngineNode(NodeVerdict(str(self.spec), "not checked"))

    def verdicts(self, check: bool = True) -> dict[str, NodeVerdict]:
        """Each engine's verdict; ``check=False``: only those already made (the summary reads the node no more)."""
        nodes = self.nodes() if check else (self._nodes or {})
        return {engine: node.verdict for engine, node in nodes.items()}

    def unfit(self, engine: str) -> str | None:
        """Why ``engine`` may not boot (the node does not fit, or was left dirty), or None."""
        if self.dirty:
            return self.dirty
        verdict = self.node(engine).verdict
        return None if verdict.ok else verdict.describe()

    def mark_dirty(self, message: str) -> None:
        self.dirty = self.dirty or message

    def gpu_release(self, engine: str, uuids: tuple[str, ...], label: str) -> "GpuWatch | None":
        """What to do around the life of ``label`` (a configuration of ``engine``) on live GPUs; None elsewhere."""
        if not (self.node(engine).live and uuids):
            return None
        return GpuWatch(self, label, uuids, self.free_timeout_s)

    def to_json(self) -> dict[str, Any]:
        return {
            engine: {"ok": n.verdict.ok, "source": n.verdict.source, "problems": list(n.verdict.problems),
                     "gpu_indices": list(n.verdict.gpu_indices), "gpu_uuids": list(n.gpu_uuids), "live": n.live,
                     "gpu_name": n.gpu_name, "driver_version": n.driver_version}
            for engine, n in (self._nodes or {}).items()
        }


def fit_largest(spec: GpuSpec, snapshot: Any, where: str, largest: int | None) -> NodeVerdict:
    """The node check for a suite whose largest configuration needs ``largest`` GPUs (None: all of the spec's).

    The node must fit the spec as before; a configuration larger than the spec never fits. Configurations
    lease their GPUs among those the check picks.
    """
    count = spec.count if not spec.is_any else len(snapshot.gpus)
    if largest is not None and largest > count:
        what = str(spec) if not spec.is_any else f"the node's {count} GPUs"
        return NodeVerdict(str(spec), where, (f"its largest configuration needs {largest} GPUs, more than "
                                              f"{what}",))
    return check_node(spec, snapshot, where)


class GpuWatch:
    """Around one engine on live GPUs: what was on them before it booted, and waiting until they are freed."""

    def __init__(self, gate: NodeGate, label: str, uuids: tuple[str, ...], timeout_s: float):
        self.gate, self.label, self.uuids, self.timeout_s = gate, label, uuids, timeout_s
        self._before: Any = None

    def before(self) -> None:
        from .freed import record_gpus_before

        self._before = record_gpus_before(list(self.uuids))

    def wait_freed(self) -> None:
        """GpusNotFreed after the timeout; the gate is marked dirty first, so nothing else boots."""
        from .freed import GpusBefore, wait_gpus_freed

        before = self._before or GpusBefore()
        try:
            wait_gpus_freed(list(self.uuids), self.timeout_s, ignore_pids=before.pids,
                            memory_before_mib=before.memory_used_mib)
        except GpusNotFreed as exc:
            self.gate.mark_dirty(f"after {self.label} stopped, its GPUs were not freed, so nothing else may "
                                 f"boot: {exc}")
            raise
