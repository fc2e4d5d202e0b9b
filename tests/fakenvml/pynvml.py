"""A fake of the nvidia-ml-py module (import name ``pynvml``), for tests.

Put this directory first on PYTHONPATH and ``import pynvml`` gets this module.
It has the real module's function names, constants and NVMLError classes
(the values are those of nvidia-ml-py), and answers from a node described in
a directory named by the environment variable ``LLMPERF_FAKE_NVML_DIR``,
read again on every call so tests and other processes can change it:

``node.json``
    A node snapshot (the schema of ``pytest_llmperf.topology``), with optional
    extras. Top level: ``"no_driver": true`` (nvmlInit raises
    NVMLError_LibraryNotFound), ``"unsupported"`` / ``"missing"``: function
    names that raise NotSupported / FunctionNotFound, ``"fail"``:
    ``{function name: NVML error code}``. Per GPU: ``fabric_state``
    ("completed", "in_progress", "not_started", "not_supported"; absent: the
    fabric call is not supported), ``fabric_status`` (int), ``sm_clock_mhz``,
    ``mem_clock_mhz``, ``power_mw``, ``power_limit_mw``, ``temperature_c``,
    ``utilization_gpu_pct``, ``utilization_memory_pct``,
    ``clocks_event_reasons`` (int bitmask), ``nvlink_links_up``,
    ``numa_node``, and ``unsupported`` / ``missing`` / ``fail`` as above for
    that GPU only. ``mig_enabled: null`` or ``ecc_uncorrected: null`` make
    those calls NotSupported; a process with ``used_memory_mib: null`` is
    reported with ``usedGpuMemory`` None. NVLink P2P status is OK from GPU i to
    GPU j exactly when j is in GPU i's ``nvlink_peers``.

``procs/<pid>.json``
    ``{"pid": int, "uuids": [str, ...], "used_memory_mib": int,
    "release_delay_s": float (optional, default 0)}``: a process holding
    memory on those GPUs. It is reported by
    nvmlDeviceGetComputeRunningProcesses (and added to the memory used) while
    the pid is alive, and for ``release_delay_s`` seconds after it is first
    seen dead; that moment is written into the file (``"dead_at"``, epoch
    seconds) atomically, the first time it is noticed. The files are never
    removed. Processes listed in node.json ``gpus[].processes`` are always
    reported and are already part of ``memory_used_mib``.

Without the environment variable (or without node.json) nvmlInit raises
NVMLError_LibraryNotFound, as on a machine without a driver.

In-process, ``FakeNvml.from_snapshot(dict, procs=[...])`` (also
``make_module``) and ``FakeNvml.from_dir(path)`` build module-like objects to
inject as ``nvml=``; the snapshot dict and proc dicts are read live, so a test
may change them between calls.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ENV_DIR = "LLMPERF_FAKE_NVML_DIR"
MIB = 1024 * 1024

# ----------------------------------------------------------------- constants (values as in nvidia-ml-py)
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_GPU_MAX = 1
NVML_TEMPERATURE_COUNT = 2

NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_MEMORY_ERROR_TYPE_COUNT = 2

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3
NVML_CLOCK_COUNT = 4

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1

NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1

NVML_NVLINK_MAX_LINKS = 36

NVML_P2P_CAPS_INDEX_READ = (0,)  # a tuple by mistake in nvidia-ml-py too; kept so code trips on it here
NVML_P2P_CAPS_INDEX_WRITE = 1
NVML_P2P_CAPS_INDEX_NVLINK = 2
NVML_P2P_CAPS_INDEX_ATOMICS = 3
NVML_P2P_CAPS_INDEX_PCI = 4
NVML_P2P_CAPS_INDEX_PROP = 4
NVML_P2P_CAPS_INDEX_UNKNOWN = 5

NVML_P2P_STATUS_OK = 0
NVML_P2P_STATUS_CHIPSET_NOT_SUPPORED = 1
NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED = NVML_P2P_STATUS_CHIPSET_NOT_SUPPORED
NVML_P2P_STATUS_GPU_NOT_SUPPORTED = 2
NVML_P2P_STATUS_IOH_TOPOLOGY_NOT_SUPPORTED = 3
NVML_P2P_STATUS_DISABLED_BY_REGKEY = 4
NVML_P2P_STATUS_NOT_SUPPORTED = 5
NVML_P2P_STATUS_UNKNOWN = 6

NVML_TOPOLOGY_INTERNAL = 0
NVML_TOPOLOGY_SINGLE = 10
NVML_TOPOLOGY_MULTIPLE = 20
NVML_TOPOLOGY_HOSTBRIDGE = 30
NVML_TOPOLOGY_NODE = 40
NVML_TOPOLOGY_SYSTEM = 50

NVML_GPU_FABRIC_UUID_LEN = 16
NVML_GPU_FABRIC_STATE_NOT_SUPPORTED = 0
NVML_GPU_FABRIC_STATE_NOT_STARTED = 1
NVML_GPU_FABRIC_STATE_IN_PROGRESS = 2
NVML_GPU_FABRIC_STATE_COMPLETED = 3
nvmlGpuFabricInfo_v2 = 0x02000024
nvmlMemory_v2 = 0x02000028

NVML_VALUE_NOT_AVAILABLE_ulonglong = ctypes.c_ulonglong(-1)

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSyncBoost = 0x0000000000000010
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100
nvmlClocksEventReasonNone = 0x0000000000000000
nvmlClocksThrottleReasonGpuIdle = nvmlClocksEventReasonGpuIdle
nvmlClocksThrottleReasonApplicationsClocksSetting = nvmlClocksEventReasonApplicationsClocksSetting
nvmlClocksThrottleReasonSwPowerCap = nvmlClocksEventReasonSwPowerCap
nvmlClocksThrottleReasonHwSlowdown = nvmlClocksEventReasonHwSlowdown
nvmlClocksThrottleReasonSyncBoost = nvmlClocksEventReasonSyncBoost
nvmlClocksThrottleReasonSwThermalSlowdown = nvmlClocksEventReasonSwThermalSlowdown
nvmlClocksThrottleReasonHwThermalSlowdown = nvmlClocksEventReasonHwThermalSlowdown
nvmlClocksThrottleReasonHwPowerBrakeSlowdown = nvmlClocksEventReasonHwPowerBrakeSlowdown
nvmlClocksThrottleReasonDisplayClockSetting = nvmlClocksEventReasonDisplayClockSetting
nvmlClocksThrottleReasonNone = nvmlClocksEventReasonNone

_FABRIC_STATES = {
    "not_supported": NVML_GPU_FABRIC_STATE_NOT_SUPPORTED,
    "not_started": NVML_GPU_FABRIC_STATE_NOT_STARTED,
    "in_progress": NVML_GPU_FABRIC_STATE_IN_PROGRESS,
    "completed": NVML_GPU_FABRIC_STATE_COMPLETED,
}
_H200_LINKS = 18  # NVLink links per H200 SXM; higher link numbers are invalid arguments


# ----------------------------------------------------------------- errors
_ERROR_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument Version Mismatch",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Base of the NVML errors; ``NVMLError(code)`` is an instance of the subclass for that code."""

    _code: int | None = None
    _by_code: dict[int, type] = {}

    def __new__(cls, value: int | None = None, *args: Any) -> "NVMLError":
        if cls is NVMLError and value in NVMLError._by_code:
            cls = NVMLError._by_code[value]
        obj = Exception.__new__(cls)
        obj.value = value if value is not None else cls._code
        return obj

    def __init__(self, value: int | None = None, *args: Any) -> None:
        Exception.__init__(self, self.value)

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")


def _error_class_name(constant: str) -> str:
    # NVML_ERROR_LIBRARY_NOT_FOUND -> NVMLError_LibraryNotFound (the real module's naming)
    words = constant[len("NVML_ERROR_"):].split("_")
    return "NVMLError_" + "".join(w.capitalize() for w in words)


for _name, _value in list(globals().items()):
    if _name.startswith("NVML_ERROR_"):
        _cls = type(_error_class_name(_name), (NVMLError,), {"_code": _value})
        _cls.__module__ = __name__
        globals()[_cls.__name__] = _cls
        NVMLError._by_code[_value] = _cls
del _name, _value, _cls


def nvmlErrorString(result: int) -> str:
    return _ERROR_TEXT.get(result, f"NVML Error with code {result}")


# ----------------------------------------------------------------- structures
class c_nvmlGpuFabricInfo_t(ctypes.Structure):
    _fields_ = [
        ("clusterUuid", ctypes.c_uint8 * NVML_GPU_FABRIC_UUID_LEN),
        ("status", ctypes.c_int),
        ("cliqueId", ctypes.c_uint32),
        ("state", ctypes.c_uint),
    ]


class c_nvmlGpuFabricInfo_v2_t(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("clusterUuid", ctypes.c_uint8 * NVML_GPU_FABRIC_UUID_LEN),
        ("status", ctypes.c_int),
        ("cliqueId", ctypes.c_uint32),
        ("state", ctypes.c_uint),
        ("healthMask", ctypes.c_uint32),
    ]

    def __init__(self) -> None:
        super().__init__(version=nvmlGpuFabricInfo_v2)


c_nvmlGpuFabricInfoV_t = c_nvmlGpuFabricInfo_v2_t


class _Record:
    """Plain attribute bag, like the real module's friendly objects."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class c_nvmlMemory_t(_Record):
    pass


class c_nvmlUtilization_t(_Record):
    pass


class nvmlPciInfo_t(_Record):
    pass


class c_nvmlProcessInfo_t(_Record):
    pass


class _Handle:
    """An opaque device handle: names its GPU by UUID."""

    __slots__ = ("uuid",)

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Handle) and other.uuid == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<fake nvmlDevice {self.uuid}>"


# ----------------------------------------------------------------- where the node comes from
def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _DirState:
    """node.json and procs/*.json in a directory (default: $LLMPERF_FAKE_NVML_DIR, read on every call)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._path = Path(path) if path is not None else None

    def _dir(self) -> Path | None:
        if self._path is not None:
            return self._path
        value = os.environ.get(ENV_DIR)
        return Path(value) if value else None

    def node(self) -> dict[str, Any] | None:
        d = self._dir()
        if d is None:
            return None
        try:
            return json.loads((d / "node.json").read_text())
        except FileNotFoundError:
            return None

    def procs(self) -> list[dict[str, Any]]:
        d = self._dir()
        if d is None or not (d / "procs").is_dir():
            return []
        out = []
        for path in sorted((d / "procs").glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written or removed right now
            if isinstance(data, dict):
                data["_path"] = str(path)
                out.append(data)
        return out

    def mark_dead(self, proc: dict[str, Any], when: float) -> None:
        path = Path(proc["_path"])
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if "dead_at" in data:
            proc["dead_at"] = data["dead_at"]
            return
        data["dead_at"] = when
        proc["dead_at"] = when
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


class _MemoryState:
    """A snapshot dict and proc dicts held in memory (read live: tests may change them)."""

    def __init__(self, snapshot: dict[str, Any], procs: list[dict[str, Any]]) -> None:
        self.snapshot = snapshot
        self.proc_list = procs

    def node(self) -> dict[str, Any] | None:
        return self.snapshot

    def procs(self) -> list[dict[str, Any]]:
        return self.proc_list

    def mark_dead(self, proc: dict[str, Any], when: float) -> None:
        proc.setdefault("dead_at", when)


def _api(fn: Callable) -> Callable:
    """Every NVML call: initialised first, then the injected failures for that function name."""
    name = fn.__name__

    def call(self: "FakeNvml", *args: Any, **kwargs: Any) -> Any:
        if name not in ("nvmlInit", "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString") and self._init_count <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        node = self._state.node() or {}
        self._inject(node, name)
        return fn(self, *args, **kwargs)

    call.__name__ = name
    call.__doc__ = fn.__doc__
    return call


class FakeNvml:
    """A module-like fake NVML over a node description. Constants and error classes are attributes too."""

    def __init__(self, state: Any, is_alive: Callable[[int], bool] | None = None,
                 now: Callable[[], float] | None = None) -> None:
        self._state = state
        self._is_alive = is_alive or pid_alive
        self._now = now or time.time
        self._init_count = 0
        self._lock = threading.Lock()

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], procs: Iterable[dict[str, Any]] | None = None,
                      is_alive: Callable[[int], bool] | None = None, now: Callable[[], float] | None = None) -> "FakeNvml":
        proc_list = procs if isinstance(procs, list) else list(procs or [])
        return cls(_MemoryState(snapshot, proc_list), is_alive, now)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, is_alive: Callable[[int], bool] | None = None,
                 now: Callable[[], float] | None = None) -> "FakeNvml":
        return cls(_DirState(path), is_alive, now)

    def __getattr__(self, name: str) -> Any:
        value = _EXPORTS.get(name)
        if value is None:
            raise AttributeError(name)
        return value

    # ------------------------------------------------------------- internals
    @staticmethod
    def _inject(where: dict[str, Any], name: str) -> None:
        if name in (where.get("missing") or []):
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        if name in (where.get("unsupported") or []):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        code = (where.get("fail") or {}).get(name)
        if code is not None:
            raise NVMLError(int(code))

    def _node(self) -> dict[str, Any]:
        node = self._state.node()
        if node is None:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        return node

    def _gpus(self) -> list[dict[str, Any]]:
        return sorted(self._node().get("gpus", []), key=lambda g: g.get("index", 0))

    @staticmethod
    def _uuid(gpu: dict[str, Any], position: int) -> str:
        return gpu.get("uuid") or f"GPU-fake-{position:04d}"

    def _find(self, handle: Any, fn_name: str) -> tuple[int, dict[str, Any]]:
        """(NVML index, GPU) of a handle; injected per-GPU failures for ``fn_name``."""
        if not isinstance(handle, _Handle):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        for i, gpu in enumerate(self._gpus()):
            if self._uuid(gpu, i) == handle.uuid:
                self._inject(gpu, fn_name)
                return i, gpu
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    def _live_procs(self) -> list[dict[str, Any]]:
        """procs/ entries that hold their memory right now."""
        live = []
        now = self._now()
        for proc in self._state.procs():
            delay = float(proc.get("release_delay_s") or 0)
            if "dead_at" not in proc:
                if self._is_alive(proc.get("pid", -1)):
                    live.append(proc)
                    continue
                self._state.mark_dead(proc, now)
            if now - float(proc["dead_at"]) < delay:
                live.append(proc)
        return live

    def _dynamic(self, uuid: str) -> list[dict[str, Any]]:
        return [p for p in self._live_procs() if uuid in (p.get("uuids") or [])]

    # ------------------------------------------------------------- init
    @_api
    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    @_api
    def nvmlInitWithFlags(self, flags: int) -> None:
        node = self._state.node()
        if node is None or node.get("no_driver"):
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        with self._lock:
            self._init_count += 1

    @_api
    def nvmlShutdown(self) -> None:
        with self._lock:
            if self._init_count <= 0:
                raise NVMLError(NVML_ERROR_UNINITIALIZED)
            self._init_count -= 1

    # ------------------------------------------------------------- system
    @_api
    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._node().get("driver_version", "570.133.20"))

    @_api
    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self._node().get("cuda_driver_version", 12080))

    @_api
    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return int(self._node().get("cuda_driver_version", 12080))

    @_api
    def nvmlSystemGetNVMLVersion(self) -> str:
        node = self._node()
        cuda = int(node.get("cuda_driver_version", 12080))
        return f"{cuda // 1000}.{node.get('driver_version', '570.133.20')}"

    # ------------------------------------------------------------- devices
    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus())

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        gpus = self._gpus()
        if not isinstance(index, int) or not 0 <= index < len(gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(self._uuid(gpus[index], index))

    @_api
    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        if isinstance(uuid, bytes):
            uuid = uuid.decode()
        if not isinstance(uuid, str) or not uuid:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        for i, gpu in enumerate(self._gpus()):
            if self._uuid(gpu, i) == uuid:
                return _Handle(uuid)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str | bytes) -> _Handle:
        if isinstance(bus_id, bytes):
            bus_id = bus_id.decode()
        for i, gpu in enumerate(self._gpus()):
            if str(gpu.get("pci_bus_id", "")).lower() == str(bus_id).lower():
                return _Handle(self._uuid(gpu, i))
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return self._find(handle, "nvmlDeviceGetIndex")[0]

    @_api
    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return str(self._find(handle, "nvmlDeviceGetName")[1]["name"])

    @_api
    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        i, gpu = self._find(handle, "nvmlDeviceGetUUID")
        return self._uuid(gpu, i)

    @_api
    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> nvmlPciInfo_t:
        gpu = self._find(handle, "nvmlDeviceGetPciInfo")[1]
        bus_id = str(gpu.get("pci_bus_id", "00000000:00:00.0"))
        parts = bus_id.replace(".", ":").split(":")
        try:
            domain, bus, device = (int(p, 16) for p in parts[:3])
        except ValueError:
            domain = bus = device = 0
        return nvmlPciInfo_t(busId=bus_id, busIdLegacy=bus_id, domain=domain, bus=bus, device=device,
                             pciDeviceId=0x233510DE, pciSubSystemId=0)

    @_api
    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> c_nvmlMemory_t:
        gpu = self._find(handle, "nvmlDeviceGetMemoryInfo")[1]
        total = int(gpu["memory_total_mib"]) * MIB
        used_mib = int(gpu.get("memory_used_mib") or 0)
        used_mib += sum(int(p.get("used_memory_mib") or 0) for p in self._dynamic(handle.uuid))
        used = min(total, used_mib * MIB)
        if version:
            return c_nvmlMemory_t(version=version, total=total, reserved=0, free=total - used, used=used)
        return c_nvmlMemory_t(total=total, free=total - used, used=used)

    @_api
    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        gpu = self._find(handle, "nvmlDeviceGetMigMode")[1]
        if gpu.get("mig_enabled", False) is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        current = NVML_DEVICE_MIG_ENABLE if gpu.get("mig_enabled") else NVML_DEVICE_MIG_DISABLE
        pending = gpu.get("mig_pending")
        return [current, current if pending is None else (NVML_DEVICE_MIG_ENABLE if pending else NVML_DEVICE_MIG_DISABLE)]

    @_api
    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, errorType: int, counterType: int) -> int:
        gpu = self._find(handle, "nvmlDeviceGetTotalEccErrors")[1]
        if errorType not in (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED) or \
                counterType not in (NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if gpu.get("ecc_uncorrected", 0) is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if errorType == NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return int(gpu.get("ecc_corrected", 0))
        if counterType == NVML_AGGREGATE_ECC:
            return int(gpu.get("ecc_uncorrected_aggregate", gpu.get("ecc_uncorrected", 0)))
        return int(gpu.get("ecc_uncorrected", 0))

    @_api
    def nvmlDeviceGetEccMode(self, handle: _Handle) -> list[int]:
        gpu = self._find(handle, "nvmlDeviceGetEccMode")[1]
        if gpu.get("ecc_uncorrected", 0) is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [NVML_FEATURE_ENABLED, NVML_FEATURE_ENABLED]

    @_api
    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        gpu = self._find(handle, "nvmlDeviceGetCudaComputeCapability")[1]
        major, _, minor = str(gpu.get("compute_capability", "9.0")).partition(".")
        return int(major), int(minor or 0)

    def _processes(self, handle: _Handle, fn_name: str) -> list[c_nvmlProcessInfo_t]:
        gpu = self._find(handle, fn_name)[1]
        out = []
        for proc in list(gpu.get("processes") or []) + self._dynamic(handle.uuid):
            mib = proc.get("used_memory_mib")
            out.append(c_nvmlProcessInfo_t(pid=int(proc["pid"]), usedGpuMemory=None if mib is None else int(mib) * MIB,
                                           gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF))
        return out

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[c_nvmlProcessInfo_t]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses")

    @_api
    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: _Handle) -> list[c_nvmlProcessInfo_t]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v3")

    @_api
    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: _Handle) -> list[c_nvmlProcessInfo_t]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v2")

    @_api
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[c_nvmlProcessInfo_t]:
        self._find(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return []

    @_api
    def nvmlDeviceGetP2PStatus(self, device1: _Handle, device2: _Handle, p2pIndex: int) -> int:
        i, gpu = self._find(device1, "nvmlDeviceGetP2PStatus")
        j, _ = self._find(device2, "nvmlDeviceGetP2PStatus")
        if not isinstance(p2pIndex, int) or not 0 <= p2pIndex < NVML_P2P_CAPS_INDEX_UNKNOWN:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if i == j:
            return NVML_P2P_STATUS_NOT_SUPPORTED
        linked = j in (gpu.get("nvlink_peers") or [])
        if p2pIndex == NVML_P2P_CAPS_INDEX_NVLINK:
            return NVML_P2P_STATUS_OK if linked else NVML_P2P_STATUS_NOT_SUPPORTED
        return NVML_P2P_STATUS_OK if linked else NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED

    @_api
    def nvmlDeviceGetTopologyCommonAncestor(self, device1: _Handle, device2: _Handle) -> int:
        i, a = self._find(device1, "nvmlDeviceGetTopologyCommonAncestor")
        j, b = self._find(device2, "nvmlDeviceGetTopologyCommonAncestor")
        if i == j:
            return NVML_TOPOLOGY_INTERNAL
        same_numa = a.get("numa_node") is not None and a.get("numa_node") == b.get("numa_node")
        return NVML_TOPOLOGY_NODE if same_numa else NVML_TOPOLOGY_SYSTEM

    @_api
    def nvmlDeviceGetNvLinkState(self, device: _Handle, link: int) -> int:
        gpu = self._find(device, "nvmlDeviceGetNvLinkState")[1]
        if "nvlink_links_up" not in gpu:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        up = int(gpu["nvlink_links_up"])
        if not isinstance(link, int) or not 0 <= link < max(_H200_LINKS, up):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return NVML_FEATURE_ENABLED if link < up else NVML_FEATURE_DISABLED

    def _fabric(self, device: _Handle, info: Any, fn_name: str, versioned: bool) -> int:
        gpu = self._find(device, fn_name)[1]
        target = getattr(info, "_obj", info)  # ctypes.byref(struct) or the struct itself
        if not isinstance(target, ctypes.Structure):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if versioned and getattr(target, "version", None) != nvmlGpuFabricInfo_v2:
            raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        state = gpu.get("fabric_state")
        if state is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if state not in _FABRIC_STATES:
            raise ValueError(f"fake NVML: unknown fabric_state {state!r}")
        target.state = _FABRIC_STATES[state]
        target.status = int(gpu.get("fabric_status", NVML_SUCCESS))
        target.cliqueId = int(gpu.get("fabric_clique_id", 0))
        return NVML_SUCCESS

    @_api
    def nvmlDeviceGetGpuFabricInfo(self, device: _Handle, gpuFabricInfo: Any) -> int:
        return self._fabric(device, gpuFabricInfo, "nvmlDeviceGetGpuFabricInfo", versioned=False)

    @_api
    def nvmlDeviceGetGpuFabricInfoV(self, device: _Handle, gpuFabricInfo: Any) -> int:
        return self._fabric(device, gpuFabricInfo, "nvmlDeviceGetGpuFabricInfoV", versioned=True)

    @_api
    def nvmlDeviceGetNumaNodeId(self, handle: _Handle) -> int:
        gpu = self._find(handle, "nvmlDeviceGetNumaNodeId")[1]
        if gpu.get("numa_node") is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(gpu["numa_node"])

    # ------------------------------------------------------------- telemetry
    def _clock(self, handle: _Handle, fn_name: str, type: int, sm_key: str) -> int:
        gpu = self._find(handle, fn_name)[1]
        keys = {NVML_CLOCK_SM: (sm_key, 1980), NVML_CLOCK_GRAPHICS: (sm_key, 1980),
                NVML_CLOCK_MEM: ("mem_clock_mhz", 3201), NVML_CLOCK_VIDEO: ("video_clock_mhz", 1545)}
        if type not in keys:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        key, default = keys[type]
        return int(gpu.get(key, default))

    @_api
    def nvmlDeviceGetClockInfo(self, handle: _Handle, type: int) -> int:
        return self._clock(handle, "nvmlDeviceGetClockInfo", type, "sm_clock_mhz")

    @_api
    def nvmlDeviceGetMaxClockInfo(self, handle: _Handle, type: int) -> int:
        return self._clock(handle, "nvmlDeviceGetMaxClockInfo", type, "sm_clock_max_mhz")

    @_api
    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return int(self._find(handle, "nvmlDeviceGetPowerUsage")[1].get("power_mw", 120000))

    @_api
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return int(self._find(handle, "nvmlDeviceGetEnforcedPowerLimit")[1].get("power_limit_mw", 700000))

    @_api
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return int(self._find(handle, "nvmlDeviceGetTotalEnergyConsumption")[1].get("energy_mj", 0))

    @_api
    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu = self._find(handle, "nvmlDeviceGetTemperature")[1]
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return int(gpu.get("temperature_c", 35))

    @_api
    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> c_nvmlUtilization_t:
        gpu = self._find(handle, "nvmlDeviceGetUtilizationRates")[1]
        return c_nvmlUtilization_t(gpu=int(gpu.get("utilization_gpu_pct", 0)),
                                   memory=int(gpu.get("utilization_memory_pct", 0)))

    @_api
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        return int(self._find(handle, "nvmlDeviceGetCurrentClocksEventReasons")[1].get("clocks_event_reasons", 0))

    @_api
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:
        return int(self._find(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")[1].get("clocks_event_reasons", 0))

    def nvmlErrorString(self, result: int) -> str:
        return nvmlErrorString(result)


def make_module(snapshot: dict[str, Any], procs: Iterable[dict[str, Any]] | None = None,
                is_alive: Callable[[int], bool] | None = None, now: Callable[[], float] | None = None) -> FakeNvml:
    """A module-like fake NVML over an in-memory snapshot (for ``nvml=`` injection)."""
    return FakeNvml.from_snapshot(snapshot, procs, is_alive, now)


# constants, error classes and structures, also reachable as attributes of a FakeNvml
_EXPORTS = {k: v for k, v in globals().items()
            if not k.startswith("_") and not inspect.isfunction(v) and not inspect.ismodule(v)}

# the module itself answers from $LLMPERF_FAKE_NVML_DIR
_DEFAULT = FakeNvml(_DirState())
for _name in dir(FakeNvml):
    if _name.startswith("nvml") and _name != "nvmlErrorString":
        globals()[_name] = getattr(_DEFAULT, _name)
del _name
