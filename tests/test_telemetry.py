"""Telemetry: the pure summary maths, throttle detection, and the sampler thread on a fake NVML.

Sampler tests assert on counts (>= 1), never on timing.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import pytest

from fakenvml.pynvml import make_module
from pytest_llmperf.node.snapshot import NODES_DIR, SIM_NODE_SNAPSHOT
from pytest_llmperf.telemetry import (
    CLOCK_EVENT_REASONS,
    THROTTLE_REASONS,
    TelemetrySample,
    TelemetrySampler,
    TelemetrySummary,
    reason_names,
    summarize,
)


def sample(t, gpu, **values):
    return TelemetrySample(t_s=t, gpu=gpu, uuid=f"GPU-{gpu}", **values)


# ----------------------------------------------------------------- summarize
def test_summary_maths():
    samples = [
        sample(0.0, 0, sm_clock_mhz=1980, memory_used_mib=1000, power_w=300, temperature_c=50, utilization_pct=100,
               clock_event_reasons=0),
        sample(0.0, 1, sm_clock_mhz=1800, memory_used_mib=3000, power_w=500, temperature_c=60, utilization_pct=90,
               clock_event_reasons=0),
        sample(0.5, 0, sm_clock_mhz=1530, memory_used_mib=2000, power_w=700, temperature_c=71, utilization_pct=95,
               clock_event_reasons=0x1),
        sample(0.5, 1, sm_clock_mhz=1910, memory_used_mib=2500, power_w=612, temperature_c=65, utilization_pct=99,
               clock_event_reasons=0),
    ]
    s = summarize(samples, 0.5)
    assert s.samples == 2 and s.gpus == 2 and s.interval_s == 0.5
    assert s.sm_clock_mhz_mean == pytest.approx((1980 + 1800 + 1530 + 1910) / 4)
    assert s.sm_clock_mhz_min == 1530
    assert s.memory_used_mib_max == 3000
    assert s.power_w_mean == pytest.approx(528) and s.power_w_max == 700
    assert s.temperature_c_max == 71
    assert s.utilization_pct_mean == pytest.approx(96)
    assert s.clock_event_reasons == ("gpu_idle",) and not s.throttled and s.throttled_gpus == ()
    assert s.errors == 0
    assert s.line() == "1805 MHz, 700 W max, 71 C max, util 96%"


def test_none_readings_are_left_out_of_the_maths():
    s = summarize([sample(0, 0, sm_clock_mhz=1000), sample(1, 0, sm_clock_mhz=None, power_w=100)], 1.0)
    assert s.sm_clock_mhz_mean == 1000 and s.power_w_mean == 100 and s.temperature_c_max is None
    assert s.line() == "1000 MHz, 100 W max"


@pytest.mark.parametrize("bit, name", sorted(CLOCK_EVENT_REASONS.items()))
def test_each_clock_event_bit(bit, name):
    s = summarize([sample(0, 3, clock_event_reasons=bit), sample(0, 4, clock_event_reasons=0)], 0.5)
    assert s.clock_event_reasons == (name,)
    throttling = name in THROTTLE_REASONS
    assert s.throttled is throttling
    assert s.throttled_gpus == ((3,) if throttling else ())
    assert ("THROTTLED" in s.line()) is throttling
    assert s.to_dict()["throttle_reasons"] == ([name] if throttling else [])


def test_throttle_set_is_the_documented_one():
    assert THROTTLE_REASONS == {"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"}
    assert reason_names(0x1 | 0x40 | 0x400) == ["gpu_idle", "hw_thermal", "0x400"]
    assert reason_names(0) == []


def test_throttled_summary_line_and_gpus():
    samples = [
        sample(0, 0, sm_clock_mhz=1755, power_w=612, temperature_c=71, utilization_pct=97, clock_event_reasons=0x40),
        sample(0, 1, sm_clock_mhz=1755, power_w=600, temperature_c=70, utilization_pct=97, clock_event_reasons=0x1),
        sample(1, 0, sm_clock_mhz=1755, power_w=610, temperature_c=71, utilization_pct=97, clock_event_reasons=0x44),
        sample(1, "GPU-x", clock_event_reasons=0x20),
    ]
    s = summarize(samples, 0.5)
    assert s.throttled and s.throttled_gpus == (0, "GPU-x")
    assert s.clock_event_reasons == ("gpu_idle", "hw_thermal", "sw_power_cap", "sw_thermal")
    assert s.throttle_reasons == ("hw_thermal", "sw_power_cap", "sw_thermal")
    assert s.line() == "1755 MHz, 612 W max, 71 C max, util 97%, THROTTLED (hw_thermal, sw_power_cap, sw_thermal)"


def test_zero_samples_give_a_valid_summary():
    s = summarize([], 0.5)
    assert s == TelemetrySummary(samples=0, interval_s=0.5)
    assert s.sm_clock_mhz_mean is None and s.power_w_max is None and not s.throttled
    data = s.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["sm_clock_mhz_mean"] is None and data["samples"] == 0
    assert s.line() == "no GPU samples"
    assert summarize([], 0.5, errors=3, error_messages=["boom"]).line() == "no GPU samples (3 sampling errors)"


def test_summary_from_dicts_and_to_dict_units():
    samples = [sample(0, 0, sm_clock_mhz=1500.123, power_w=123.456).to_dict()]
    s = summarize(samples, 0.25, errors=1, error_messages=["GPU 0 power: Unknown Error"])
    data = s.to_dict()
    assert data["sm_clock_mhz_mean"] == 1500.1 and data["power_w_max"] == 123.5
    for key in data:
        if key not in ("samples", "gpus", "throttled", "throttled_gpus", "errors", "error_messages",
                       "clock_event_reasons", "throttle_reasons"):
            assert key.endswith(("_s", "_mhz_mean", "_mhz_min", "_mib_max", "_w_mean", "_w_max", "_c_max", "_pct_mean"))
    assert data["errors"] == 1 and data["error_messages"] == ["GPU 0 power: Unknown Error"]
    assert s.line().endswith("1 sampling error")


# ----------------------------------------------------------------- the sampler on a fake NVML
@pytest.fixture
def hgx():
    return json.loads(SIM_NODE_SNAPSHOT.read_text())


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sampler_reads_every_gpu_by_uuid(hgx):
    node = copy.deepcopy(hgx)
    for g in node["gpus"]:
        g.update(sm_clock_mhz=1755, power_mw=612000, temperature_c=71, utilization_gpu_pct=97,
                 clocks_event_reasons=0x40 if g["index"] == 5 else 0x0)
    fake = make_module(node)
    uuids = [node["gpus"][5]["uuid"], node["gpus"][2]["uuid"]]
    sampler = TelemetrySampler(uuids, interval_s=0.01, nvml=fake)
    with sampler:
        wait_for(lambda: len(sampler.samples) >= 2)
    summary = sampler.stop()
    assert summary.samples >= 1 and summary.gpus == 2 and summary.errors == 0
    assert summary.sm_clock_mhz_mean == 1755 and summary.power_w_max == 612 and summary.temperature_c_max == 71
    assert summary.utilization_pct_mean == 97
    assert summary.throttled and summary.throttled_gpus == (5,) and summary.clock_event_reasons == ("hw_thermal",)
    assert {s.gpu for s in sampler.samples} == {5, 2}
    assert {s.uuid for s in sampler.samples} == set(uuids)
    assert fake._init_count == 0  # nvmlShutdown ran
    assert sampler.stop() is summary  # stop is idempotent


def test_sampler_takes_one_sample_even_when_stopped_at_once(hgx):
    fake = make_module(copy.deepcopy(hgx))
    sampler = TelemetrySampler([hgx["gpus"][0]["uuid"]], interval_s=0.01, nvml=fake).start()
    summary = sampler.stop()
    assert summary.samples >= 1 and summary.errors == 0


def test_sampling_errors_are_counted_and_kept_as_text(hgx):
    node = copy.deepcopy(hgx)
    node["gpus"][1]["fail"] = {"nvmlDeviceGetPowerUsage": 999}
    fake = make_module(node)
    sampler = TelemetrySampler([node["gpus"][1]["uuid"], "GPU-missing"], interval_s=0.01, nvml=fake)
    with sampler:
        wait_for(lambda: sampler.errors >= 4)
    summary = sampler.stop()
    assert summary.errors >= 2 and summary.samples >= 1
    assert "GPU 1 power: Unknown Error" in summary.error_messages
    assert "GPU GPU-missing: Not Found" in summary.error_messages
    assert len(summary.error_messages) == 2  # distinct texts, not one per failure
    assert summary.power_w_max is None and summary.sm_clock_mhz_mean is not None
    assert fake._init_count == 0


def test_unsupported_readings_are_none_not_errors(hgx):
    node = copy.deepcopy(hgx)
    node["unsupported"] = ["nvmlDeviceGetUtilizationRates"]
    node["missing"] = ["nvmlDeviceGetCurrentClocksEventReasons"]  # an older driver: the older name answers
    node["gpus"][0]["clocks_event_reasons"] = 0x8
    sampler = TelemetrySampler([node["gpus"][0]["uuid"]], interval_s=0.01, nvml=make_module(node))
    with sampler:
        wait_for(lambda: len(sampler.samples) >= 1)
    summary = sampler.stop()
    assert summary.errors == 0 and summary.utilization_pct_mean is None
    assert summary.throttled and summary.clock_event_reasons == ("hw_slowdown",)


def test_no_driver_is_an_error_not_an_exception(hgx):
    fake = make_module(dict(hgx, no_driver=True))
    sampler = TelemetrySampler([hgx["gpus"][0]["uuid"]], interval_s=0.01, nvml=fake)
    sampler.start()
    summary = sampler.stop()
    assert summary.samples == 0 and summary.errors == 1
    assert summary.error_messages[0].startswith("nvmlInit: NVML Shared Library Not Found")
    assert summary.line() == "no GPU samples (1 sampling error)"


def test_a_failed_shutdown_is_counted(hgx):
    node = dict(copy.deepcopy(hgx), fail={"nvmlShutdown": 15})
    sampler = TelemetrySampler([hgx["gpus"][0]["uuid"]], interval_s=0.01, nvml=make_module(node)).start()
    summary = sampler.stop()
    assert summary.samples >= 1 and summary.errors == 1 and summary.error_messages == ("nvmlShutdown: GPU is lost",)


def test_unsupported_is_told_by_error_class_as_well_as_by_code(hgx):
    node = copy.deepcopy(hgx)
    fake = make_module(node)

    class NotSupported(Exception):  # bindings whose errors carry no code
        pass

    class Bindings:
        NVMLError_NotSupported = NotSupported

        def __getattr__(self, name):
            return getattr(fake, name)

        def nvmlDeviceGetUtilizationRates(self, handle):
            raise NotSupported("Not Supported")

    sampler = TelemetrySampler([node["gpus"][0]["uuid"]], interval_s=0.01, nvml=Bindings())
    with sampler:
        wait_for(lambda: len(sampler.samples) >= 1)
    summary = sampler.stop()
    assert summary.errors == 0 and summary.utilization_pct_mean is None and summary.sm_clock_mhz_mean is not None


def test_missing_pynvml_is_an_error_not_an_exception(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sampler = TelemetrySampler(["GPU-0"], interval_s=0.01)
    with sampler:
        pass
    summary = sampler.stop()
    assert summary.samples == 0 and summary.errors == 1 and "not importable" in summary.error_messages[0]


def test_sampler_rejects_a_bad_interval_and_double_start():
    with pytest.raises(ValueError, match="positive"):
        TelemetrySampler(["GPU-0"], interval_s=0)
    node = json.loads((NODES_DIR / "h200x1-vm.json").read_text())
    sampler = TelemetrySampler([node["gpus"][0]["uuid"]], interval_s=0.01, nvml=make_module(node)).start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            sampler.start()
    finally:
        sampler.stop()


def test_stop_without_start_gives_an_empty_summary():
    assert TelemetrySampler(["GPU-0"]).stop() == TelemetrySummary(samples=0, interval_s=0.5)
