#!/usr/bin/env python3
"""Probe one real GPU machine (made for a single-H200 host) with pytest_llmperf's NVML code.

    python scripts/h200_probe.py OUT_DIR

Writes into OUT_DIR:
  snapshot.json   probe_node(): the node as the plugin sees it
  telemetry.json  TelemetrySampler readings every 0.5 s during ~60 s of bf16
                  8192x8192 matrix multiplies (torch; else float16 on cupy; else
                  no load, said so), plus a short idle phase, the processes NVML
                  lists under load and how long the GPUs took to be freed
  probe.log       what happened, with raw NVML answers for GPU 0

Reads only: it never resets or reconfigures a GPU. Finishes in under 3 minutes
(a watchdog ends it at 170 s). Exit 0 when the files were written, 2 when
there is no NVIDIA driver (or no nvidia-ml-py), 1 on any other failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pytest_llmperf.gpus import parse_gpu_spec  # noqa: E402
from pytest_llmperf.telemetry import TelemetrySampler  # noqa: E402
from pytest_llmperf.node.check import check_node  # noqa: E402
from pytest_llmperf.node.freed import GpusNotFreed, wait_gpus_freed  # noqa: E402
from pytest_llmperf.node.nvml import NoGpuDriver, gpu_processes, import_nvml, nvml_session, probe_node  # noqa: E402

INTERVAL_S = 0.5
IDLE_S = 5.0
LOAD_S = 60.0
NO_LOAD_SAMPLE_S = 20.0
MATMUL_N = 8192
BATCH = 20  # matmuls between synchronisations
WATCHDOG_S = 170.0
FREE_TIMEOUT_S = 15.0

log = logging.getLogger("h200_probe")


def setup_logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    for handler in (logging.FileHandler(out / "probe.log", mode="w"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def flush_logs() -> None:
    for handler in log.handlers:
        handler.flush()


def start_watchdog() -> None:
    def expire() -> None:
        log.error("watchdog: still running after %.0f s; exiting (3)", WATCHDOG_S)
        flush_logs()
        os._exit(3)

    timer = threading.Timer(WATCHDOG_S, expire)
    timer.daemon = True
    timer.start()


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    log.info("wrote %s", path)


def raw_nvml_facts() -> dict:
    """What NVML answers for GPU 0, call by call (value or error), to check the plugin's assumptions."""
    import ctypes

    n = import_nvml()
    facts: dict = {"nvidia_ml_py_module": getattr(n, "__file__", "?")}

    def ask(key, fn, *args):
        try:
            value = (getattr(n, fn) if isinstance(fn, str) else fn)(*args)
            if hasattr(value, "__dict__") or hasattr(value, "_fields_"):
                fields = [f[0] for f in getattr(value, "_fields_", [])] or list(vars(value))
                value = {f: getattr(value, f) for f in fields}
            facts[key] = value
        except Exception as exc:  # recorded, not raised: this is a survey
            facts[key] = f"{type(exc).__name__}: {exc}"

    with nvml_session(n):
        ask("nvml_version", "nvmlSystemGetNVMLVersion")
        ask("driver_version", "nvmlSystemGetDriverVersion")
        ask("cuda_driver_version", "nvmlSystemGetCudaDriverVersion")
        ask("device_count", "nvmlDeviceGetCount")
        if n.nvmlDeviceGetCount() < 1:
            return facts
        h = n.nvmlDeviceGetHandleByIndex(0)
        ask("name", "nvmlDeviceGetName", h)
        ask("uuid", "nvmlDeviceGetUUID", h)
        ask("pci_info", "nvmlDeviceGetPciInfo", h)
        ask("memory_info_v1", "nvmlDeviceGetMemoryInfo", h)
        if hasattr(n, "nvmlMemory_v2"):
            ask("memory_info_v2", "nvmlDeviceGetMemoryInfo", h, n.nvmlMemory_v2)
        ask("mig_mode", "nvmlDeviceGetMigMode", h)
        ask("ecc_mode", "nvmlDeviceGetEccMode", h)
        ask("ecc_uncorrected_volatile", "nvmlDeviceGetTotalEccErrors", h,
            n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC)
        ask("compute_processes", lambda: [vars(p) for p in n.nvmlDeviceGetComputeRunningProcesses(h)])
        ask("numa_node", "nvmlDeviceGetNumaNodeId", h)
        ask("cuda_compute_capability", "nvmlDeviceGetCudaComputeCapability", h)
        ask("power_usage_mw", "nvmlDeviceGetPowerUsage", h)
        ask("enforced_power_limit_mw", "nvmlDeviceGetEnforcedPowerLimit", h)
        ask("temperature_c", "nvmlDeviceGetTemperature", h, n.NVML_TEMPERATURE_GPU)
        ask("sm_clock_mhz", "nvmlDeviceGetClockInfo", h, n.NVML_CLOCK_SM)
        ask("sm_clock_max_mhz", "nvmlDeviceGetMaxClockInfo", h, n.NVML_CLOCK_SM)
        ask("utilization", "nvmlDeviceGetUtilizationRates", h)
        ask("clocks_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", h)
        ask("clocks_throttle_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        for fn_name, struct_name in (("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfoV_t"),
                                     ("nvmlDeviceGetGpuFabricInfo", "c_nvmlGpuFabricInfo_t")):
            if hasattr(n, fn_name) and hasattr(n, struct_name):
                info = getattr(n, struct_name)()

                def fabric(fn=getattr(n, fn_name), info=info):
                    fn(h, ctypes.byref(info))
                    return {"state": info.state, "status": info.status}

                ask(fn_name, fabric)
        links = {}
        for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                links[link] = n.nvmlDeviceGetNvLinkState(h, link)
            except Exception as exc:
                links[link] = type(exc).__name__
        facts["nvlink_state_by_link"] = links
    return facts


class Load:
    """A GPU matmul load: torch bf16, else cupy float16, else none."""

    def __init__(self) -> None:
        self.backend = None
        self.note = ""
        self.dtype = None
        self.matmuls = 0
        self.seconds = 0.0
        self._step = None
        self._sync = None
        self._free = None
        self._setup()

    def _setup(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
                b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
                c = torch.empty(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
                self._step = lambda: torch.matmul(a, b, out=c)
                self._sync = torch.cuda.synchronize

                def free() -> None:
                    nonlocal a, b, c
                    del a, b, c
                    torch.cuda.empty_cache()

                self._free = free
                self.backend = f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}"
                self.dtype = "bfloat16"
                return
            self.note = "torch is installed but sees no CUDA device"
        except Exception as exc:
            self.note = f"torch unusable ({type(exc).__name__}: {exc})"
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                # cupy has no bfloat16: float16 matmuls load the tensor cores alike
                a = cupy.random.standard_normal((MATMUL_N, MATMUL_N), dtype=cupy.float32).astype(cupy.float16)
                b = cupy.random.standard_normal((MATMUL_N, MATMUL_N), dtype=cupy.float32).astype(cupy.float16)
                c = cupy.empty((MATMUL_N, MATMUL_N), dtype=cupy.float16)
                self._step = lambda: cupy.matmul(a, b, out=c)
                self._sync = cupy.cuda.runtime.deviceSynchronize

                def free() -> None:
                    nonlocal a, b, c
                    del a, b, c
                    cupy.get_default_memory_pool().free_all_blocks()

                self._free = free
                self.backend = f"cupy {cupy.__version__}"
                self.dtype = "float16"
                self.note += "; using cupy float16 (no bfloat16 in cupy)"
                return
            self.note += "; cupy sees no CUDA device"
        except Exception as exc:
            self.note += f"; cupy unusable ({type(exc).__name__}: {exc})"
        self.note += "; running WITHOUT load (telemetry shows the idle GPU)"

    def warm_up(self) -> None:
        if self._step is not None:
            for _ in range(3):
                self._step()
            self._sync()

    def run(self, seconds: float, midway=None) -> None:
        """Matmuls for ``seconds``; ``midway()`` once, halfway through."""
        start = time.monotonic()
        called = False
        while time.monotonic() - start < seconds:
            if self._step is None:
                time.sleep(min(0.5, seconds - (time.monotonic() - start)))
            else:
                for _ in range(BATCH):
                    self._step()
                self._sync()
                self.matmuls += BATCH
            if midway is not None and not called and time.monotonic() - start >= seconds / 2:
                called = True
                midway()
        self.seconds = time.monotonic() - start

    def free(self) -> None:
        if self._free is not None:
            self._free()
            self._free = None

    def tflops(self) -> float | None:
        if not self.matmuls or not self.seconds:
            return None
        return 2 * MATMUL_N**3 * self.matmuls / self.seconds / 1e12


def sampled(uuids, seconds_or_fn):
    sampler = TelemetrySampler(uuids, interval_s=INTERVAL_S)
    sampler.start()
    try:
        seconds_or_fn()
    finally:
        summary = sampler.stop()
    return {
        "interval_s": INTERVAL_S,
        "samples": [s.to_dict() for s in sampler.samples],
        "summary": summary.to_dict(),
        "line": summary.line(),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    start_watchdog()
    started = time.monotonic()
    log.info("h200 probe: python %s, repo %s, pid %d", sys.version.split()[0], REPO, os.getpid())
    log.info("CUDA_VISIBLE_DEVICES=%s", os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))

    # 1. the node as the plugin sees it
    try:
        snapshot = probe_node()
    except NoGpuDriver as exc:
        log.error("%s", exc)  # the log also goes to stderr
        return 2
    write_json(out / "snapshot.json", snapshot.to_json())
    uuids = [g.uuid for g in snapshot.gpus if g.uuid]
    log.info("%d GPU(s): %s", len(uuids), ", ".join(f"{g.index}={g.name} {g.memory_total_mib} MiB"
                                                   for g in snapshot.gpus))
    for spec in ("h200x1", "h200x8", "any"):
        log.info("check %s: %s", spec, check_node(parse_gpu_spec(spec), snapshot, "live NVML").describe())
    try:
        log.info("raw NVML facts for GPU 0: %s", json.dumps(raw_nvml_facts(), default=str, sort_keys=True))
    except Exception:
        log.warning("raw NVML survey failed:\n%s", traceback.format_exc())
    if not uuids:
        log.error("NVML lists no GPU; nothing to load")
        write_json(out / "telemetry.json", {"error": "no GPU"})
        return 1

    # 2. telemetry: idle, then under load
    telemetry: dict = {}
    load = None
    try:
        telemetry["idle"] = sampled(uuids, lambda: time.sleep(IDLE_S))
        log.info("idle: %s", telemetry["idle"]["line"])
        t = time.monotonic()
        load = Load()
        load.warm_up()
        log.info("load backend: %s %s (set up in %.1f s)", load.backend or "none", load.note, time.monotonic() - t)
        under_load: dict = {}

        def midway() -> None:
            try:
                under_load["processes"] = {u: [[p.pid, p.used_memory_mib] for p in ps]
                                           for u, ps in gpu_processes(uuids).items()}
                pids = [p[0] for ps in under_load["processes"].values() for p in ps]
                under_load["own_pid_listed"] = os.getpid() in pids
                snap = probe_node()
                under_load["verdict_h200x1"] = check_node(parse_gpu_spec("h200x1"), snap, "live NVML").describe()
                under_load["memory_used_mib"] = [g.memory_used_mib for g in snap.gpus]
                log.info("under load: %s", json.dumps(under_load, sort_keys=True))
            except Exception:
                log.warning("probe under load failed:\n%s", traceback.format_exc())

        seconds = LOAD_S if load.backend else NO_LOAD_SAMPLE_S
        result = sampled(uuids, lambda: load.run(seconds, midway))
        telemetry.update(result)
        telemetry["load"] = {
            "backend": load.backend,
            "note": load.note.strip("; "),
            "dtype": load.dtype,
            "matmul_n": MATMUL_N,
            "matmuls": load.matmuls,
            "seconds": round(load.seconds, 2),
            "achieved_tflops": None if load.tflops() is None else round(load.tflops(), 1),
            **under_load,
        }
        log.info("load: %s; %s", telemetry["load"], result["line"])
    except Exception:
        log.error("load phase failed:\n%s", traceback.format_exc())
        telemetry["error"] = traceback.format_exc()
    finally:
        if load is not None:
            try:
                load.free()
            except Exception:
                log.warning("freeing the load failed:\n%s", traceback.format_exc())

    # 3. the GPUs are freed (this process keeps only its CUDA context, under the limit)
    try:
        waited = wait_gpus_freed(uuids, FREE_TIMEOUT_S)
        telemetry["gpus_freed_after_s"] = round(waited, 2)
        log.info("GPUs freed after %.2f s", waited)
    except GpusNotFreed as exc:
        telemetry["gpus_not_freed"] = str(exc)
        log.warning("%s", exc)
    except Exception:
        log.warning("wait_gpus_freed failed:\n%s", traceback.format_exc())
    write_json(out / "telemetry.json", telemetry)
    log.info("done in %.1f s", time.monotonic() - started)
    flush_logs()
    return 1 if "error" in telemetry else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
