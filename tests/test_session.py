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


# ----------------------------------------------------------------- runs of a case, without a server
GOOD = {"completed": 2, "failed": 0, "total_token_throughput": 1000.0, "mean_tpot_ms": 10.0}


class Script:
    """Stands in for ``measure``: hands out the scripted Measurements in order, and counts cache resets."""

    def __init__(self, monkeypatch, *measurements):
        from pytest_llmperf.engines import control
        from pytest_llmperf import session as session_module

        self.left = list(measurements)
        self.resets = 0
        monkeypatch.setattr(session_module, "measure", self.measure)
        monkeypatch.setattr(control, "reset_caches", self.reset)

    def measure(self, engine, case, options, progress=None):
        return self.left.pop(0)

    def reset(self, base_url, http, adapter):
        from pytest_llmperf.engines.control import ResetOutcome

        self.resets += 1
        return ResetOutcome(True, "/reset_prefix_cache", "reset")


def run(metrics=GOOD, apparatus=None):
    from pytest_llmperf.measure import Measurement

    return Measurement(metrics=dict(metrics), apparatus=apparatus or {})


def fake_engine(session):
    from types import SimpleNamespace

    from pytest_llmperf.http import HttpOptions

    config = session.resolved.configs()[0]
    return SimpleNamespace(config=config, base_url="http://127.0.0.1:9", http=HttpOptions(), version="1+sim",
                           command=("sim",), log_path=None, exit_code=lambda: None)


def test_a_run_where_nothing_completed_ends_the_case_and_is_never_pooled(monkeypatch, suite_file, tmp_path):
    session = start_session(Settings(engines=("sim",), suite_file=suite_file, baseline_dir=tmp_path / "bl",
                                     repeats=3))
    script = Script(monkeypatch, run(), run({"completed": 0, "failed": 2}), run())
    case = session.cases["sim/c/w"]
    outcome = session.run_case(fake_engine(session), case)
    assert (outcome.kind, outcome.message) == ("fail", "no request of sim/c/w completed (2 failed): no reason recorded")
    assert len(session.results["sim/c/w"].runs) == 2 and script.left == [run()]  # the third run never happened
    assert script.resets == 2


def test_a_regression_is_confirmed_on_pooled_runs_and_a_fluke_is_not(monkeypatch, suite_file, tmp_path):
    settings = dict(engines=("sim",), suite_file=suite_file, baseline_dir=tmp_path / "bl")
    update = start_session(Settings(**settings, update_baselines=True))
    Script(monkeypatch, run())
    assert update.run_case(fake_engine(update), update.cases["sim/c/w"]).kind == "pass"
    update.finish()

    slow = {**GOOD, "total_token_throughput": 500.0}
    fluke = start_session(Settings(**settings))
    script = Script(monkeypatch, run(slow), run(), run())  # one slow run, then two as usual
    assert fluke.run_case(fake_engine(fluke), fluke.cases["sim/c/w"]).kind == "pass"
    result = fluke.results["sim/c/w"]
    assert [r["confirming"] for r in result.runs] == [False, True, True] and result.verdict_status == "ok"
    assert script.resets == 3 and result.metrics["total_token_throughput"] == 1000.0

    real = start_session(Settings(**settings))
    Script(monkeypatch, run(slow), run(slow), run(slow))
    outcome = real.run_case(fake_engine(real), real.cases["sim/c/w"])
    assert outcome.kind == "fail" and outcome.message.startswith("sim/c/w regressed against ")
    assert "(median of 3 runs)" in outcome.message and real.results["sim/c/w"].confirm_runs == 2

    busy = start_session(Settings(**settings, confirm=1, inconclusive="skip"))
    lagging = {"client": {"loop_lag_p99_ms": 90.0}}
    Script(monkeypatch, run(slow, lagging), run(slow, lagging))
    outcome = busy.run_case(fake_engine(busy), busy.cases["sim/c/w"])
    assert outcome.kind == "skip" and outcome.message.startswith("inconclusive: 2 of 2 runs distorted: the load "
                                                                 "generator read chunks up to 90 ms late")
    assert busy.results["sim/c/w"].verdict_status == "inconclusive"


def test_a_report_that_cannot_be_written_is_one_line_and_the_others_are_still_written(monkeypatch, suite_file,
                                                                                      tmp_path):
    import json

    from pytest_llmperf.report import markdown

    def broken(report):
        raise UnicodeEncodeError("ascii", "✅", 0, 1, "ordinal not in range(128)")

    monkeypatch.setattr(markdown, "markdown_summary", broken)
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    session = start_session(Settings(engines=("sim",), suite_file=suite_file, report_json=tmp_path / "r.json",
                                     report_md=tmp_path / "s.md", baseline_dir=tmp_path / "bl"))
    Script(monkeypatch, run())
    session.run_case(fake_engine(session), session.cases["sim/c/w"])
    session.finish()
    assert json.loads((tmp_path / "r.json").read_text())["cases"][0]["id"] == "sim/c/w"
    (problem,) = session.write_problems
    assert problem.startswith(f"cannot write the markdown summary {tmp_path / 's.md'}: UnicodeEncodeError")
    assert not (tmp_path / "s.md").exists() and not step.exists()


def test_the_step_summary_is_left_alone_when_earlier_steps_filled_it(monkeypatch, suite_file, tmp_path):
    step = tmp_path / "step.md"
    step.write_text("x" * (1024 * 1024 - 10))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    session = start_session(Settings(engines=("sim",), suite_file=suite_file, baseline_dir=tmp_path / "bl"))
    Script(monkeypatch, run())
    session.run_case(fake_engine(session), session.cases["sim/c/w"])
    session.finish()
    assert step.stat().st_size == 1024 * 1024 - 10 and session.write_problems == []
    assert any("was not added to GITHUB_STEP_SUMMARY" in n for n in session.summary_notes())


# ----------------------------------------------------------------- side by side (pytest-xdist)
def test_a_worker_writes_nothing_and_its_case_and_update_reach_the_controller_as_plain_data(monkeypatch, suite_file,
                                                                                           tmp_path):
    import execnet

    settings = Settings(engines=("sim",), suite_file=suite_file, baseline_dir=tmp_path / "bl", update_baselines=True,
                        report_json=tmp_path / "r.json")
    from dataclasses import replace

    # The worker's checkout may lie elsewhere (--tx ...//chdir=): baselines go to the controller's tree.
    worker = start_session(replace(settings, baseline_dir=tmp_path / "worker-checkout" / "bl"))
    worker.role, worker.worker_id = "worker", "gw3"
    Script(monkeypatch, run())
    assert worker.run_case(fake_engine(worker), worker.cases["sim/c/w"]).kind == "pass"
    # what travels with the item's teardown report, through execnet's own serializer
    wire = execnet.loads(execnet.dumps(worker.case_wire("sim/c/w")))
    state = execnet.loads(execnet.dumps(worker.worker_state()))
    worker.finish()
    assert not (tmp_path / "worker-checkout").exists() and not (tmp_path / "r.json").exists()  # it wrote nothing

    controller = start_session(settings)
    controller.role = "controller"
    controller.absorb_worker(state)
    controller.absorb_case(wire)
    controller.record_outcome("sim/c/w", "passed")
    controller.finish()
    result = controller.results["sim/c/w"]
    assert result.metrics == worker.results["sim/c/w"].metrics and result.verdicts == worker.results["sim/c/w"].verdicts
    assert [u.case_id for u in controller.updates] == ["sim/c/w"]
    assert len(list((tmp_path / "bl").rglob("c.json"))) == 1 and (tmp_path / "r.json").exists()
    assert not (tmp_path / "worker-checkout").exists()
    assert result.baseline_file.startswith(str(tmp_path / "worker-checkout"))  # the file it was judged against
    assert any(n.startswith(f"gw3 judged against the baselines in {tmp_path / 'worker-checkout' / 'bl'}, but this run "
                            f"writes baselines to {tmp_path / 'bl'}") for n in controller.summary_notes())
    report = controller.report()
    assert report["cases"][0]["status"] == "updated" and report["environment"]["workers"][0]["worker"] == "gw3"


@pytest.mark.parametrize("colocated, kind", [("gate", "fail"), ("warn", "pass")])
def test_a_regression_beside_another_engine_fails_or_is_only_said(monkeypatch, suite_file, tmp_path, colocated,
                                                                   kind):
    settings = dict(engines=("sim",), suite_file=suite_file, baseline_dir=tmp_path / "bl")
    update = start_session(Settings(**settings, update_baselines=True))
    Script(monkeypatch, run())
    update.run_case(fake_engine(update), update.cases["sim/c/w"])
    update.finish()
    session = start_session(Settings(**settings, colocated=colocated, confirm=0))
    monkeypatch.setattr(session, "_neighbours", lambda config: lambda: ["sim/other (gw1)"])
    Script(monkeypatch, run({**GOOD, "total_token_throughput": 500.0}))
    outcome = session.run_case(fake_engine(session), session.cases["sim/c/w"])
    result = session.results["sim/c/w"]
    assert outcome.kind == kind and result.colocated_with == ["sim/other (gw1)"] and result.verdict_status == "regressed"
    notes = session.summary_notes()
    assert any(n.startswith("sim/c: w ran while sim/other (gw1) ran on the same node (marked colocated)") for n in notes)
    assert any(n.startswith("sim/c/w: not failed, as --colocated=warn asks") for n in notes) == (colocated == "warn")


def test_after_a_worker_died_cases_nobody_ran_say_why(suite_file, tmp_path):
    controller = start_session(Settings(engines=("sim",), suite_file=suite_file, baseline_dir=tmp_path / "bl"))
    controller.role = "controller"
    controller.worker_died("gw0", "sim/other/x")
    controller.finish()
    result = controller.results["sim/c/w"]
    assert result.outcome == "not run" and result.message == (
        "not run: no worker ran it after worker gw0 died while running sim/other/x (pytest-xdist hands out no more "
        "cases once --max-worker-restart is reached, or the run was interrupted)")
    assert "1 case(s) were not run after worker gw0 died: sim/c/w" in controller.summary_notes()
