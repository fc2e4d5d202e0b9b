"""GPU telemetry while a case runs: SM clock, memory, power, temperature, utilisation, clock-event reasons.

``TelemetrySampler`` reads NVML (GPUs named by UUID) on a daemon thread every
``interval_s``; ``stop()`` returns a ``TelemetrySummary``. A failed reading is
counted and kept as text, never raised from the thread. ``summarize`` is the
pure maths over the samples. NVML is reached through ``node.nvml`` (its
session and its error classification); ``pynvml`` is imported lazily, in ``start()``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .node.nvml import NoGpuDriver, describe_error, import_nvml, is_unsupported, nvml_session

# NVML clock-event ("throttle") reason bits and our names for them.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock_setting",
}
# The reasons that mean the GPU ran slower than it could (a regression may be the node's).
THROTTLE_REASONS = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"})
MAX_ERROR_MESSAGES = 10


def reason_names(mask: int) -> list[str]:
    """The names of the bits set in a clock-event reasons bitmask (unknown bits as hex)."""
    names = []
    bit = 1
    while mask and bit <= mask:
        if mask & bit:
            names.append(CLOCK_EVENT_REASONS.get(bit, f"0x{bit:x}"))
        bit <<= 1
    return names


@dataclass(frozen=True)
class TelemetrySample:
    """One reading of one GPU; None where NVML gave no value."""

    t_s: float  # seconds since the sampler started
    gpu: int | str  # NVML index, or the UUID when the index is unknown
    uuid: str = ""
    sm_clock_mhz: float | None = None
    memory_used_mib: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    utilization_pct: float | None = None
    clock_event_reasons: int | None = None  # NVML bitmask

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class TelemetrySummary:
    samples: int  # sampling rounds (each reads every GPU)
    interval_s: float
    sm_clock_mhz_mean: float | None = None
    sm_clock_mhz_min: float | None = None
    memory_used_mib_max: float | None = None
    power_w_mean: float | None = None  # per GPU
    power_w_max: float | None = None  # highest single-GPU reading
    temperature_c_max: float | None = None
    utilization_pct_mean: float | None = None
    clock_event_reasons: tuple[str, ...] = ()  # every reason seen, sorted
    throttled: bool = False  # a throttling reason (THROTTLE_REASONS) was seen
    throttled_gpus: tuple[int | str, ...] = ()  # where it was seen
    errors: int = 0  # readings that failed
    gpus: int = 0  # distinct GPUs read
    error_messages: tuple[str, ...] = field(default_factory=tuple)  # the first few, distinct

    @property
    def throttle_reasons(self) -> tuple[str, ...]:
        return tuple(r for r in self.clock_event_reasons if r in THROTTLE_REASONS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "gpus": self.gpus,
            "interval_s": self.interval_s,
            "sm_clock_mhz_mean": _round(self.sm_clock_mhz_mean, 1),
            "sm_clock_mhz_min": _round(self.sm_clock_mhz_min, 1),
            "memory_used_mib_max": _round(self.memory_used_mib_max, 1),
            "power_w_mean": _round(self.power_w_mean, 1),
            "power_w_max": _round(self.power_w_max, 1),
            "temperature_c_max": _round(self.temperature_c_max, 1),
            "utilization_pct_mean": _round(self.utilization_pct_mean, 1),
            "clock_event_reasons": list(self.clock_event_reasons),
            "throttle_reasons": list(self.throttle_reasons),
            "throttled": self.throttled,
            "throttled_gpus": list(self.throttled_gpus),
            "errors": self.errors,
            "error_messages": list(self.error_messages),
        }

    def line(self) -> str:
        """One short human string for a table, e.g. ``1755 MHz, 612 W max, 71 C max, util 97%``."""
        if not self.samples:
            return "no GPU samples" + (f" ({_errors(self.errors)})" if self.errors else "")
        parts = []
        if self.sm_clock_mhz_mean is not None:
            parts.append(f"{self.sm_clock_mhz_mean:.0f} MHz")
        if self.power_w_max is not None:
            parts.append(f"{self.power_w_max:.0f} W max")
        if self.temperature_c_max is not None:
            parts.append(f"{self.temperature_c_max:.0f} C max")
        if self.utilization_pct_mean is not None:
            parts.append(f"util {self.utilization_pct_mean:.0f}%")
        if self.throttled:
            parts.append(f"THROTTLED ({', '.join(self.throttle_reasons)})")
        if self.errors:
            parts.append(_errors(self.errors))
        return ", ".join(parts) or "no readings"


def _errors(count: int) -> str:
    return f"{count} sampling error{'' if count == 1 else 's'}"


def _field(sample: TelemetrySample | Mapping[str, Any], name: str) -> Any:
    return sample.get(name) if isinstance(sample, Mapping) else getattr(sample, name)


def summarize(samples: Iterable[TelemetrySample | Mapping[str, Any]], interval_s: float, errors: int = 0,
              error_messages: Sequence[str] = ()) -> TelemetrySummary:
    """The summary of per-GPU samples (TelemetrySample or their dicts). Pure; zero samples give None values."""
    samples = list(samples)

    def values(name: str) -> list[float]:
        return [float(v) for s in samples if (v := _field(s, name)) is not None]

    clocks, memory, power = values("sm_clock_mhz"), values("memory_used_mib"), values("power_w")
    temps, utils = values("temperature_c"), values("utilization_pct")
    seen: set[str] = set()
    throttled_gpus: list[int | str] = []
    for s in samples:
        mask = _field(s, "clock_event_reasons")
        if not mask:
            continue
        names = reason_names(int(mask))
        seen.update(names)
        gpu = _field(s, "gpu")
        if THROTTLE_REASONS.intersection(names) and gpu not in throttled_gpus:
            throttled_gpus.append(gpu)
    return TelemetrySummary(
        samples=len({_field(s, "t_s") for s in samples}),
        interval_s=interval_s,
        sm_clock_mhz_mean=_mean(clocks),
        sm_clock_mhz_min=min(clocks) if clocks else None,
        memory_used_mib_max=max(memory) if memory else None,
        power_w_mean=_mean(power),
        power_w_max=max(power) if power else None,
        temperature_c_max=max(temps) if temps else None,
        utilization_pct_mean=_mean(utils),
        clock_event_reasons=tuple(sorted(seen)),
        throttled=bool(THROTTLE_REASONS & seen),
        throttled_gpus=tuple(sorted(throttled_gpus, key=lambda g: (isinstance(g, str), g))),
        errors=errors,
        gpus=len({_field(s, "gpu") for s in samples}),
        error_messages=tuple(error_messages),
    )


class TelemetrySampler:
    """Samples GPUs (by UUID) on a daemon thread every ``interval_s`` until ``stop()``.

    ``nvml``: an injected module object (default: ``pynvml``, imported in
    ``start()``). Use as a context manager, or ``start()`` then ``stop()``.
    """

    def __init__(self, uuids: Sequence[str], interval_s: float = 0.5, nvml: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s > 0:
            raise ValueError(f"telemetry interval must be positive, not {interval_s!r}")
        self.uuids = list(uuids)
        self.interval_s = float(interval_s)
        self._nvml = nvml
        self._clock = clock
        self._samples: list[TelemetrySample] = []
        self._errors = 0
        self._messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._summary: TelemetrySummary | None = None
        self._reasons_fn: str | None = None
        self.started_perf_s: float | None = None  # time.perf_counter() when the first round began: t_s counts from here

    # ------------------------------------------------------------- public
    @property
    def samples(self) -> list[TelemetrySample]:
        with self._lock:
            return list(self._samples)

    @property
    def errors(self) -> int:
        return self._errors

    @property
    def error_messages(self) -> list[str]:
        with self._lock:
            return list(self._messages)

    def start(self) -> "TelemetrySampler":
        if self._thread is not None:
            raise RuntimeError("telemetry sampler already started")
        if self._nvml is None:
            try:
                self._nvml = import_nvml()
            except Exception as exc:
                self._error(f"NVML unavailable: {exc}")
        self._thread = threading.Thread(target=self._run, name="llmperf-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> TelemetrySummary:
        if self._summary is not None:
            return self._summary
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(10.0, 4 * self.interval_s))
            if self._thread.is_alive():
                self._error("telemetry thread did not stop in time (an NVML call hangs?)")
        self._summary = summarize(self.samples, self.interval_s, self._errors, self.error_messages)
        return self._summary

    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------- thread
    def _error(self, text: str) -> None:
        with self._lock:
            self._errors += 1
            if text not in self._messages and len(self._messages) < MAX_ERROR_MESSAGES:
                self._messages.append(text)

    def _run(self) -> None:
        if self._nvml is None:
            return
        try:
            with nvml_session(self._nvml, on_shutdown_error=self._shutdown_error) as nvml:
                handles: dict[str, tuple[Any, int | str] | None] = {u: None for u in self.uuids}
                t0 = self._clock()
                self.started_perf_s = time.perf_counter()
                while True:
                    self._round(nvml, handles, self._clock() - t0)
                    if self._stop.wait(self.interval_s):
                        break
        except NoGpuDriver as exc:
            self._error(f"nvmlInit: {exc.nvml_error or exc}")
        except Exception as exc:  # never raise from the thread
            self._error(f"telemetry stopped: {type(exc).__name__}: {exc}")

    def _shutdown_error(self, exc: BaseException) -> None:
        self._error(f"nvmlShutdown: {describe_error(exc)}")

    def _read(self, label: int | str, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            if not is_unsupported(exc, self._nvml):
                self._error(f"GPU {label} {what}: {describe_error(exc)}")
            return None

    def _reasons(self, nvml: Any, handle: Any, label: int | str) -> int | None:
        names = [self._reasons_fn] if self._reasons_fn else [
            "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"]
        for name in names:
            fn = getattr(nvml, name, None)
            if fn is None:
                continue
            try:
                value = fn(handle)
            except Exception as exc:
                if is_unsupported(exc, nvml):
                    continue  # older driver: try the older name
                self._error(f"GPU {label} clock-event reasons: {describe_error(exc)}")
                return None
            self._reasons_fn = name
            return int(value)
        return None

    def _round(self, nvml: Any, handles: dict[str, tuple[Any, int | str] | None], t_s: float) -> None:
        readings = []
        for uuid in self.uuids:
            if handles[uuid] is None:
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
                except Exception as exc:
                    self._error(f"GPU {uuid}: {describe_error(exc)}")
                    continue
                try:
                    label: int | str = int(nvml.nvmlDeviceGetIndex(handle))
                except Exception:
                    label = uuid
                handles[uuid] = (handle, label)
            handle, label = handles[uuid]  # type: ignore[misc]
            clock = self._read(label, "SM clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
            memory = self._read(label, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            power = self._read(label, "power", nvml.nvmlDeviceGetPowerUsage, handle)
            temp = self._read(label, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            util = self._read(label, "utilisation", nvml.nvmlDeviceGetUtilizationRates, handle)
            readings.append(TelemetrySample(
                t_s=round(t_s, 4),
                gpu=label,
                uuid=uuid,
                sm_clock_mhz=None if clock is None else float(clock),
                memory_used_mib=None if memory is None else int(memory.used) / (1024 * 1024),
                power_w=None if power is None else power / 1000.0,
                temperature_c=None if temp is None else float(temp),
                utilization_pct=None if util is None else float(util.gpu),
                clock_event_reasons=self._reasons(nvml, handle, label),
            ))
        with self._lock:
            self._samples.extend(readings)
