"""The session without booting anything: what it refuses up front, and how it records pytest's outcomes."""


import pytest

from pytest_llmperf.session import UsageProblem, start_session
from pytest_llmperf.settings import Settings

SUITE = '''
model = "org/m"
gpus = "h200x8"
[workloads.w]
dataset = "random"
input_len = 8
output_len = 2
num_prompts = 2
[[configs]]
engine = "sim"
name = "c"
profile = "vllm-tp8"
env = { SIM_TOKEN = "tok-0123456789" }
'''


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    return path


def test_outcomes_from_pytest_are_recorded_once_each_with_secrets_masked(suite_file):
    session = start_session(Settings(engines=("sim",), suite_file=suite_file))
    assert list(session.cases) == ["sim/c/w"]
    session.record_outcome("sim/c/w", "error", "boom with tok-0123456789")
    session.record_outcome("sim/c/w", "passed")  # a later teardown report changes nothing after a setup error
    result = session.results["sim/c/w"]
    assert (result.outcome, result.message) == ("error", "boom with ***")
    session.record_outcome("elsewhere/x/y", "failed")  # not a case of ours: ignored
    session.select(set())
    assert session.results == {} and session.gate.engines == {}


def test_a_recorded_node_with_real_engines_is_refused_unless_dry(tmp_path):
    from pytest_llmperf.node.snapshot import SIM_NODE_SNAPSHOT

    with pytest.raises(UsageProblem, match="--gpu-snapshot checks a recorded node, but vllm would boot"):
        start_session(Settings(engines=("vllm",), gpu_snapshot=SIM_NODE_SNAPSHOT))
    assert start_session(Settings(engines=("vllm",), gpu_snapshot=SIM_NODE_SNAPSHOT, dry_run=True)).cases


def test_a_bad_suite_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SUITE.replace('profile = "vllm-tp8"', 'profile = "nope"'))
    with pytest.raises(UsageProblem, match="sim configuration sim/c: unknown sim profile 'nope'"):
        start_session(Settings(engines=("sim",), suite_file=bad))
