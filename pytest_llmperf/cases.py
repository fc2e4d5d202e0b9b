"""The performance cases, collected by the plugin when --engine is given.

One test function, parametrized by the plugin with every (configuration,
workload) pair of the suite; its ids read like ``sim/vllm-tp8/sharegpt``.
"""

import pytest

from pytest_llmperf.runner import CaseFailure, ExpectedFailure


def test_llmperf(llmperf_engine, llmperf_workload, llmperf_run):
    failure = expected = None
    try:
        llmperf_run.run_case(llmperf_engine, llmperf_workload)
    except CaseFailure as exc:
        failure = str(exc)
    except ExpectedFailure as exc:
        expected = str(exc)
    if expected is not None:
        pytest.xfail(expected)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
