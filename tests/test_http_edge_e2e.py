"""End-to-end runs through the one HTTP edge: https with a test CA, API keys, headers, secrets kept out of
everything the run prints or writes, and endpoints that refuse, fail /tokenize or are not trusted.

The servers are sim engines on 127.0.0.1 (tests/recording_sim.py notes what each request carried).
Assertions are about behaviour, never about speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pytest_llmperf.engines.base import free_port
from pytest_llmperf.http import ControlClient, HttpFailure, HttpOptions

TESTS = Path(__file__).parent
NO_TIMING = "total_token_throughput:off,mean_tpot_ms:off,failed:0"
SECRET = "sk-x-" + uuid.uuid4().hex  # distinctive, so a search for it finds only real leaks
TENANT = "tenant-" + uuid.uuid4().hex[:8]


def suite(model: str, configs: str = "") -> str:
    return f'''
model = "{model}"
gpus = "h200x8"

[workloads.tiny]
dataset = "random"
input_len = 16
output_len = 4
num_prompts = 6
''' + (configs or '''
[[configs]]
engine = "external"
name = "endpoint"
endpoint = "http://127.0.0.1:1"   # --endpoint says where
''')


@pytest.fixture
def model():
    return f"test/edge-{uuid.uuid4().hex[:8]}"


class Endpoint:
    def __init__(self, proc: subprocess.Popen, url: str, record: Path):
        self.proc, self.url, self.record = proc, url, record

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def endpoint(tmp_path, model):
    """Start a recording sim (https and an API key when asked); stop it by pid afterwards."""
    started: list[subprocess.Popen] = []

    def start(*, certs=None, key: str | None = None, tokenize_status: int = 200) -> Endpoint:
        port = free_port()
        record = tmp_path / f"requests-{port}.jsonl"
        record.touch()
        argv = [sys.executable, str(TESTS / "recording_sim.py"), "--port", str(port), "--record", str(record),
                "--served-model-name", model, "--tokenize-status", str(tokenize_status)]
        if certs is not None:
            argv += ["--ssl-certfile", str(certs.cert_path), "--ssl-keyfile", str(certs.key_path)]
        env = {k: v for k, v in os.environ.items() if k not in ("LLMPERF_SIM_API_KEY", "OPENAI_API_KEY")}
        if key:
            env["LLMPERF_SIM_API_KEY"] = key
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready", "the recording sim did not start"
        scheme = "https" if certs is not None else "http"
        return Endpoint(proc, f"{scheme}://127.0.0.1:{port}", record)

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(pytester, *args, env: dict[str, str] | None = None):
    with pytest.MonkeyPatch.context() as mp:
        for name in ("OPENAI_API_KEY", "LLMPERF_SIM_API_KEY", "LLMPERF_API_KEY_ENV"):
            mp.delenv(name, raising=False)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--suite=suite.toml", *args, timeout=300)


def files_holding(root: Path, text: str, skip: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path.name not in skip and text in path.read_text(errors="replace"):
            found.append(str(path.relative_to(root)))
    return found


def test_an_https_endpoint_with_a_private_ca_a_key_and_a_header(pytester, endpoint, model, tmp_path):
    from tls_certs import make_certs

    certs = make_certs(tmp_path / "tls")
    server = endpoint(certs=certs, key=SECRET)
    pytester.makefile(".toml", suite=suite(model))
    common = ("--engine=external", f"--endpoint={server.url}", f"--gate={NO_TIMING}", f"--header=X-Tenant: {TENANT}")

    refused = run(pytester, *common, env={"OPENAI_API_KEY": SECRET})
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines([f"*endpoint {server.url} is not reachable: TLS certificate of {server.url}/health "
                                  "not trusted (*); give the server's CA with --ca-bundle FILE, or --insecure*"])
    assert "Traceback" not in refused.stdout.str()

    result = run(pytester, *common, f"--ca-bundle={certs.ca_path}", "--update-baselines", "--report-json=r.json",
                 "--results-dir=res", "--save-requests", env={"OPENAI_API_KEY": SECRET})
    result.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "r.json").read_text())
    (case,) = report["cases"]
    assert case["metrics"]["completed"] == 6 and case["prompts_aligned_by"] == "server /tokenize"
    seen = server.requests()
    measured = [r for r in seen if r["path"] == "/v1/chat/completions"]
    assert len(measured) == 6  # an external endpoint gets no warm-up unless asked
    paths = {r["path"] for r in seen}
    assert {"/health", "/version", "/v1/models", "/tokenize", "/metrics"} <= paths
    assert "/reset_prefix_cache" not in paths  # nor are its caches dropped: the server is not ours
    assert all(r["tenant"] == TENANT for r in seen), "a request went out without the header"
    assert all(r["authorized"] for r in seen), "a request went out without the key"
    assert report["environment"]["http"] == {"headers": ["X-Tenant: ***"], "api_key": "from OPENAI_API_KEY",
                                             "ca_bundle": str(certs.ca_path), "insecure": False}
    for secret in (SECRET, TENANT):
        assert files_holding(pytester.path, secret) == []
        assert secret not in result.stdout.str() + result.stderr.str()


def test_the_api_key_is_required_and_another_variable_can_hold_it(pytester, endpoint, model):
    server = endpoint(key=SECRET)
    pytester.makefile(".toml", suite=suite(model))
    args = ("--engine=external", f"--endpoint={server.url}", f"--gate={NO_TIMING}", "--update-baselines")
    without = run(pytester, *args)
    without.assert_outcomes(failed=1)
    without.stdout.fnmatch_lines(["*no request of external/endpoint/tiny completed (6 failed): "
                                  "HTTP 401 Unauthorized (x6; first: *"])
    run(pytester, *args, "--api-key-env=MY_KEY", env={"MY_KEY": SECRET}).assert_outcomes(passed=1)
    missing = run(pytester, *args, "--api-key-env=NOT_SET_ANYWHERE")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    assert "--api-key-env: the environment variable NOT_SET_ANYWHERE is not set (or empty)" in missing.stderr.str()


def test_secret_engine_environment_never_reaches_output_or_files(pytester, model):
    """A sim whose configuration carries its API key in env: the run authenticates, and prints and writes ***."""
    pytester.makefile(".toml", suite=suite(model, f'''
[[configs]]
engine = "sim"
name = "keyed"
profile = "vllm-tp8"
env = {{ LLMPERF_SIM_API_KEY = "{SECRET}" }}
args = ["--log-level", "debug"]
'''))
    args = ("--engine=sim", f"--gate={NO_TIMING}", "--update-baselines", "--report-json=r.json", "--results-dir=res",
            "--save-requests", f"--log-dir={pytester.path / 'logs'}")
    result = run(pytester, *args, env={"OPENAI_API_KEY": SECRET})
    result.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "r.json").read_text())
    (boot,) = report["environment"]["engines_booted"]
    assert boot["env"] == {"LLMPERF_SIM_API_KEY": "***"}
    dry = run(pytester, "--engine=sim", "--dry-run", env={"OPENAI_API_KEY": SECRET})
    assert "environment: LLMPERF_SIM_API_KEY='***'" in dry.stdout.str()
    for out in (result, dry):
        assert SECRET not in out.stdout.str() + out.stderr.str()
    assert files_holding(pytester.path, SECRET, skip=("suite.toml",)) == []  # only the user's own suite file


def test_an_endpoint_that_refuses_fails_in_seconds(pytester, model):
    pytester.makefile(".toml", suite=suite(model))
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    result = run(pytester, "--engine=external", f"--endpoint={url}")
    assert time.monotonic() - t0 < 60  # pytest's own start included; the refusal itself takes about 3 s
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*endpoint {url} is not reachable: connection refused at {url}/health; "
                                 "is the server running, and is --endpoint right?*"])
    assert "Traceback" not in result.stdout.str()


def test_a_failing_tokenize_falls_back_with_a_note(pytester, endpoint, model):
    server = endpoint(tokenize_status=500)
    pytester.makefile(".toml", suite=suite(model))
    result = run(pytester, "--engine=external", f"--endpoint={server.url}", f"--gate={NO_TIMING}",
                 "--update-baselines", "--report-json=r.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*note: external/endpoint/tiny: prompt lengths were not aligned to the server's "
                                 f"tokens: word tokenizer (the server's /tokenize failed: {server.url}/tokenize "
                                 "answered HTTP 500: *; give --tokenizer)*"])
    assert "Traceback" not in result.stdout.str()


def test_control_client_names_what_went_wrong():
    url = f"http://127.0.0.1:{free_port()}"
    with ControlClient(url) as client, pytest.raises(HttpFailure) as info:
        client.get("/health")
    assert (info.value.kind, str(info.value)) == ("refused", f"connection refused at {url}/health")
    assert HttpOptions(headers=(("X-A", "1"),), api_key="k").request_headers() == {"X-A": "1",
                                                                                    "Authorization": "Bearer k"}
    explicit = HttpOptions(headers=(("authorization", "Token t"),), api_key="k")
    assert explicit.request_headers() == {"authorization": "Token t"}  # an explicit header wins
    assert "sk-abc" not in repr(HttpOptions(api_key="sk-abc", api_key_source="OPENAI_API_KEY"))
