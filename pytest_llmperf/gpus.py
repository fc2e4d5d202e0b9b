"""GPU specs such as ``h200x8``: what a suite's node must be.

Pure: parsing and the table of known products. The NVML probe and the
checks against a node live in ``node/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuProduct:
    """A GPU product as NVML names it, with its expected memory."""

    key: str  # as written in a spec: "h200"
    nvml_names: tuple[str, ...]  # names nvmlDeviceGetName returns for it
    memory_total_mib: int  # typical nvmlDeviceGetMemoryInfo().total in MiB
    memory_tolerance_pct: float = 3.0


PRODUCTS: dict[str, GpuProduct] = {
    p.key: p
    for p in (
        GpuProduct("h200", ("NVIDIA H200", "NVIDIA H200 NVL"), 143771),
        GpuProduct("h100", ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100"), 81559),
        GpuProduct("h20", ("NVIDIA H20",), 97871),
        GpuProduct("b200", ("NVIDIA B200",), 183359),
        GpuProduct("a100", ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"), 81920),
        GpuProduct("l40s", ("NVIDIA L40S",), 46068),
    )
}

_SPEC_RE = re.compile(r"^([a-z][a-z0-9]*)x([1-9][0-9]*)$")
SPEC_EXAMPLES = "h200x8, h100x4, a100x8, h200x1, any"


@dataclass(frozen=True)
class GpuSpec:
    """``<gpu>x<count>`` (``h200x8``) or ``any`` (no constraint)."""

    product: GpuProduct | None
    count: int

    @property
    def is_any(self) -> bool:
        return self.product is None

    def __str__(self) -> str:
        return "any" if self.product is None else f"{self.product.key}x{self.count}"


def parse_gpu_spec(text: str) -> GpuSpec:
    """Parse a ``--gpus`` value; ValueError says what is valid."""
    spec = text.strip().lower()
    if spec == "any":
        return GpuSpec(None, 0)
    match = _SPEC_RE.match(spec)
    if not match:
        raise ValueError(f"malformed GPU spec {text!r}: expected <gpu>x<count>, e.g. {SPEC_EXAMPLES}")
    key, count = match.group(1), int(match.group(2))
    if key not in PRODUCTS:
        known = ", ".join(sorted(PRODUCTS))
        raise ValueError(f"unknown GPU {key!r} in {text!r}: known GPUs are {known} (e.g. {SPEC_EXAMPLES})")
    return GpuSpec(PRODUCTS[key], count)
