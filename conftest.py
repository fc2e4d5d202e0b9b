"""Repository-level test wiring: pytester for the end-to-end runs of the plugin."""

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _not_on_a_ci_page(monkeypatch):
    """The plugin runs inside these tests must not write to the CI page of the run testing them (nor act as under
    CI); a test that wants either sets it."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("CI", raising=False)
