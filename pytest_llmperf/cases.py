"""The performance cases, collected by the plugin when --engine is given.

One test function, parametrized by the plugin with every case of the suite;
its ids read like ``sim/vllm-tp8/sharegpt``.
"""

import pytest


def test_llmperf(llmperf_engine, llmperf_case, llmperf_session):
    outcome = llmperf_session.run_case(llmperf_engine, llmperf_case)
    if outcome.kind == "xfail":
        pytest.xfail(outcome.message)
    if outcome.kind == "skip":
        pytest.skip(outcome.message)
    if outcome.kind == "fail":
        pytest.fail(outcome.message, pytrace=False)
