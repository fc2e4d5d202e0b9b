"""The dry-run text (pure): launches with secrets masked, workloads, node verdicts."""

from pytest_llmperf.engines import get_adapter
from pytest_llmperf.engines.base import launch_for
from pytest_llmperf.plan import ConfigPlan, describe, plan_lines
from pytest_llmperf.suite import EngineConfig, Workload

W = Workload("short", "random", 10, 128, 4)


def test_a_launch_is_shown_with_its_secrets_masked():
    config = EngineConfig("vllm", "tp8", "org/m", args=("-tp", "8", "--api-key", "sk-secret"),
                          env=(("VLLM_API_KEY", "sk-secret"), ("VLLM_USE_DEEP_GEMM", "0")), engine_version="0.13.0")
    adapter = get_adapter("vllm")
    lines = plan_lines([describe(config, adapter, launch_for(config, adapter), [W])], {"vllm": "node fits h200x8"})
    text = "\n".join(lines)
    assert "sk-secret" not in text
    assert "  command: vllm serve org/m -tp 8 --api-key '***' --host 127.0.0.1 --port '{port}'" in lines
    assert "  environment: VLLM_API_KEY='***' VLLM_SERVER_DEV_MODE=1 VLLM_USE_DEEP_GEMM=0" in lines
    assert "  written for: vllm 0.13.0" in lines and "  workloads: short (random 128/4 x 10)" in lines
    assert lines[-1] == "node check for vllm: node fits h200x8"


def test_the_plan_shows_what_the_launch_adds_for_engine_metrics():
    config = EngineConfig("sglang", "tp8", "org/m", args=("--tp-size", "8"))
    adapter = get_adapter("sglang")
    lines = plan_lines([describe(config, adapter, launch_for(config, adapter), [W])], {})
    assert any(line.startswith("  command: ") and line.endswith("--port '{port}' --enable-metrics") for line in lines)


def test_an_endpoint_launches_nothing_and_nothing_selected_says_so():
    lines = plan_lines([ConfigPlan("external/e", endpoint="http://h:1", workloads=(W,))], {})
    assert lines[1] == "  endpoint: http://h:1 (already running; nothing is launched)"
    assert plan_lines([], {}) == ["no configuration selected"]


def test_the_plan_says_how_many_gpus_each_launch_uses():
    adapter = get_adapter("vllm")
    known = EngineConfig("vllm", "tp4", "org/m", args=("-tp", "4"), gpus=4)
    unknown = EngineConfig("vllm", "any", "org/m")
    lines = plan_lines([describe(c, adapter, launch_for(c, adapter), [W]) for c in (known, unknown)], {})
    assert [line for line in lines if "GPUs" in line] == ["  GPUs: 4", "  GPUs: all the node check picks"]
    endpoint = plan_lines([ConfigPlan("external/e", endpoint="http://h:1", workloads=(W,))], {})
    assert not any("GPUs" in line for line in endpoint)  # nothing is launched
