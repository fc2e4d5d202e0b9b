"""The engine stand-ins (tests/standins): real command lines, real readiness phases, the seed's outcomes.

Every seed configuration is launched with the seed's exact flags through the
stand-in executables (``vllm``, ``trtllm-serve``) or module
(``python -m sglang.launch_server``), on 127.0.0.1 and a free port. Waits
poll with generous deadlines; nothing depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from standin_env import install

MODEL = "deepseek-ai/DeepSeek-V3.2"
HOST = "127.0.0.1"
DEADLINE_S = 60.0
UUIDS = ["GPU-5c0a1e7e-0000-4000-8000-000000000001", "GPU-5c0a1e7e-0000-4000-8000-000000000002"]
TEMPLATE = object()  # placeholder for the chat template path in argv
VERSIONS = {"vllm": "0.13.0", "sglang": "0.5.6.post2", "trtllm": "1.2.0rc5"}
TOKENIZER = ["--tokenizer-mode", "deepseek_v32", "--reasoning-parser", "deepseek_v3"]

# (engine, seed name, flags beyond the model, environment, expected outcome)
SEED = [
    ("vllm", "tp8", ["-tp", "8", *TOKENIZER], {}, "ran"),
    ("vllm", "dp8-ep", [*TOKENIZER, "-tp", "1", "-dp", "8", "--enable-expert-parallel", "--max-model-len", "81920"],
     {}, "ran"),
    ("vllm", "dcp8", ["-tp", "8", *TOKENIZER, "-dcp", "8"], {}, "fails"),
    ("vllm", "mtp1", ["-tp", "8", *TOKENIZER, "--speculative-config", '{"method":"mtp","num_speculative_tokens":1}'],
     {}, "ran"),
    ("vllm", "tp8-no-deepgemm", ["-tp", "8", *TOKENIZER], {"VLLM_USE_DEEP_GEMM": "0"}, "ran"),
    ("sglang", "tp8", ["--tp-size", "8", "--chat-template", TEMPLATE], {}, "ran"),
    ("sglang", "tp8-dpattn", ["--tp-size", "8", "--enable-dp-attention", "--chat-template", TEMPLATE], {}, "ran"),
    ("sglang", "tp8-dp8-dpattn", ["--tp-size", "8", "--dp-size", "8", "--enable-dp-attention",
                                  "--chat-template", TEMPLATE], {}, "ran"),
    ("sglang", "tp8-dp8-dpattn-ep8", ["--tp-size", "8", "--dp-size", "8", "--enable-dp-attention", "--ep-size", "8",
                                      "--chat-template", TEMPLATE], {}, "ran"),
    ("sglang", "mtp-eagle", ["--tp-size", "8", "--speculative-algorithm", "EAGLE", "--speculative-num-steps", "1",
                             "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "2"], {}, "ran"),
    ("sglang", "tp8-no-deepgemm", ["--tp-size", "8", "--chat-template", TEMPLATE],
     {"SGLANG_ENABLE_JIT_DEEPGEMM": "0"}, "fails"),
    ("trtllm", "tp8", ["--tp_size", "8"], {}, "ran"),
    ("trtllm", "tp8-ep8", ["--tp_size", "8", "--ep_size", "8", "--pp_size", "1"], {}, "ran"),
    ("trtllm", "tp8-ep8-no-deepgemm", ["--tp_size", "8", "--ep_size", "8", "--pp_size", "1"],
     {"TRTLLM_DG_ENABLED": "0"}, "ran"),
]
FAILURE_TEXT = {"vllm/dcp8": "softmax LSE", "sglang/tp8-no-deepgemm": "DeepGEMM is disabled"}


# ----------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def standin_env(tmp_path_factory) -> dict[str, str]:
    return install(tmp_path_factory.mktemp("standin-bin"))


@pytest.fixture
def template(tmp_path) -> Path:
    path = tmp_path / "tool_chat_template_deepseekv32.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Engine:
    """One stand-in process: its own session, output in a log file, killed (group) in ``close``."""

    def __init__(self, engine: str, args: list, base_env: dict[str, str], tmp_path: Path, env: dict | None = None,
                 template: Path | None = None, port: int | None = None, model: str = MODEL):
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        args = [str(template) if a is TEMPLATE else a for a in args]
        where = ["--host", HOST, "--port", str(self.port)]
        if engine == "vllm":
            self.argv = [str(Path(base_env["PATH"].split(os.pathsep)[0]) / "vllm"), "serve", model, *args, *where]
        elif engine == "trtllm":
            self.argv = [str(Path(base_env["PATH"].split(os.pathsep)[0]) / "trtllm-serve"), model, *args, *where]
        else:
            self.argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, *args, *where]
        full_env = {**os.environ, **base_env, "LLMPERF_STANDIN_BOOT_S": "0.05", "LLMPERF_STANDIN_WARMUP_S": "0.05"}
        for key in ("LLMPERF_STANDIN_FIXED", "LLMPERF_STANDIN_VERSION", "LLMPERF_FAKE_NVML_DIR", "CUDA_VISIBLE_DEVICES",
                    "VLLM_USE_DEEP_GEMM", "SGLANG_ENABLE_JIT_DEEPGEMM", "TRTLLM_DG_ENABLED", "VLLM_API_KEY",
                    "VLLM_SERVER_DEV_MODE", "LLMPERF_STANDIN_RESETS_FILE"):
            full_env.pop(key, None)
        full_env.update(env or {})
        self.log_path = tmp_path / f"{engine}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.http = requests.Session()
        self.http.trust_env = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body: dict, **kw) -> requests.Response:
        return self.http.post(self.url + path, json=body, timeout=30, **kw)

    def wait_ready(self, path: str = "/health") -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.argv} exited with {self.proc.returncode} before it was ready:\n{self.log()}")
            try:
                if self.get(path).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        pytest.fail(f"{self.argv} not ready within {DEADLINE_S} s:\n{self.log()}")

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv} still running after {timeout} s:\n{self.log()}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        finally:
            self._log.close()
            self.http.close()


def run_cli(argv: list[str], env: dict[str, str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """A stand-in that is expected to exit by itself (bad flags, no profile)."""
    proc = subprocess.Popen(argv, env={**os.environ, **env, "LLMPERF_STANDIN_BOOT_S": "0.05", **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def vllm_argv(env: dict[str, str], *args: str) -> list[str]:
    return [str(Path(env["PATH"].split(os.pathsep)[0]) / "vllm"), "serve", MODEL, *args]


def trtllm_argv(env: dict[str, str], *args: str) -> list[str]:
    return [str(Path(env["PATH"].split(os.pathsep)[0]) / "trtllm-serve"), MODEL, *args]


def sglang_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", MODEL, *args]


def stream_chat(engine: Engine, max_tokens: int = 4) -> tuple[str, dict]:
    """A streamed chat completion: the text and the usage chunk (ends with [DONE])."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}],
            "max_completion_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    resp = engine.post("/v1/chat/completions", body, stream=True)
    assert resp.status_code == 200, resp.text
    text, usage, done = "", None, False
    for line in resp.iter_lines():
        if not line:
            continue
        data = line.decode().removeprefix("data: ")
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
    assert done, "the stream did not end with [DONE]"
    return text, usage or {}


def reported_version(engine: Engine, kind: str) -> str:
    if kind == "sglang":
        assert engine.get("/version").status_code == 404  # SGLang has no /version route
        return engine.get("/get_server_info").json()["version"]
    return engine.get("/version").json()["version"]


# ----------------------------------------------------------------- the seed's configurations
@pytest.mark.parametrize("kind,name,args,env,outcome", SEED, ids=[f"{e}/{n}" for e, n, *_ in SEED])
def test_seed_configuration_boots_through_its_real_command_line(kind, name, args, env, outcome, standin_env,
                                                                 template, tmp_path):
    nvml = tmp_path / "nvml"
    run_env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(UUIDS), "LLMPERF_FAKE_NVML_DIR": str(nvml)}
    engine = Engine(kind, args, standin_env, tmp_path, env=run_env, template=template)
    try:
        if outcome == "fails":
            code = engine.wait_exit()
            log = engine.log()
            assert code != 0, log
            assert FAILURE_TEXT[f"{kind}/{name}"] in log
            assert "ready to roll" not in log and "Uvicorn running" not in log
        else:
            engine.wait_ready()
            log = engine.log()
            assert f"simulated engine profile: {kind}-{name}" in log
            assert f"CUDA_VISIBLE_DEVICES={','.join(UUIDS)}" in log
            text, usage = stream_chat(engine)
            assert text and usage["completion_tokens"] == 4
            assert engine.get("/v1/models").json()["data"][0]["id"] == MODEL
            assert reported_version(engine, kind) == VERSIONS[kind]
            if kind == "sglang":
                assert engine.log().index("Uvicorn running") < engine.log().index("ready to roll")
            assert engine.terminate() == 0
        (record,) = [json.loads(p.read_text()) for p in (nvml / "procs").glob("*.json")]
        assert record == {"pid": engine.proc.pid, "uuids": UUIDS, "used_memory_mib": 120000, "release_delay_s": 0.0}
    finally:
        engine.close()


@pytest.mark.parametrize("kind,name,args,env", [(e, n, a, v) for e, n, a, v, o in SEED if o == "fails"],
                         ids=[f"{e}/{n}" for e, n, *_, o in SEED if o == "fails"])
def test_a_known_failure_starts_when_fixed(kind, name, args, env, standin_env, template, tmp_path):
    engine = Engine(kind, args, standin_env, tmp_path, env={**env, "LLMPERF_STANDIN_FIXED": "1"}, template=template)
    try:
        engine.wait_ready()
        assert f"simulated engine profile: {kind}-tp8" in engine.log()
        text, _ = stream_chat(engine, max_tokens=2)
        assert text
        assert engine.terminate() == 0
    finally:
        engine.close()


# ----------------------------------------------------------------- command lines the engines refuse
REFUSED = [
    ("vllm", ["-tp", "8", "--swap-space", "4"], 2, "unrecognized arguments: --swap-space 4"),
    ("vllm", ["-tp", "8", "--num-speculative-tokens", "1"], 2, "unrecognized arguments: --num-speculative-tokens 1"),
    ("vllm", ["--tensor-parallel", "8"], 2, "unrecognized arguments: --tensor-parallel 8"),  # no abbreviations
    # the seed's unquoted JSON, as a shell brace-expands it
    ("vllm", ["-tp", "8", "--speculative-config", "method:mtp", "num_speculative_tokens:1"], 2,
     "argument --speculative-config/-sc: Value method:mtp cannot be converted"),
    ("vllm", ["-tp", "8", "-dcp", "3"], 1, "must be divisible by decode context parallel size 3"),
    ("vllm", ["-tp", "2"], 1, "the stand-in has no simulated profile for vllm with -tp 2"),
    ("sglang", ["--tp-size", "8", "--swap-space", "4"], 2, "unrecognized arguments: --swap-space 4"),
    ("sglang", ["--tp-size", "8", "--chat-template", "missing/template.jinja"], 1,
     "Chat template missing/template.jinja is not a built-in template name or a valid chat template file path"),
    ("sglang", ["--tp-size", "8", "--dp-size", "8"], 1, "the stand-in has no simulated profile for sglang"),
    ("trtllm", ["--tp-size", "8"], 2, "Error: No such option: --tp-size"),
    ("trtllm", ["--tp", "8"], 2, "Error: No such option: --tp"),  # never abbreviated
    ("trtllm", ["--tp_size", "8", "--ep_size", "4"], 1, "the stand-in has no simulated profile for trtllm"),
]


@pytest.mark.parametrize("kind,args,code,message", REFUSED, ids=[f"{k}:{' '.join(a)}" for k, a, *_ in REFUSED])
def test_a_command_line_the_engine_refuses_exits_with_its_message(kind, args, code, message, standin_env, tmp_path):
    nvml = tmp_path / "nvml"
    argv = {"vllm": lambda: vllm_argv(standin_env, *args), "trtllm": lambda: trtllm_argv(standin_env, *args),
            "sglang": lambda: sglang_argv(*args)}[kind]()
    result = run_cli(argv + ["--host", HOST, "--port", str(free_port())], standin_env,
                     {"LLMPERF_FAKE_NVML_DIR": str(nvml)})
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert not (nvml / "procs").exists() or list((nvml / "procs").glob("*.json")) == []


# ----------------------------------------------------------------- readiness phases
def test_sglang_answers_models_while_health_is_503_during_its_warm_up(standin_env, template, tmp_path):
    # --tp is expanded to --tp-size, as SGLang's argparse does with unique prefixes
    engine = Engine("sglang", ["--tp", "8", "--chat-template", TEMPLATE, "--enable-metrics"], standin_env, tmp_path,
                    env={"LLMPERF_STANDIN_WARMUP_S": "2.5"}, template=template)
    try:
        engine.wait_ready("/v1/models")  # bound: the warm-up has just begun
        assert engine.get("/health").status_code == 503
        assert engine.get("/health_generate").status_code == 503
        assert engine.get("/get_model_info").status_code == 200
        assert "ready to roll" not in engine.log()
        engine.wait_ready("/health")
        assert engine.get("/health_generate").status_code == 200
        assert "The server is fired up and ready to roll!" in engine.log()
        assert "sglang:num_running_reqs" in engine.get("/metrics").text
        assert engine.terminate() == 0
    finally:
        engine.close()


def test_vllm_refuses_connections_while_loading_and_registers_its_gpus(standin_env, tmp_path):
    nvml = tmp_path / "nvml"
    env = {"LLMPERF_STANDIN_BOOT_S": "2.5", "LLMPERF_FAKE_NVML_DIR": str(nvml),
           "CUDA_VISIBLE_DEVICES": ",".join(UUIDS), "LLMPERF_STANDIN_RELEASE_S": "1.5"}
    engine = Engine("vllm", ["-tp", "8", "--served-model-name", "served/dsv32", "extra-name"], standin_env, tmp_path,
                    env=env)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not list((nvml / "procs").glob("*.json")) and time.monotonic() < deadline:
            assert engine.proc.poll() is None, engine.log()
            time.sleep(0.02)
        (path,) = list((nvml / "procs").glob("*.json"))
        assert path.name == f"{engine.proc.pid}.json"
        assert json.loads(path.read_text()) == {"pid": engine.proc.pid, "uuids": UUIDS, "used_memory_mib": 120000,
                                                "release_delay_s": 1.5}
        with pytest.raises(requests.ConnectionError):  # bound, not listening: no 503 phase
            engine.get("/health")
        engine.wait_ready()
        assert engine.get("/v1/models").json()["data"][0]["id"] == "served/dsv32"
        body = {"model": "served/dsv32", "prompt": "hello", "max_tokens": 3, "ignore_eos": True}
        assert engine.post("/v1/completions", body).json()["usage"]["completion_tokens"] == 3
        assert "vllm:num_requests_running" in engine.get("/metrics").text
        assert engine.terminate() == 0
        assert path.exists()  # left for the fake NVML, which frees the GPUs after release_delay_s
    finally:
        engine.close()


# ----------------------------------------------------------------- TensorRT-LLM's strict request models
def test_trtllm_rejects_unknown_request_fields_and_reports_an_overridden_version(standin_env, tmp_path):
    engine = Engine("trtllm", ["--tp_size", "8"], standin_env, tmp_path, env={"LLMPERF_STANDIN_VERSION": "1.3.0"})
    try:
        engine.wait_ready()
        assert engine.get("/version").json() == {"version": "1.3.0"}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2}
        resp = engine.post("/v1/chat/completions", {**chat, "frobnicate": True})
        assert resp.status_code == 400
        assert "frobnicate" in resp.json()["error"] and "Extra inputs are not permitted" in resp.json()["error"]
        for fields in ({}, {"ignore_eos": True, "min_tokens": 1}):
            resp = engine.post("/v1/chat/completions", {**chat, **fields})
            assert resp.status_code == 200, resp.text
        legacy = {k: v for k, v in chat.items() if k != "max_completion_tokens"}
        assert engine.post("/v1/chat/completions", {**legacy, "max_tokens": 2}).status_code == 200
        completion = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "ignore_eos": True}
        assert engine.post("/v1/completions", completion).status_code == 200
        # completions know only max_tokens
        resp = engine.post("/v1/completions", {**completion, "max_completion_tokens": 2})
        assert resp.status_code == 400 and "max_completion_tokens" in resp.json()["error"]
        resp = engine.post("/v1/completions", {**completion, "stream_options": {"include_usage": True}})
        assert resp.status_code == 400 and "Stream options can only be defined when stream is true" in resp.text
        assert engine.post("/v1/completions", {"prompt": "hi"}).status_code == 400  # model is required
        assert isinstance(engine.get("/metrics").json(), list)  # iteration stats, JSON
        assert engine.terminate() == 0
    finally:
        engine.close()


def test_install_writes_executables_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = install(tmp_path / "bin")
    for name in ("vllm", "trtllm-serve"):
        path = tmp_path / "bin" / name
        assert os.access(path, os.X_OK) and path.read_text().startswith(f"#!{sys.executable}\n")
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")
    standins = Path(__file__).parent / "standins"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(standins.resolve()), "/somewhere"]


# ----------------------------------------------------------------- vLLM's API key and TLS
def test_vllm_serves_https_and_requires_its_api_keys(standin_env, tmp_path):
    from tls_certs import make_certs

    certs = make_certs(tmp_path / "tls")
    keys = ["sk-standin-first", "sk-standin-second"]
    engine = Engine("vllm", ["-tp", "8", "--api-key", *keys, "--ssl-certfile", str(certs.cert_path),
                             "--ssl-keyfile", str(certs.key_path)], standin_env, tmp_path)
    engine.url = engine.url.replace("http://", "https://")
    engine.http.verify = str(certs.ca_path)
    try:
        engine.wait_ready()
        assert f"Uvicorn running on https://{HOST}:{engine.port}" in engine.log()
        assert engine.get("/v1/models").status_code == 401
        assert engine.get("/v1/models", headers={"Authorization": "Bearer sk-other"}).status_code == 401
        for key in keys:
            engine.http.headers["Authorization"] = f"Bearer {key}"
            text, usage = stream_chat(engine, max_tokens=3)
            assert text and usage["completion_tokens"] == 3
        del engine.http.headers["Authorization"]
        for path in ("/health", "/version", "/metrics", "/ping"):
            assert engine.get(path).status_code == 200, path
        assert engine.post("/tokenize", {"prompt": "a b c"}).json()["count"] == 3
        with pytest.raises(requests.exceptions.SSLError):  # the test CA not trusted: the handshake fails
            requests.get(engine.url + "/health", timeout=30, verify=True)
        assert engine.terminate() == 0
        log = engine.log()
        assert "'api_key': ['<redacted>', '<redacted>']" in log and not any(k in log for k in keys)
    finally:
        engine.close()


def test_vllm_takes_its_api_key_from_vllm_api_key_unless_given_one(standin_env, tmp_path):
    engine = Engine("vllm", ["-tp", "8"], standin_env, tmp_path, env={"VLLM_API_KEY": "sk-from-env"})
    flagged = Engine("vllm", ["-tp", "8", "--api-key", "sk-from-flag"], standin_env, tmp_path,
                     env={"VLLM_API_KEY": "sk-from-env"})
    try:
        for e in (engine, flagged):
            e.wait_ready()
            assert e.url.startswith("http://")
        assert engine.get("/v1/models").status_code == 401
        assert engine.get("/v1/models", headers={"Authorization": "Bearer sk-from-env"}).status_code == 200
        assert flagged.get("/v1/models", headers={"Authorization": "Bearer sk-from-env"}).status_code == 401
        assert flagged.get("/v1/models", headers={"Authorization": "Bearer sk-from-flag"}).status_code == 200
        assert engine.terminate() == 0 and flagged.terminate() == 0
        assert "sk-from" not in engine.log() + flagged.log()
    finally:
        engine.close()
        flagged.close()


def test_vllm_with_a_certificate_it_cannot_load_exits_naming_it(standin_env, tmp_path):
    engine = Engine("vllm", ["-tp", "8", "--ssl-certfile", str(tmp_path / "absent.pem")], standin_env, tmp_path)
    try:
        assert engine.wait_exit() == 1
        assert "absent.pem does not exist" in engine.log() and "Uvicorn running" not in engine.log()
    finally:
        engine.close()


# ----------------------------------------------------------------- prefix-cache resets and metrics, per engine
def prometheus(engine: Engine) -> dict[str, float]:
    """``/metrics`` parsed with prometheus_client: sample name -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = engine.get("/metrics")
    assert resp.status_code == 200, resp.text
    return {s.name: s.value for f in text_string_to_metric_families(resp.text) for s in f.samples
            if not s.name.endswith("_created")}


def complete(engine: Engine, prompt: str, max_tokens: int = 3) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    resp = engine.post("/v1/completions", body)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("dev_mode", [False, True], ids=["default", "dev-mode"])
def test_vllm_resets_its_prefix_cache_only_in_dev_mode(standin_env, tmp_path, dev_mode):
    resets = tmp_path / "resets.txt"
    env = {"LLMPERF_STANDIN_RESETS_FILE": str(resets), **({"VLLM_SERVER_DEV_MODE": "1"} if dev_mode else {})}
    engine = Engine("vllm", ["-tp", "8"], standin_env, tmp_path, env=env)
    try:
        engine.wait_ready()
        prompt = "the same prompt twice over"
        complete(engine, prompt)
        complete(engine, prompt)
        m = prometheus(engine)
        assert m["vllm:prefix_cache_queries_total"] == 10 and m["vllm:prefix_cache_hits_total"] == 4
        assert m["vllm:request_success_total"] == 2 and m["vllm:generation_tokens_total"] == 6
        assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:num_preemptions_total", "vllm:prompt_tokens_total"} <= set(m)
        assert engine.http.post(engine.url + "/reset_prefix_cache", timeout=30).status_code == (200 if dev_mode else 404)
        assert engine.http.post(engine.url + "/flush_cache", timeout=30).status_code == 404  # SGLang's, not vLLM's
        complete(engine, prompt)
        assert prometheus(engine)["vllm:prefix_cache_hits_total"] == (4 if dev_mode else 8)
        assert resets.read_text().splitlines() == [
            "POST /reset_prefix_cache 200 ok" if dev_mode else "POST /reset_prefix_cache 404 failed",
            "POST /flush_cache 404 failed"]
        assert engine.terminate() == 0
    finally:
        engine.close()


def test_sglang_serves_metrics_only_with_enable_metrics(standin_env, template, tmp_path):
    engine = Engine("sglang", ["--tp-size", "8", "--chat-template", TEMPLATE], standin_env, tmp_path,
                    template=template)
    try:
        engine.wait_ready()
        assert engine.get("/metrics").status_code == 404
        assert engine.terminate() == 0
    finally:
        engine.close()


def test_sglang_flushes_its_cache_when_idle_and_reports_its_own_metric_names(standin_env, template, tmp_path):
    resets = tmp_path / "resets.txt"
    engine = Engine("sglang", ["--tp-size", "8", "--chat-template", TEMPLATE, "--enable-metrics"], standin_env,
                    tmp_path, template=template, env={"LLMPERF_STANDIN_RESETS_FILE": str(resets)})
    try:
        engine.wait_ready()  # after its warm-up request
        base = prometheus(engine)
        assert set(base) == {"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                             "sglang:cache_hit_rate", "sglang:num_retracted_reqs", "sglang:num_retracted_requests_total",
                             "sglang:prompt_tokens_total", "sglang:generation_tokens_total"}
        prompt = "one two three four five six seven eight nine ten"
        complete(engine, prompt, 4)
        complete(engine, prompt, 4)
        m = prometheus(engine)
        assert m["sglang:prompt_tokens_total"] - base["sglang:prompt_tokens_total"] == 20
        assert m["sglang:generation_tokens_total"] - base["sglang:generation_tokens_total"] == 8
        assert 0 < m["sglang:cache_hit_rate"] <= 9 / 20 and m["sglang:num_running_reqs"] == 0
        assert m["sglang:token_usage"] == 0.0

        # A long stream keeps a request running: the flush is refused until the engine is idle.
        body = {"model": MODEL, "prompt": "keep me busy", "max_tokens": 30000, "ignore_eos": True, "stream": True}
        stream = engine.http.post(engine.url + "/v1/completions", json=body, stream=True, timeout=30)
        try:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: a dropped iterator closes the connection, aborting the request
            assert next(lines).startswith(b"data: ")  # the first token is out: the request runs
            assert prometheus(engine)["sglang:num_running_reqs"] == 1
            refused = engine.http.post(engine.url + "/flush_cache", timeout=30)
            assert refused.status_code == 400 and "not flushed" in refused.text
        finally:
            stream.close()  # the client goes away: the request is aborted
        deadline = time.monotonic() + DEADLINE_S
        while (resp := engine.http.post(engine.url + "/flush_cache", timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, resp.text  # clients retry until the engine is idle
            time.sleep(0.05)
        assert resp.text.startswith("Cache flushed")
        assert engine.get("/flush_cache").status_code == 200  # SGLang takes GET too
        assert engine.http.post(engine.url + "/reset_prefix_cache", timeout=30).status_code == 404
        lines = resets.read_text().splitlines()
        assert lines[0] == "POST /flush_cache 400 failed" and lines[-2:] == ["GET /flush_cache 200 ok",
                                                                             "POST /reset_prefix_cache 404 failed"]
        assert lines[-3] == "POST /flush_cache 200 ok"
        assert engine.terminate() == 0
    finally:
        engine.close()


def test_trtllm_metrics_are_iteration_stats_that_reading_drains(standin_env, tmp_path):
    resets = tmp_path / "resets.txt"
    engine = Engine("trtllm", ["--tp_size", "8"], standin_env, tmp_path,
                    env={"LLMPERF_STANDIN_RESETS_FILE": str(resets)})
    try:
        engine.wait_ready()
        engine.get("/metrics")  # drain whatever came before
        complete(engine, "count my iterations please", 3)
        stats = engine.get("/metrics").json()
        # one prefill step (the first token), then two decode steps
        assert [s["inflightBatchingStats"] for s in stats] == [
            {"numContextRequests": 1, "numGenRequests": 0, "numScheduledRequests": 1},
            {"numContextRequests": 0, "numGenRequests": 1, "numScheduledRequests": 1},
            {"numContextRequests": 0, "numGenRequests": 1, "numScheduledRequests": 1}]
        assert [s["iter"] for s in stats] == list(range(stats[0]["iter"], stats[0]["iter"] + 3))
        for s in stats:
            kv = s["kvCacheStats"]
            assert kv["tokensPerBlock"] == 32 and kv["usedNumBlocks"] + kv["freeNumBlocks"] == kv["maxNumBlocks"]
            assert {"numQueuedRequests", "numActiveRequests"} <= set(s)
        assert stats[0]["kvCacheStats"]["usedNumBlocks"] == 1 and stats[-1]["kvCacheStats"]["usedNumBlocks"] == 0
        assert engine.get("/metrics").json() == []  # read once: drained
        for path in ("/reset_prefix_cache", "/flush_cache"):
            assert engine.http.post(engine.url + path, timeout=30).status_code == 404
        assert resets.read_text().splitlines() == ["POST /reset_prefix_cache 404 failed", "POST /flush_cache 404 failed"]
        assert engine.terminate() == 0
    finally:
        engine.close()
