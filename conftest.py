"""Repository-level test wiring: pytester for the end-to-end runs of the plugin."""

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _not_on_a_ci_page(monkeypatch):
    """The plugin runs inside these tests must not write to the CI page of the run testing them (nor act as under
    CI); a test that wants either sets it."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(autouse=True)
def _own_gpu_locks(monkeypatch, tmp_path_factory):
    """Each test's plugin runs lease the simulated node's GPUs in a lock directory of their own: tests run side by
    side (-n) would otherwise wait for each other's GPUs, as two runs on one node do. A test about leases shared
    between runs gives them one directory itself."""
    monkeypatch.setenv("LLMPERF_GPU_LOCK_DIR", str(tmp_path_factory.mktemp("gpu-locks")))
    monkeypatch.delenv("LLMPERF_SIM_NODE", raising=False)
