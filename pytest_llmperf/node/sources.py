"""Where the node gate reads a node from: live NVML, a recorded file, or the simulated node.

Each source's ``read()`` gives a ``NodeReading``: the snapshot (or why there
is none), the text naming where it came from (the ``source`` of a verdict),
and whether its GPUs are this machine's (``live``: only then can engines,
telemetry and wait-until-freed use them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol

from .nvml import NoGpuDriver, probe_node
from .snapshot import SIM_NODE_SNAPSHOT, NodeSnapshot, load_snapshot, restrict_to_visible


@dataclass(frozen=True)
class NodeReading:
    """A node as one source read it."""

    source: str  # e.g. "live NVML, CUDA_VISIBLE_DEVICES=0,1", "snapshot node.json", "simulated node hgx-h200x8.json"
    live: bool  # the GPUs are this machine's
    snapshot: NodeSnapshot | None  # None when the node could not be read
    error: str = ""  # why it could not, one line naming the next step

    @property
    def ok(self) -> bool:
        return self.snapshot is not None


class SnapshotSource(Protocol):
    live: ClassVar[bool]  # its GPUs are this machine's

    def read(self) -> NodeReading:
        """The node now. A node that cannot be read live is a reading with ``error``; a bad file is a ValueError."""
        ...


@dataclass(frozen=True)
class LiveNvml:
    """This machine's GPUs through NVML, limited to ``visible_devices`` (CUDA_VISIBLE_DEVICES syntax) when given."""

    visible_devices: str | None = None
    nvml: Any = None  # an injected module; default pynvml
    live: ClassVar[bool] = True

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, nvml: Any = None) -> "LiveNvml":
        """The GPUs an engine started from this environment would see: CUDA_VISIBLE_DEVICES when it is set."""
        return cls(environ.get("CUDA_VISIBLE_DEVICES"), nvml)

    def read(self) -> NodeReading:
        try:
            snapshot = probe_node(self.nvml)
        except NoGpuDriver as exc:
            return NodeReading("live NVML", True, None, str(exc))
        if self.visible_devices is None:
            return NodeReading("live NVML", True, snapshot)
        try:
            visible = restrict_to_visible(snapshot, self.visible_devices)
        except ValueError as exc:
            return NodeReading("live NVML", True, None, str(exc))
        return NodeReading(f"live NVML, CUDA_VISIBLE_DEVICES={self.visible_devices}", True, visible)


@dataclass(frozen=True)
class RecordedFile:
    """A recorded snapshot (``--gpu-snapshot FILE``); named as given."""

    path: str | os.PathLike[str]
    live: ClassVar[bool] = False

    def read(self) -> NodeReading:
        return NodeReading(f"snapshot {self.path}", False, load_snapshot(Path(self.path)))


SIM_NODE_ENV = "LLMPERF_SIM_NODE"


@dataclass(frozen=True)
class SimulatedNode:
    """The node the simulated engine runs on: a recorded 8x H200 HGX snapshot, or the one ``LLMPERF_SIM_NODE``
    names (so each xdist worker can stand in for another node: ``--tx popen//env:LLMPERF_SIM_NODE=FILE``)."""

    path: Path = SIM_NODE_SNAPSHOT
    live: ClassVar[bool] = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "SimulatedNode":
        value = environ.get(SIM_NODE_ENV)
        return cls(Path(value)) if value else cls()

    def read(self) -> NodeReading:
        where = f"simulated node {self.path.name}"
        try:
            return NodeReading(where, False, load_snapshot(self.path))
        except (ValueError, OSError) as exc:  # a node that cannot be read fails its configurations, not the run
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return NodeReading(where, False, None, f"cannot read the simulated node {self.path} "
                                                   f"({SIM_NODE_ENV}): {reason}")
