"""The fitting aid's handling of derived configurations (benchmarks/calibrate_sim.py --also)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "calibrate_sim.py"
_spec = importlib.util.spec_from_file_location("calibrate_sim", _PATH)
fitaid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fitaid)


def test_own_keys_follow_the_base_chain_and_refuse_an_unrelated_profile():
    assert "gemm_efficiency" in fitaid._own_keys("vllm-tp8-no-deepgemm", "vllm-tp8")
    assert fitaid._own_keys("vllm-tp8", "vllm-tp8") == set()
    assert fitaid._own_keys("sglang-tp8", "vllm-tp8") is None
    assert fitaid._own_keys("vllm-tp8", "vllm-tp8-no-deepgemm") is None  # a base does not derive from its child


def test_a_derived_profile_takes_the_base_trial_values_but_its_own_keys():
    values = {"memory_efficiency": 0.5, "gemm_efficiency": 0.9, "vllm-tp8-no-deepgemm.layer_latency_us": 123.0}
    p = fitaid._derived("vllm-tp8-no-deepgemm", "vllm-tp8", values)
    assert p.memory_efficiency == 0.5  # inherited from the base's trial
    assert p.gemm_efficiency == fitaid.load_profile("vllm-tp8-no-deepgemm").gemm_efficiency  # its own file's
    assert p.layer_latency_us == 123.0  # fitted as its own
    # the same key fitted both for the base and as its own: its own wins, no clash
    both = fitaid._derived("vllm-tp8-no-deepgemm", "vllm-tp8",
                           {"memory_efficiency": 0.5, "vllm-tp8-no-deepgemm.memory_efficiency": 0.6})
    assert both.memory_efficiency == 0.6


@pytest.mark.parametrize("name, params, also, message", [
    ("nope", ["gemm_efficiency"], [], "--fit nope: not a built-in profile"),
    ("vllm-tp8", ["gemm_efficiency"], ["vllm-tp8-no-deepgem"], "--also vllm-tp8-no-deepgem: not a built-in"),
    ("vllm-tp8", ["gemm_efficiency"], ["sglang-tp8"], "does not derive from vllm-tp8"),
    ("vllm-tp8", ["gemm_efficiency"], ["vllm-tp8"], "does not derive from vllm-tp8"),
    ("vllm-tp8", ["gemm_efficiency"], ["vllm-mtp1", "vllm-mtp1"], "named twice"),
    ("vllm-tp8", ["vllm-mtp1.cpu_us_per_seq"], [], "add --also vllm-mtp1"),
    ("vllm-tp8", ["gemm_eff"], [], "gemm_eff is not a profile key"),
    ("vllm-tp8", [], [], "name at least one parameter"),
])
def test_fit_arguments_are_checked_with_one_line(name, params, also, message):
    problem = fitaid.check_fit_args(name, params, also)
    assert problem is not None and message in problem and "\n" not in problem


def test_good_fit_arguments_pass():
    assert fitaid.check_fit_args("vllm-tp8", ["max_running_requests", "vllm-mtp1.tokens_per_decode_step"],
                                 ["vllm-tp8-no-deepgemm", "vllm-mtp1"]) is None


def test_a_figure_past_the_margin_costs_a_step():
    from pytest_llmperf.sim.calibration import Figure
    p = fitaid.load_profile("vllm-tp8")
    tol = fitaid.GATED["mean_ttft_ms"]
    inside = fitaid.loss(p, "vllm-tp8", None, None, [Figure("vllm-tp8", "short", "mean_ttft_ms",
                                                              1.0 + 0.96 * tol, 1.0)])
    past = fitaid.loss(p, "vllm-tp8", None, None, [Figure("vllm-tp8", "short", "mean_ttft_ms",
                                                            1.0 + 0.98 * tol, 1.0)])
    assert past - inside > 1.0
