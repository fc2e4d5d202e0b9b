import subprocess
import sys

HEAVY = ("aiohttp", "pynvml", "requests", "psutil", "tabulate")


def test_plugin_import_pulls_no_heavy_module():
    code = (
        "import sys, pytest_llmperf.plugin, pytest_llmperf.cases;"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pytest_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--engine=NAME[,NAME]", "--gpus=SPEC", "--update-baselines", "--baseline-dir=DIR", "--report-json=PATH",
                 "--num-prompts=N", "--sim-slowdown=FACTOR", "--suite=FILE", "--gate=METRIC:PCT[,...]", "llmperf_gpus"):
        assert flag in out, flag


def test_engine_metrics_import_prometheus_client_only_when_parsing():
    code = ("import sys, pytest_llmperf.engine_metrics, pytest_llmperf.engines.control;"
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
