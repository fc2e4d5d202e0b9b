"""End-to-end runs of the plugin against the real engines' command lines.

The engines are stand-ins (tests/standins): a ``vllm`` and a ``trtllm-serve``
executable and an importable ``sglang.launch_server`` that accept only the
real engines' flags and serve through the simulated engine. The node is a
fake NVML (tests/fakenvml) fed from a directory, so the live path (probe,
CUDA_VISIBLE_DEVICES by UUID, telemetry, waiting for GPUs to be freed) runs
as on a GPU node. Assertions are about behaviour, never about speed.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.node.snapshot import SIM_NODE_SNAPSHOT

TESTS = Path(__file__).parent
FAKE_NVML = TESTS / "fakenvml"
HGX = json.loads(SIM_NODE_SNAPSHOT.read_text())
NO_TIMING = "total_token_throughput:off,mean_tpot_ms:off,failed:0"
TOL = "total_token_throughput:80,mean_tpot_ms:300"

SGLANG_CONFIGS = ["tp8", "tp8-dpattn", "tp8-dp8-dpattn", "tp8-dp8-dpattn-ep8", "mtp-eagle", "tp8-no-deepgemm"]
PRESET = {
    "vllm": ["tp8", "dp8-ep", "dcp8", "mtp1", "tp8-no-deepgemm"],
    "sglang": SGLANG_CONFIGS,
    "trtllm": ["tp8", "tp8-ep8", "tp8-ep8-no-deepgemm"],
}
EXPECTED_FAILURES = {"vllm/dcp8", "sglang/tp8-no-deepgemm"}


def standin_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries this test's marker."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("LLMPERF_TEST_MARKER") == marker and p.pid != os.getpid():
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


@pytest.fixture
def node(pytester, monkeypatch):
    """A fake live node (8x H200 HGX) plus the stand-in engines on PATH/PYTHONPATH."""
    from standin_env import install

    nvml_dir = pytester.path / "nvml"
    (nvml_dir / "procs").mkdir(parents=True)
    (nvml_dir / "node.json").write_text(json.dumps(HGX))
    env = install(pytester.path / "bin")
    marker = str(pytester.path)  # unique across xdist workers
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_NVML), env["PYTHONPATH"]]))
    monkeypatch.setenv("LLMPERF_FAKE_NVML_DIR", str(nvml_dir))
    monkeypatch.setenv("LLMPERF_TEST_MARKER", marker)
    monkeypatch.setenv("LLMPERF_STANDIN_BOOT_S", "0.2")
    monkeypatch.setenv("LLMPERF_STANDIN_WARMUP_S", "0.2")
    template = pytester.path / "tool_chat_template_deepseekv32.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    yield nvml_dir
    assert standin_processes(marker) == [], "an engine outlived the run"


def set_node(nvml_dir: Path, change) -> None:
    data = copy.deepcopy(HGX)
    change(data)
    (nvml_dir / "node.json").write_text(json.dumps(data))


def no_driver(pytester, monkeypatch) -> None:
    """Make this a driver-less machine: a pynvml whose library cannot be found."""
    shim = pytester.path / "nodriver"
    shim.mkdir()
    (shim / "pynvml.py").write_text(
        "class NVMLError(Exception):\n    pass\n"
        "class NVMLError_LibraryNotFound(NVMLError):\n    pass\n"
        "def nvmlInit():\n    raise NVMLError_LibraryNotFound('NVML Shared Library Not Found')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(shim))


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--startup-timeout=120", *args, timeout=300)


def report(pytester, name="r.json"):
    return json.loads((pytester.path / name).read_text())


# ----------------------------------------------------------------- dry run
def test_dry_run_without_gpus_prints_the_six_sglang_command_lines_and_a_topology_error(pytester, monkeypatch):
    monkeypatch.delenv("LLMPERF_FAKE_NVML_DIR", raising=False)
    no_driver(pytester, monkeypatch)
    result = run(pytester, "--engine=sglang", "--gpus=h200x8", "--dry-run")
    assert result.ret == 1
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*llmperf dry run: nothing is started*"])
    for name in SGLANG_CONFIGS:
        assert f"sglang/{name} -- " in out
    commands = [l.split("command: ", 1)[1] for l in out.splitlines() if "command: " in l]
    assert len(commands) == 6
    assert all(" -m sglang.launch_server --model-path deepseek-ai/DeepSeek-V3.2 " in c for c in commands)
    assert any(c.endswith("--tp-size 8 --dp-size 8 --enable-dp-attention --host 127.0.0.1 --port '{port}' --enable-metrics")
               for c in commands)
    assert "environment: SGLANG_ENABLE_JIT_DEEPGEMM=0" in out
    assert "runs without --chat-template" in out
    assert "expected to fail: the server fails to start when DeepGEMM is disabled" in out
    assert "node does not fit h200x8 (live NVML)" in out and "no NVIDIA driver" in out
    assert "PASSED" not in out and "FAILED" not in out


def test_dry_run_with_the_hgx_snapshot_gives_a_clean_verdict(pytester):
    template = pytester.path / "t.jinja"
    template.write_text("x")
    result = run(pytester, "--engine=sglang", "--gpus=h200x8", "--dry-run", f"--gpu-snapshot={SIM_NODE_SNAPSHOT}",
                 f"--chat-template={template}", "-k", "tp8-dp8-dpattn and not ep8")
    assert result.ret == 0
    out = result.stdout.str()
    assert f"--chat-template {template}" in out
    assert "node check for sglang: node fits h200x8 (snapshot" in out
    uuids = ",".join(g["uuid"] for g in HGX["gpus"])
    assert f"CUDA_VISIBLE_DEVICES={uuids}" in out
    assert out.count("command: ") == 1  # -k selected one configuration


# ----------------------------------------------------------------- every preset configuration boots
@pytest.mark.parametrize("engine", sorted(PRESET))
def test_every_preset_configuration_boots_through_its_real_command_line(pytester, node, engine):
    template = pytester.path / "tool_chat_template_deepseekv32.jinja"
    result = run(pytester, f"--engine={engine}", "--gpus=h200x8", "--num-prompts=4", "-k", "short",
                 f"--chat-template={template}", f"--log-dir={pytester.path / 'logs'}", "--report-json=r.json",
                 f"--gate={NO_TIMING}", "-rxX")
    booted = [c for c in PRESET[engine] if f"{engine}/{c}" not in EXPECTED_FAILURES]
    failing = [c for c in PRESET[engine] if f"{engine}/{c}" in EXPECTED_FAILURES]
    # no baselines exist here: every booted configuration measured, then failed for want of one
    result.assert_outcomes(failed=len(booted), xfailed=len(failing))
    data = report(pytester)
    by_id = {c["id"]: c for c in data["cases"]}
    seed_versions = {"vllm": "0.13.0", "sglang": "0.5.6.post2", "trtllm": "1.2.0rc5"}
    uuids = [g["uuid"] for g in HGX["gpus"]]
    for name in booted:
        case = by_id[f"{engine}/{name}/short"]
        assert case["message"].startswith(f"no baseline for {engine}/{name}/short"), case["message"]
        assert case["metrics"]["completed"] == 4 and case["engine_version"] == seed_versions[engine]
        log = Path(case["log_path"]).read_text()
        assert ",".join(uuids) in log  # the engine got exactly the checked GPUs, by UUID
        assert case["telemetry"]["samples"] >= 1
    booted_ids = {b["config"]: b for b in data["environment"]["engines_booted"]}
    assert sorted(booted_ids) == sorted(f"{engine}/{c}" for c in booted)
    for entry in booted_ids.values():
        assert entry["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(uuids)
    for name in failing:
        case = by_id[f"{engine}/{name}/short"]
        assert case["outcome"] == "xfailed" and "failed as expected" in case["message"]
    assert not any("was written for" in n for n in data["environment"]["notes"])
    if engine == "sglang":
        argv = booted_ids["sglang/tp8"]["argv"]
        assert argv[argv.index("--chat-template") + 1] == str(template)
        assert "--chat-template" not in booted_ids["sglang/mtp-eagle"]["argv"]


def test_known_failures_xfail_with_the_seed_reason_and_say_when_they_start_working(pytester, node, monkeypatch):
    args = ("--engine=vllm", "--num-prompts=2", "-k", "vllm/dcp8/short", "--report-json=r.json", f"--gate={NO_TIMING}", "-rxX")
    result = run(pytester, *args)
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*XFAIL*vllm/dcp8/short*failed as expected (runtime failure: FlashMLA sparse*27544*seen: engine exited*"])
    case = report(pytester)["cases"][0]
    assert "softmax LSE" in Path(case["log_path"]).read_text()

    monkeypatch.setenv("LLMPERF_STANDIN_FIXED", "1")
    result = run(pytester, *args)
    result.assert_outcomes(failed=1, warnings=1)
    result.stdout.fnmatch_lines([
        "*UnexpectedlyWorking: vllm/dcp8/short ran although vllm/dcp8 is expected to fail*",
        "*note: vllm/dcp8 started although it is expected to fail*Record baselines for it and drop expected_failure*",
    ])
    working = report(pytester)["environment"]["unexpectedly_working"]
    assert list(working) == ["vllm/dcp8"] and "27544" in working["vllm/dcp8"]


def test_a_version_other_than_the_presets_is_reported_and_warned(pytester, node, monkeypatch):
    monkeypatch.setenv("LLMPERF_STANDIN_VERSION", "1.3.0")
    result = run(pytester, "--engine=trtllm", "--num-prompts=2", "-k", "trtllm/tp8/short", "--report-json=r.json",
                 f"--gate={NO_TIMING}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*note: trtllm/tp8 was written for trtllm 1.2.0rc5 but met 1.3.0*", "*trtllm/tp8 (engine 1.3.0)*"])
    booted = report(pytester)["environment"]["engines_booted"][0]
    assert booted["version"] == "1.3.0" and booted["version_expected"] == "1.2.0rc5"


# ----------------------------------------------------------------- lifecycle on a live node
SUITE = '''
model = "deepseek-ai/DeepSeek-V3.2"
gpus = "h200x8"

[workloads.tiny]
dataset = "random"
input_len = 32
output_len = 8
num_prompts = 6

[[configs]]
engine = "vllm"
name = "tp8"
args = ["-tp", "8"]

[[configs]]
engine = "trtllm"
name = "tp8"
args = ["--tp_size", "8"]
'''


SUITE_TP4 = SUITE.replace('"-tp", "8"', '"-tp", "4"').replace('"--tp_size", "8"', '"--tp_size", "4"')


def test_two_engines_side_by_side_get_disjoint_gpus_and_pass_each_other_s_node_check(pytester, node):
    # Each worker checks the live node while the other's engine may already hold its GPUs: leased, not foreign.
    pytester.makefile(".toml", suite=SUITE_TP4 + '\n[[configs]]\nengine = "vllm"\nname = "tp4b"\nargs = ["-tp", "4"]\n')
    result = run(pytester, "--suite=suite.toml", "--engine=vllm", "-n", "2", "--dist", "loadgroup",
                 f"--gate={NO_TIMING}", f"--baseline-dir={pytester.path / 'bl'}", "--update-baselines",
                 "--report-json=r.json")
    result.assert_outcomes(passed=2)
    procs = [json.loads(p.read_text()) for p in (node / "procs").glob("*.json")]
    assert len(procs) == 2 and all(len(p["uuids"]) == 4 for p in procs)
    assert not set(procs[0]["uuids"]) & set(procs[1]["uuids"])  # CUDA_VISIBLE_DEVICES: exactly the leased GPUs
    cases = report(pytester)["cases"]
    assert sorted(tuple(c["gpu_uuids"]) for c in cases) == sorted(tuple(p["uuids"]) for p in procs)
    assert {c["node"]["worker"] for c in cases} == {"gw0", "gw1"}


def test_a_worker_killed_while_its_engine_boots_names_the_log_and_the_next_waits_for_the_gpus(pytester, node,
                                                                                               monkeypatch):
    # tp4 boots slowly and its worker is killed meanwhile; the fake NVML shows its GPUs held 3 s after its engine
    # died. The replacement worker must not take those GPUs' processes for foreign, and tp8 waits until they go.
    monkeypatch.setenv("LLMPERF_STANDIN_RELEASE_S", "3")
    slow = SUITE_TP4.replace('name = "tp8"\nargs = ["-tp", "4"]',
                             'name = "tp4"\nargs = ["-tp", "4"]\nenv = { LLMPERF_STANDIN_BOOT_S = "60" }')
    pytester.makefile(".toml", suite=slow + '\n[[configs]]\nengine = "vllm"\nname = "big"\nargs = ["-tp", "8"]\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--suite=suite.toml", "--engine=vllm", "-n", "1",
         "--dist", "loadgroup", f"--gate={NO_TIMING}", f"--baseline-dir={pytester.path / 'bl'}", "--update-baselines",
         "--report-json=r.json", "--startup-timeout=120"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((node / "procs").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        (registered,) = [json.loads(p.read_text()) for p in (node / "procs").glob("*.json")]
        engine = psutil.Process(int(next((node / "procs").glob("*.json")).stem))
        os.kill(engine.ppid(), 9)  # its worker, while the engine is still loading
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(registered["uuids"]) == 4
    assert "died while running vllm/tp4/tiny" in out and "the engine's log: " in out and "vllm-tp4.log" in out, out
    outcomes = {c["id"]: c["outcome"] for c in report(pytester)["cases"]}
    assert outcomes == {"vllm/tp4/tiny": "failed", "vllm/big/tiny": "passed"}, out
    assert "vllm/big waited" in out and "for processes to let go of the GPUs it leased" in out, out


def test_a_configuration_larger_than_the_spec_never_boots(pytester, node):
    pytester.makefile(".toml", suite=SUITE)
    result = run(pytester, "--suite=suite.toml", "--engine=vllm", "--gpus=h200x4", f"--gate={NO_TIMING}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*node does not fit h200x4 (live NVML):*",
                                 "*its largest configuration needs 8 GPUs, more than h200x4*"])
    assert not list((node / "procs").glob("*.json"))


def test_a_flag_the_engine_does_not_accept_fails_its_items_at_once_with_the_log(pytester, node):
    pytester.makefile(".toml", suite=SUITE.replace('args = ["-tp", "8"]', 'args = ["-tp", "8", "--swap-space", "4"]'))
    result = run(pytester, "--suite=suite.toml", "--engine=vllm,trtllm", f"--gate={NO_TIMING}", "--report-json=r.json",
                 "--junitxml=j.xml")
    result.assert_outcomes(errors=1, failed=1)
    import xml.etree.ElementTree as ET

    status = {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")}.get("llmperf.status")
              for tc in ET.parse(pytester.path / "j.xml").iter("testcase")}
    assert status == {"test_llmperf[vllm/tp8/tiny]": "error", "test_llmperf[trtllm/tp8/tiny]": "missing"}
    result.stdout.fnmatch_lines(["*engine exited with code 2 before it was ready; last lines of*vllm-tp8.log*",
                                 "*unrecognized arguments: --swap-space 4*"])
    assert "During handling" not in result.stdout.str()
    # printed once in the report body (the short summary repeats it, untruncated when CI is set)
    body = result.stdout.str().split("short test summary info")[0]
    assert body.count("unrecognized arguments: --swap-space 4") == 1
    assert "no baseline for trtllm/tp8/tiny" in result.stdout.str()  # the next configuration still ran


def test_the_next_configuration_waits_for_the_gpus_to_be_freed(pytester, node, monkeypatch):
    pytester.makefile(".toml", suite=SUITE)
    monkeypatch.setenv("LLMPERF_STANDIN_RELEASE_S", "1.0")
    result = run(pytester, "--suite=suite.toml", "--engine=vllm,trtllm", f"--gate={NO_TIMING}", "--report-json=r.json")
    result.assert_outcomes(failed=2)  # both measured (no baselines here)
    assert [c["metrics"]["completed"] for c in report(pytester)["cases"]] == [6, 6]
    # random prompts are aligned through vLLM's /tokenize; TRT-LLM has none, and the report says so
    assert [c["prompts_aligned_by"] for c in report(pytester)["cases"]] == [
        "server /tokenize", "word tokenizer (the server has no /tokenize; give --tokenizer)"]
    assert [c["metrics"]["prompt_tokens_mismatch_pct"] for c in report(pytester)["cases"]] == [0.0, 0.0]
    first, second = sorted((node / "procs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    released_at = json.loads(first.read_text())["dead_at"] + 1.0
    assert second.stat().st_mtime >= released_at  # trtllm booted only once vllm's GPUs were freed

    before = set((node / "procs").glob("*.json"))
    monkeypatch.setenv("LLMPERF_STANDIN_RELEASE_S", "1000")
    result = run(pytester, "--suite=suite.toml", "--engine=vllm,trtllm", f"--gate={NO_TIMING}", "--gpu-free-timeout=1")
    # vllm/tp8 measured (no baseline); stopping it left the GPUs held, so trtllm/tp8 errors without booting
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*after vllm/tp8 stopped, its GPUs were not freed, so nothing else may boot*",
        "*ERROR llmperf::test_llmperf[[]trtllm/tp8/tiny[]]*",
    ])
    out = result.stdout.str()
    assert "120000 MiB" in out and "trtllm/tp8/tiny" in out
    assert len(set((node / "procs").glob("*.json")) - before) == 1  # trtllm never booted on the dirty node


def test_an_unfit_live_node_boots_nothing_and_names_every_problem(pytester, node):
    def break_it(data):
        data["gpus"][2]["mig_enabled"] = True
        data["gpus"][5]["processes"] = [{"pid": 4242, "used_memory_mib": 30000}]
        data["gpus"][7]["ecc_uncorrected"] = 3

    set_node(node, break_it)
    pytester.makefile(".toml", suite=SUITE)
    result = run(pytester, "--suite=suite.toml", "--engine=vllm,trtllm")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "MIG" in out and "4242" in out and "30000 MiB" in out and "ECC" in out
    assert list((node / "procs").glob("*.json")) == []  # nothing booted


def test_processes_that_were_there_before_are_not_waited_for(pytester, node):
    set_node(node, lambda data: data["gpus"][7].update(processes=[{"pid": 4242, "used_memory_mib": 30000}]))
    pytester.makefile(".toml", suite=SUITE)
    result = run(pytester, "--suite=suite.toml", "--engine=vllm,trtllm", "--gpus=any", f"--gate={NO_TIMING}",
                 "--gpu-free-timeout=2")
    result.assert_outcomes(failed=2)  # both measured (no baselines); 4242 was not the engine's
    assert "not freed" not in result.stdout.str()


def test_a_gpu_free_timeout_does_not_hide_the_failure_that_came_first(pytester, node, monkeypatch):
    monkeypatch.setenv("LLMPERF_STANDIN_RELEASE_S", "1000")
    result = run(pytester, "--engine=sglang", "--num-prompts=2", "-k", "sglang/tp8-no-deepgemm/short",
                 "--gpu-free-timeout=1", f"--gate={NO_TIMING}")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*note: after sglang/tp8-no-deepgemm stopped, its GPUs were not freed*"])


def test_cuda_visible_devices_limits_the_gpus_checked_and_given(pytester, node, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    pytester.makefile(".toml", suite=SUITE_TP4)
    result = run(pytester, "--suite=suite.toml", "--engine=vllm", "--gpus=h200x4", f"--gate={NO_TIMING}")
    result.assert_outcomes(failed=1)  # measured; no baseline
    result.stdout.fnmatch_lines(["*node fits h200x4 (live NVML, CUDA_VISIBLE_DEVICES=4,5,6,7; GPUs 4,5,6,7)*"])
    (proc,) = [json.loads(p.read_text()) for p in (node / "procs").glob("*.json")]
    assert proc["uuids"] == [g["uuid"] for g in HGX["gpus"][4:8]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    result = run(pytester, "--suite=suite.toml", "--engine=vllm", "--gpus=h200x4", "--dry-run")
    assert result.ret == 1 and "4 GPUs needed, 2 found" in result.stdout.str()


def test_a_snapshot_cannot_stand_in_for_the_node_real_engines_boot_on(pytester):
    result = run(pytester, "--engine=vllm", f"--gpu-snapshot={SIM_NODE_SNAPSHOT}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--gpu-snapshot checks a recorded node, but vllm would boot on this machine's GPUs*"])


def test_a_deselected_engine_s_node_does_not_block_the_selected_ones(pytester, monkeypatch):
    no_driver(pytester, monkeypatch)
    pytester.makefile(".toml", suite=SUITE + '\n[[configs]]\nengine = "sim"\nname = "s"\nprofile = "vllm-tp8"\n')
    result = run(pytester, "--suite=suite.toml", "--engine=sim,vllm", "-k", "sim/", "--update-baselines")
    result.assert_outcomes(passed=1)


def test_fewer_gpus_than_the_node_has_get_the_first_fit_ones_by_uuid(pytester, node):
    set_node(node, lambda data: data["gpus"][0].update(mig_enabled=True))
    pytester.makefile(".toml", suite=SUITE_TP4)
    result = run(pytester, "--suite=suite.toml", "--engine=vllm", "--gpus=h200x4", f"--gate={NO_TIMING}", "--report-json=r.json")
    result.assert_outcomes(failed=1)  # measured; no baseline
    (proc,) = [json.loads(p.read_text()) for p in (node / "procs").glob("*.json")]
    assert proc["uuids"] == [g["uuid"] for g in HGX["gpus"][1:5]]


def test_a_regression_under_thermal_throttling_is_inconclusive_confirmed_and_never_regressed(pytester, node,
                                                                                              monkeypatch):
    pytester.makefile(".toml", suite=SUITE)
    bdir = pytester.path / "bl"
    run(pytester, "--suite=suite.toml", "--engine=vllm", f"--baseline-dir={bdir}", "--update-baselines").assert_outcomes(passed=1)
    set_node(node, lambda data: [g.update(clocks_event_reasons=0x40, temperature_c=91) for g in data["gpus"]])
    monkeypatch.setenv("LLMPERF_STANDIN_SLOWDOWN", "10")
    result = run(pytester, "--suite=suite.toml", "--engine=vllm", f"--baseline-dir={bdir}", f"--gate={TOL}", "--report-json=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*inconclusive: 3 of 3 runs distorted: the GPUs were throttled (hw_thermal); nothing "
                                 "was compared (run it on a quiet machine, or --inconclusive=skip)*",
                                 "*tiny *inconclusive*"])
    case = report(pytester)["cases"][0]
    assert case["status"] == "inconclusive" and case["telemetry"]["throttled"] is True and case["verdicts"] == []
    assert len(case["runs"]) == 3 and case["confirm_runs"] == 2  # re-run twice (--confirm), distorted each time
    assert all(r["distorted"] == ["the GPUs were throttled (hw_thermal)"] for r in case["runs"])
    skipped = run(pytester, "--suite=suite.toml", "--engine=vllm", f"--baseline-dir={bdir}", f"--gate={TOL}",
                  "--inconclusive=skip", "--confirm=0", "-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*inconclusive: the GPUs were throttled (hw_thermal); nothing was compared*"])


# ----------------------------------------------------------------- external endpoint
def test_an_external_endpoint_is_measured_and_left_running(pytester):
    from pytest_llmperf.engines.base import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pytest_llmperf.sim", "serve", "--port", str(port), "--profile", "vllm-tp8",
         "--served-model-name", "served/dsv32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        pytester.makefile(".toml", suite=SUITE.split("[[configs]]")[0] + '[[configs]]\nengine = "external"\nname = "prod"\n')
        bdir = pytester.path / "bl"
        args = ("--suite=suite.toml", "--engine=external", f"--endpoint=http://127.0.0.1:{port}/v1", f"--baseline-dir={bdir}")
        run(pytester, *args, "--update-baselines").assert_outcomes(passed=1)
        result = run(pytester, *args, f"--gate={NO_TIMING}", "--report-json=r.json")
        result.assert_outcomes(passed=1)
        data = report(pytester)
        booted = data["environment"]["engines_booted"][0]
        assert booted["served_model"] == "served/dsv32" and booted["version"].endswith("+sim")
        assert data["environment"]["node"]["external"]["source"].startswith("not checked")
        assert (bdir / "h200x8" / "deepseek-ai__DeepSeek-V3.2" / "external" / "prod.json").is_file()
        assert server.poll() is None  # an external engine is never stopped
        # --gpus checks this machine's hardware; the endpoint's own processes are not foreign
        nvml_dir = pytester.path / "nvml"
        nvml_dir.mkdir()
        busy = copy.deepcopy(HGX)
        for g in busy["gpus"]:
            g["processes"] = [{"pid": server.pid, "used_memory_mib": 120000}]
            g["memory_used_mib"] = 120000
        (nvml_dir / "node.json").write_text(json.dumps(busy))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LLMPERF_FAKE_NVML_DIR", str(nvml_dir))
            mp.setenv("PYTHONPATH", str(FAKE_NVML))
            checked = run(pytester, *args, "--gpus=h200x8", f"--gate={NO_TIMING}", "--report-json=r.json")
        checked.assert_outcomes(passed=1)
        assert "hardware only (external endpoint)" in report(pytester)["environment"]["node"]["external"]["source"]
        no_endpoint = run(pytester, "--suite=suite.toml", "--engine=external")
        assert no_endpoint.ret == 4
        no_endpoint.stderr.fnmatch_lines(["*external/prod: an external engine needs an endpoint (--endpoint URL)*"])
    finally:
        server.terminate()
        server.wait(10)


# ----------------------------------------------------------------- repeats, cache resets, warm-up
@pytest.mark.parametrize("engine, config, route", [("vllm", "tp8", "/reset_prefix_cache"),
                                                   ("sglang", "tp8-dpattn", "/flush_cache")])
def test_each_run_of_a_repeated_case_starts_from_a_reset_cache(pytester, node, monkeypatch, engine, config, route):
    resets = pytester.path / "resets.log"
    monkeypatch.setenv("LLMPERF_STANDIN_RESETS_FILE", str(resets))
    template = pytester.path / "tool_chat_template_deepseekv32.jinja"
    result = run(pytester, f"--engine={engine}", "--gpus=h200x8", "--num-prompts=4", "-k", f"{engine}/{config}/short",
                 "--repeats=3", "--confirm=0", f"--chat-template={template}", "--report-json=r.json",
                 f"--gate={NO_TIMING}", "--warmup-requests=2")
    result.assert_outcomes(failed=1)  # no baseline here
    assert resets.read_text().splitlines() == [f"POST {route} 200 ok"] * 3  # one per run, none for the warm-up
    (case,) = report(pytester)["cases"]
    assert [r["cache_reset"] for r in case["runs"]] == [route] * 3
    assert [r["metrics"]["completed"] for r in case["runs"]] == [4, 4, 4]
    assert case["spread"]["completed"]["n"] == 3
    assert case["engine_metrics"]["available"] and case["engine_metrics"]["counters"]["generation_tokens"] == 4 * 4
    series = case["series"]  # the representative run over time, GPU readings on the requests' clock
    assert series["run"] in (1, 2, 3) and series["requests"]["sampled_from"] == 4
    assert series["requests"]["success"] == [True] * 4 and len(series["quantiles"]["ttft_ms"]) == 101
    gpu = series["gpu"]
    assert gpu["t_s"] and len(gpu["power_w"]) == len(gpu["t_s"]) and all(p is not None for p in gpu["power_w"])
    assert -5 < gpu["t_s"][0] <= 0  # the sampler starts just before the first request is sent, on the same clock
    notes = report(pytester)["environment"]["notes"]
    assert any(n.startswith(f"warm-up of {engine}/{config}: 2 requests shaped as short, 2 completed") for n in notes)
    (warmup,) = report(pytester)["environment"]["warmups"]
    assert (warmup["requests"], warmup["completed"], warmup["workload"]) == (2, 2, "short")


def test_trtllm_has_no_reset_route_and_the_report_says_so(pytester, node, monkeypatch):
    resets = pytester.path / "resets.log"
    monkeypatch.setenv("LLMPERF_STANDIN_RESETS_FILE", str(resets))
    result = run(pytester, "--engine=trtllm", "--gpus=h200x8", "--num-prompts=4", "-k", "trtllm/tp8/short",
                 "--repeats=2", "--confirm=0", "--report-json=r.json", f"--gate={NO_TIMING}")
    result.assert_outcomes(failed=1)
    assert not resets.exists()
    data = report(pytester)
    (case,) = data["cases"]
    assert [r["cache_reset"].startswith("none (trtllm has no cache-reset route") for r in case["runs"]] == [True, True]
    assert any("trtllm has no cache-reset route" in n for n in data["environment"]["notes"])
    assert case["engine_metrics"]["format"] == "trtllm-json" and case["engine_metrics"]["samples"] > 0
