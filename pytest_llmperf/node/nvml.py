"""NVML access: the one place that imports ``pynvml`` (the nvidia-ml-py bindings), and only inside functions.

``nvml_session`` starts and stops NVML around a block; ``error_kind`` is the
one classification of NVML errors (by return code, or by the bindings' error
class) that the probe, the wait-until-freed loop and the telemetry sampler
share. ``probe_node`` reads the node as a ``NodeSnapshot``; the functions
taking an open session (``m``) read processes and memory of GPUs by UUID,
since NVML's index order ignores CUDA_VISIBLE_DEVICES. Every function takes an
injected module as ``nvml`` (default: ``pynvml``), so tests run on a fake.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import warnings
from typing import Any, Callable, Iterator, Sequence

from .snapshot import GpuProcess, GpuState, NodeSnapshot

MIB = 1024 * 1024
NEXT_STEP = "real engines need one; use --gpu-snapshot FILE to check against a recorded node, or --engine=sim"
_FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
_NVLINK_MAX_LINKS_FALLBACK = 18


class NoGpuDriver(RuntimeError):
    """NVML cannot be used on this machine (no package, no library, no driver)."""

    def __init__(self, message: str, nvml_error: str = "") -> None:
        super().__init__(message)
        self.nvml_error = nvml_error  # what NVML itself said, when it said anything


class GpuUnreadable(NoGpuDriver):
    """NVML started but could not read a GPU the node reports (GPU lost, driver fault)."""


# ----------------------------------------------------------------- errors
class NvmlErrorKind(enum.Enum):
    """The NVML errors the node code tells apart: (return code, error class name in the bindings).

    The codes are stable across driver versions.
    """

    INVALID_ARGUMENT = (2, "NVMLError_InvalidArgument")
    NOT_SUPPORTED = (3, "NVMLError_NotSupported")
    DRIVER_NOT_LOADED = (9, "NVMLError_DriverNotLoaded")
    LIBRARY_NOT_FOUND = (12, "NVMLError_LibraryNotFound")
    FUNCTION_NOT_FOUND = (13, "NVMLError_FunctionNotFound")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def class_name(self) -> str:
        return self.value[1]


def error_code(exc: BaseException) -> int | None:
    """The NVML return code an error carries (``NVMLError.value``), if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_kind(exc: BaseException, nvml: Any = None) -> NvmlErrorKind | None:
    """Which of the known NVML errors ``exc`` is, by its code or by ``nvml``'s error class; None for any other."""
    code = error_code(exc)
    for kind in NvmlErrorKind:
        cls = getattr(nvml, kind.class_name, None) if nvml is not None else None
        if code == kind.code or (isinstance(cls, type) and isinstance(exc, cls)):
            return kind
    return None


def is_unsupported(exc: BaseException, nvml: Any = None) -> bool:
    """NotSupported or FunctionNotFound: the driver or GPU lacks this call (a missing value, not a failure)."""
    return error_kind(exc, nvml) in (NvmlErrorKind.NOT_SUPPORTED, NvmlErrorKind.FUNCTION_NOT_FOUND)


def means_no_driver(exc: BaseException, nvml: Any = None) -> bool:
    """LibraryNotFound or DriverNotLoaded: this machine has no usable NVIDIA driver."""
    return error_kind(exc, nvml) in (NvmlErrorKind.LIBRARY_NOT_FOUND, NvmlErrorKind.DRIVER_NOT_LOADED)


def nvml_error_class(nvml: Any) -> type[BaseException]:
    """The bindings' base error class (``NVMLError``); Exception when the module has none."""
    cls = getattr(nvml, "NVMLError", None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else Exception


def describe_error(exc: BaseException) -> str:
    """An NVML error as short text, e.g. ``GPU is lost``; the class and code when it has no text."""
    try:
        text = str(exc)
    except Exception:  # NVMLError.__str__ may itself call into NVML
        text = ""
    if text:
        return text
    code = error_code(exc)
    return type(exc).__name__ + (f" (code {code})" if code is not None else "")


# ----------------------------------------------------------------- session
def import_nvml() -> Any:
    """The ``pynvml`` module; NoGpuDriver when it is not importable."""
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


@contextlib.contextmanager
def nvml_session(nvml: Any = None,
                 on_shutdown_error: Callable[[BaseException], None] | None = None) -> Iterator[Any]:
    """``nvmlInit`` ... ``nvmlShutdown`` around a block; yields the module. NoGpuDriver when NVML cannot start.

    A failing ``nvmlShutdown`` is passed to ``on_shutdown_error`` when given, else ignored.
    """
    if nvml is None:
        nvml = import_nvml()
    try:
        nvml.nvmlInit()
    except nvml_error_class(nvml) as exc:
        said = describe_error(exc)
        if means_no_driver(exc, nvml):
            raise NoGpuDriver(f"no NVIDIA driver on this machine (NVML: {said}); {NEXT_STEP}", said) from None
        raise NoGpuDriver(
            f"NVML could not start on this machine (NVML: {said}); check nvidia-smi; {NEXT_STEP}", said) from None
    try:
        yield nvml
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            if on_shutdown_error is not None:
                on_shutdown_error(exc)


# ----------------------------------------------------------------- reading GPUs
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(nvml: Any, fn_name: str, *args: Any) -> Any:
    """Call ``nvml.<fn_name>(*args)``; None when the driver or GPU does not support it."""
    fn = getattr(nvml, fn_name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except nvml_error_class(nvml) as exc:
        if is_unsupported(exc, nvml):
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
        except nvml_error_class(nvml):
            continue  # NotSupported, FunctionNotFound, version mismatch: try the older call, else none
        state = int(info.state)
        return _FABRIC_STATES.get(state, f"unknown({state})"), int(getattr(info, "status", 0) or 0)
    return None


def _processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    procs = None
    # the newest symbol is missing from older drivers (FunctionNotFound): fall back to the previous one
    for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"):
        procs = _optional(nvml, fn_name, handle)
        if procs is not None:
            break
    out = []
    for p in procs or []:
        used = getattr(p, "usedGpuMemory", None)
        out.append(GpuProcess(int(p.pid), int(used) // MIB if used is not None else 0))
    return tuple(sorted(out, key=lambda p: p.pid))


def _nvlink_links_up(nvml: Any, handle: Any) -> int | None:
    if getattr(nvml, "nvmlDeviceGetNvLinkState", None) is None:
        return None
    up, answered = 0, False
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", _NVLINK_MAX_LINKS_FALLBACK))):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml_error_class(nvml) as exc:
            if is_unsupported(exc, nvml) or error_kind(exc, nvml) is NvmlErrorKind.INVALID_ARGUMENT:
                continue
            raise
        answered = True
        up += 1 if state else 0
    return up if answered else None


def _probe_gpu(nvml: Any, index: int, handle: Any) -> GpuState:
    """One GPU as NVML reports it; its NVLink peers are read once every GPU has been."""
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = _text(nvml.nvmlDeviceGetName(handle))
    uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    pci_bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
    mig = _optional(nvml, "nvmlDeviceGetMigMode", handle)
    ecc = _optional(nvml, "nvmlDeviceGetTotalEccErrors", handle,
                    getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1), getattr(nvml, "NVML_VOLATILE_ECC", 0))
    processes = _processes(nvml, handle)
    fabric = _fabric(nvml, handle)
    links = _nvlink_links_up(nvml, handle)
    numa = _optional(nvml, "nvmlDeviceGetNumaNodeId", handle)
    return GpuState(
        index=index,
        name=name,
        uuid=uuid,
        pci_bus_id=pci_bus_id,
        memory_total_mib=int(memory.total) // MIB,
        memory_used_mib=int(memory.used) // MIB,
        mig_enabled=bool(mig and mig[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)),
        ecc_uncorrected=int(ecc or 0),
        processes=processes,
        fabric_state=fabric[0] if fabric is not None else None,
        fabric_status=fabric[1] if fabric is not None and fabric[1] else None,
        nvlink_links_up=links,
        numa_node=numa if isinstance(numa, int) and numa >= 0 else None,
    )


def _nvlink_peers(m: Any, handles: Sequence[Any], i: int) -> tuple[int, ...]:
    if len(handles) < 2 or getattr(m, "nvmlDeviceGetP2PStatus", None) is None:
        return ()
    p2p_index = getattr(m, "NVML_P2P_CAPS_INDEX_NVLINK", 2)
    p2p_ok = getattr(m, "NVML_P2P_STATUS_OK", 0)
    return tuple(j for j, other in enumerate(handles)
                 if j != i and _optional(m, "nvmlDeviceGetP2PStatus", handles[i], other, p2p_index) == p2p_ok)


def probe_node(nvml: Any = None) -> NodeSnapshot:
    """This machine's GPUs, read through NVML, in NVML index order (all of them: CUDA_VISIBLE_DEVICES is ignored).

    Raises NoGpuDriver when NVML cannot be used, GpuUnreadable when a GPU cannot be read.
    """
    with nvml_session(nvml) as m:
        where = "nvmlSystemGetDriverVersion"
        try:
            driver_version = _text(m.nvmlSystemGetDriverVersion())
            cuda_driver_version = int(_optional(m, "nvmlSystemGetCudaDriverVersion") or 0)
            where = "nvmlDeviceGetCount"
            handles = []
            for i in range(int(m.nvmlDeviceGetCount())):
                where = f"GPU {i}"
                handles.append(m.nvmlDeviceGetHandleByIndex(i))
            gpus = []
            for i, h in enumerate(handles):
                where = f"GPU {i}"
                gpus.append(_probe_gpu(m, i, h))
            for i, gpu in enumerate(gpus):
                where = f"GPU {i} NVLink P2P"
                gpus[i] = dataclasses.replace(gpu, nvlink_peers=_nvlink_peers(m, handles, i))
        except nvml_error_class(m) as exc:
            said = describe_error(exc)
            raise GpuUnreadable(
                f"NVML could not read {where} ({said}); check nvidia-smi and the driver log; "
                f"use --gpu-snapshot FILE to check against a recorded node", said
            ) from None
        return NodeSnapshot(driver_version, cuda_driver_version, tuple(gpus))


def processes_by_uuid(m: Any, uuids: Sequence[str]) -> dict[str, tuple[GpuProcess, ...]]:
    """uuid -> compute processes on that GPU (by pid), in an open session ``m``; NVML errors propagate."""
    return {uuid: _processes(m, m.nvmlDeviceGetHandleByUUID(uuid)) for uuid in uuids}


def memory_used_mib_by_uuid(m: Any, uuids: Sequence[str]) -> dict[str, int]:
    """uuid -> memory used (MiB), whoever holds it, in an open session ``m``; NVML errors propagate."""
    return {u: int(m.nvmlDeviceGetMemoryInfo(m.nvmlDeviceGetHandleByUUID(u)).used) // MIB for u in uuids}


def index_of_uuid(m: Any, uuid: str) -> int | None:
    """The NVML index of the GPU with this UUID, in an open session ``m``; None when NVML cannot say."""
    try:
        return int(m.nvmlDeviceGetIndex(m.nvmlDeviceGetHandleByUUID(uuid)))
    except Exception:
        return None


def gpu_processes(uuids: Sequence[str], nvml: Any = None) -> dict[str, tuple[GpuProcess, ...]]:
    """uuid -> the compute processes on each GPU (by pid), looked up by UUID."""
    with nvml_session(nvml) as m:
        return processes_by_uuid(m, list(uuids))


def gpu_memory_used_mib(uuids: Sequence[str], nvml: Any = None) -> dict[str, int]:
    """uuid -> memory used (MiB), whoever holds it (NVML may not list processes of other containers)."""
    with nvml_session(nvml) as m:
        return memory_used_mib_by_uuid(m, list(uuids))
