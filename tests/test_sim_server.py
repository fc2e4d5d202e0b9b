"""The sim engine's HTTP server: endpoints, stream shape, counts, errors, disconnects, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from pytest_llmperf import __version__
from pytest_llmperf.sim.profiles import load_profile
from pytest_llmperf.sim.server import SimServer, natural_output_tokens
from pytest_llmperf.tokenizer import DEFAULT_TOKENIZER

MODEL = "test/sim-model"
FAST_PROFILE = """
description = "fast steps for tests"
model = "test/sim-model"
max_context_tokens = 4096
max_running_requests = 64
kv_capacity_tokens = 65536
chunked_prefill_tokens = 8192
step_base_ms = 1.0
decode_ms_per_seq = 0.01
prefill_ms_per_token = 0.0
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "fast.toml"
    path.write_text(FAST_PROFILE)
    return path


class ThreadedServer:
    """A SimServer on its own event loop thread, on 127.0.0.1 and a free port."""

    def __init__(self, profile_path: Path, **kwargs):
        self.server = SimServer(load_profile(profile_path), **kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(10)
        self.url = f"{self.server.scheme}://127.0.0.1:{port}"

    def call(self, fn):
        """Run ``fn()`` on the server's loop and return its result."""
        async def wrap():
            return fn()
        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def sim(profile_path):
    srv = ThreadedServer(profile_path)
    yield srv
    srv.close()


def sse_events(resp: requests.Response) -> list:
    out = []
    for line in resp.iter_lines():
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[len(b"data: "):]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def chat(url: str, content: str = "one two three", **extra) -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return requests.post(url + "/v1/chat/completions", json=body, stream=bool(extra.get("stream")), timeout=10)


def test_health_models_version(sim):
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200
    assert requests.get(sim.url + "/version", timeout=5).json() == {"version": f"{__version__}+sim", "profile": "fast"}
    models = requests.get(sim.url + "/v1/models", timeout=5).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]


def test_chat_stream_shape_counts_and_usage(sim):
    with chat(sim.url, "alpha beta gamma delta", max_completion_tokens=7, ignore_eos=True, stream=True,
              stream_options={"include_usage": True}) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    opening, tokens, usage = events[0], events[1:-2], events[-2]
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert opening["object"] == "chat.completion.chunk" and opening["model"] == MODEL
    assert opening["id"].startswith("chatcmpl-") and isinstance(opening["created"], int)
    assert len(tokens) == 7 and all(e["id"] == opening["id"] for e in tokens)
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 6 + ["length"]
    text = "".join(e["choices"][0]["delta"]["content"] for e in tokens)
    assert DEFAULT_TOKENIZER.count(text) == 7
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}


def test_stream_without_usage_has_no_usage_chunk(sim):
    with chat(sim.url, max_tokens=3, ignore_eos=True, stream=True) as resp:
        events = sse_events(resp)
    assert events[-1] == "[DONE]" and len(events) == 1 + 3 + 1
    assert all("usage" not in e for e in events[:-1])


def test_completions_stream_and_whole(sim):
    body = {"model": MODEL, "prompt": "a b c d e", "max_tokens": 5, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with requests.post(sim.url + "/v1/completions", json=body, stream=True, timeout=10) as resp:
        events = sse_events(resp)
    tokens = events[:-2]
    assert len(tokens) == 5 and all(e["object"] == "text_completion" for e in tokens)
    assert DEFAULT_TOKENIZER.count("".join(e["choices"][0]["text"] for e in tokens)) == 5
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}

    whole = requests.post(sim.url + "/v1/completions", json={**body, "stream": False}, timeout=10).json()
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] == 5
    assert whole["choices"][0]["text"] == "".join(e["choices"][0]["text"] for e in tokens)


def test_chat_whole_response(sim):
    resp = chat(sim.url, "x y", max_completion_tokens=4, ignore_eos=True)
    data = resp.json()
    assert resp.status_code == 200 and data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert DEFAULT_TOKENIZER.count(data["choices"][0]["message"]["content"]) == 4
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


def test_prompt_tokens_sum_over_messages_and_text_parts(sim):
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
            "max_tokens": 1, "ignore_eos": True}
    data = requests.post(sim.url + "/v1/chat/completions", json=body, timeout=10).json()
    assert data["usage"]["prompt_tokens"] == 5


def short_and_long_prompts() -> tuple[str, str]:
    short = next(f"p{i} w" for i in range(10_000) if natural_output_tokens(f"p{i} w") < 100)
    long_ = next(f"p{i} w" for i in range(10_000) if natural_output_tokens(f"p{i} w") >= 2048)
    return short, long_


def test_natural_length_is_deterministic_and_mostly_beyond_sharegpt_lengths():
    short, _ = short_and_long_prompts()
    assert natural_output_tokens(short) == natural_output_tokens(short)
    share = sum(natural_output_tokens(f"prompt {i}") < 2048 for i in range(4000)) / 4000
    assert 0.02 < share < 0.07  # most ShareGPT-like requests run to their max


def test_natural_stop_and_ignore_eos_over_http(sim):
    short, long_ = short_and_long_prompts()
    n = natural_output_tokens(short)
    stopped = chat(sim.url, short, max_completion_tokens=n + 50).json()
    assert stopped["usage"]["completion_tokens"] == n and stopped["choices"][0]["finish_reason"] == "stop"
    forced = chat(sim.url, short, max_completion_tokens=n + 50, ignore_eos=True).json()
    assert forced["usage"]["completion_tokens"] == n + 50 and forced["choices"][0]["finish_reason"] == "length"
    capped = chat(sim.url, long_, max_completion_tokens=30).json()
    assert capped["usage"]["completion_tokens"] == 30 and capped["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, status, fragment", [
    ({"messages": [{"role": "user", "content": "hi"}], "model": "other/model"}, 404, "does not exist"),
    ({"messages": "hi"}, 400, "messages must be a non-empty list"),
    ({}, 400, "messages must be a non-empty list"),
    ({"messages": [{"content": "hi"}]}, 400, "string 'role'"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens must be an integer >= 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 400, "maximum context length is 4096"),
    ({"messages": [{"role": "user", "content": "w " * 5000}]}, 400, "maximum context length is 4096"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream must be a boolean"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1 only"),
])
def test_errors_look_like_vllm(sim, body, status, fragment):
    resp = requests.post(sim.url + "/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == status
    err = resp.json()["error"]
    assert fragment in err["message"] and err["code"] == status and err["type"]


def test_bad_json_and_bad_prompt(sim):
    resp = requests.post(sim.url + "/v1/chat/completions", data=b"{not json", timeout=10)
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]["message"]
    resp = requests.post(sim.url + "/v1/completions", json={"prompt": 5}, timeout=10)
    assert resp.status_code == 400 and "prompt must be a string" in resp.json()["error"]["message"]


def test_client_disconnect_aborts_the_request(sim):
    # A long request on a fast profile: read its opening, drop the connection, the engine must let it go.
    sock = socket.create_connection(("127.0.0.1", int(sim.url.rsplit(":", 1)[1])), timeout=5)
    body = json.dumps({"messages": [{"role": "user", "content": "hang on"}], "max_tokens": 4000,
                       "ignore_eos": True, "stream": True}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the first event"
        received += chunk
    assert sim.call(lambda: sim.server.engine.num_requests) == 1
    sock.close()
    deadline = time.monotonic() + 5
    while sim.call(lambda: sim.server.engine.num_requests) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.call(lambda: sim.server.engine.stats()) == {"running": 0, "waiting": 0, "kv_used_tokens": 0,
                                                         "preemptions": 0}


def test_concurrent_streams_all_complete(sim):
    async def run() -> list[int]:
        import aiohttp

        async def one(session, i):
            body = {"messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 10 + i, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            async with session.post(sim.url + "/v1/chat/completions", json=body) as resp:
                usage = None
                async for line in resp.content:
                    if line.startswith(b"data: {") and b'"usage"' in line:
                        usage = json.loads(line[6:])["usage"]["completion_tokens"]
                return usage

        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(one(session, i) for i in range(40)))

    assert asyncio.run(run()) == [10 + i for i in range(40)]


def test_served_model_name_and_speculative_chunks(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(FAST_PROFILE + "tokens_per_decode_step = 2.0\nspec_draft_tokens = 1\n")
    srv = ThreadedServer(path, served_model_name="alias")
    try:
        body = {"model": "alias", "messages": [{"role": "user", "content": "z"}], "max_tokens": 9, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        with requests.post(srv.url + "/v1/chat/completions", json=body, stream=True, timeout=10) as resp:
            events = sse_events(resp)
        tokens = events[1:-2]
        sizes = [DEFAULT_TOKENIZER.count(e["choices"][0]["delta"]["content"]) for e in tokens]
        assert sizes == [1, 2, 2, 2, 2] and events[-2]["usage"]["completion_tokens"] == 9
        assert requests.post(srv.url + "/v1/chat/completions", json={**body, "model": MODEL}, timeout=10).status_code == 404
    finally:
        srv.close()


def test_slowdown_stretches_step_timing(profile_path):
    srv = ThreadedServer(profile_path, slowdown=3.0)
    try:
        assert srv.server.engine.slowdown == 3.0
        srv.call(lambda: srv.server.engine.add_request("probe", 10, 1))
        plan = srv.call(lambda: srv.server.engine.plan_step())
        assert srv.server.engine.step_duration_s(plan) == pytest.approx(3.0 * plan.cost_ms / 1000)
        srv.call(lambda: srv.server.engine.commit_step(plan))
    finally:
        srv.close()


def test_cli_serves_on_port_0_and_exits_cleanly_on_sigterm(profile_path):
    proc = subprocess.Popen([sys.executable, "-m", "pytest_llmperf.sim", "serve", "--port", "0", "--profile",
                             str(profile_path), "--log-level", "warning"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("sim engine ready on http://127.0.0.1:") and "(profile fast" in line
        url = line.split()[4]
        assert requests.get(url + "/health", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cli_unknown_profile_says_what_exists():
    proc = subprocess.run([sys.executable, "-m", "pytest_llmperf.sim", "serve", "--port", "0", "--profile", "nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown sim profile 'nope'" in proc.stderr and "vllm-tp8" in proc.stderr


# ---------------------------------------------------------------- /tokenize
def tokenize(url: str, body) -> requests.Response:
    return requests.post(url + "/tokenize", json=body, timeout=10)


def test_tokenize_counts_in_word_tokens(sim):
    from pytest_llmperf.tokenizer import VOCAB

    resp = tokenize(sim.url, {"model": MODEL, "prompt": "ba  be\nzus nope"})
    assert resp.status_code == 200
    assert resp.json() == {"count": 4, "tokens": [0, 4, 279, len(VOCAB)], "max_model_len": 4096}
    assert tokenize(sim.url, {"prompt": ""}).json() == {"count": 0, "tokens": [], "max_model_len": 4096}
    assert tokenize(sim.url, {"prompt": "a b", "add_special_tokens": False}).json()["count"] == 2


def test_tokenize_agrees_with_the_usage_of_a_completion(sim):
    import random

    prompt = DEFAULT_TOKENIZER.random_text(random.Random(9), 123) + " and, some; punctuation!"
    counted = tokenize(sim.url, {"prompt": prompt}).json()["count"]
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "ignore_eos": True}
    usage = requests.post(sim.url + "/v1/completions", json=body, timeout=10).json()["usage"]
    assert counted == usage["prompt_tokens"] == 126


def test_tokenize_messages_count_like_the_chat_route(sim):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "one two three"}]}]
    assert tokenize(sim.url, {"messages": messages}).json()["count"] == 5
    chat_usage = requests.post(sim.url + "/v1/chat/completions", timeout=10,
                               json={"messages": messages, "max_tokens": 1, "ignore_eos": True}).json()["usage"]
    assert chat_usage["prompt_tokens"] == 5


@pytest.mark.parametrize("body, status, fragment", [
    ({"prompt": "hi", "model": "other/model"}, 404, "The model `other/model` does not exist."),
    ({}, 400, "prompt must be a string, got None"),
    ({"prompt": 5}, 400, "prompt must be a string, got 5"),
    ({"prompt": ["a", "b"]}, 400, "prompt must be a string"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "either prompt or messages, not both"),
    ({"messages": []}, 400, "messages must be a non-empty list"),
    ({"prompt": "a", "add_special_tokens": "no"}, 400, "add_special_tokens must be a boolean, got 'no'"),
    ([1, 2], 400, "request body must be a JSON object, got list"),
])
def test_tokenize_rejects_bad_bodies_with_a_json_error(sim, body, status, fragment):
    resp = tokenize(sim.url, body)
    assert resp.status_code == status
    err = resp.json()["error"]
    assert fragment in err["message"] and err["code"] == status


def test_tokenize_rejects_a_body_that_is_not_json(sim):
    resp = requests.post(sim.url + "/tokenize", data=b"{oops", timeout=10)
    assert resp.status_code == 400 and "request body must be a JSON object" in resp.json()["error"]["message"]


def test_tokenize_route_serves_the_alignment_client(sim):
    from pytest_llmperf.http import ControlClient
    from pytest_llmperf.loadgen.alignment import align_to_server, server_token_counter
    from pytest_llmperf.loadgen.datasets import random_requests

    with ControlClient(sim.url) as client:
        count = server_token_counter(client, MODEL, timeout_s=10)
        assert count is not None and count("x y z") == 3
        reqs = random_requests(4, 40, 2, seed=1)
        assert align_to_server(reqs, count, seed=1) == reqs  # the sim counts as the client does: nothing to change
    assert sim.call(lambda: sim.server.engine.num_requests) == 0  # counting admits nothing into the engine


def test_a_server_can_leave_tokenize_out(profile_path, monkeypatch):
    from pytest_llmperf.http import ControlClient
    from pytest_llmperf.loadgen.alignment import server_token_counter

    monkeypatch.setattr(SimServer, "tokenize_route", False)  # as a subclass imitating such an engine would
    srv = ThreadedServer(profile_path)
    try:
        assert tokenize(srv.url, {"prompt": "a"}).status_code in (404, 405)
        with ControlClient(srv.url) as client:
            assert server_token_counter(client, MODEL, timeout_s=10) is None
    finally:
        srv.close()


# ---------------------------------------------------------------- API key and TLS
KEY = "sk-sim-test-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from tls_certs import make_certs

    return make_certs(tmp_path_factory.mktemp("tls"))


def test_api_keys_guard_v1_routes_only_as_vllm_does():
    from pytest_llmperf.sim.access import ApiKeys

    keys = ApiKeys([KEY, "", "second-key"])
    assert keys and not ApiKeys(None) and not ApiKeys("") and not ApiKeys([])
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
        assert not keys.allows("POST", path, None)
        assert not keys.allows("POST", path, "Bearer wrong")
        assert not keys.allows("POST", path, KEY)  # no scheme
        assert not keys.allows("POST", path, f"Basic {KEY}")
        assert keys.allows("POST", path, f"Bearer {KEY}") and keys.allows("POST", path, f"bearer {KEY}")
        assert keys.allows("POST", path, "Bearer second-key")
        assert keys.allows("OPTIONS", path, None)  # CORS preflights pass, as in vLLM
    for path in ("/health", "/version", "/metrics", "/tokenize"):
        assert keys.allows("GET", path, None)
    assert ApiKeys(None).allows("POST", "/v1/completions", None)
    assert KEY not in repr(keys) and repr(keys) == "ApiKeys(2 keys)"


def test_tls_files_that_do_not_load_are_one_line_errors(tmp_path, certs):
    from pytest_llmperf.sim.access import server_ssl_context

    assert server_ssl_context(str(certs.cert_path), str(certs.key_path)) is not None
    with pytest.raises(ValueError, match=r"nope\.pem does not exist; give PEM files") as missing:
        server_ssl_context(str(tmp_path / "nope.pem"), str(certs.key_path))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot load the TLS certificate .*bad.pem") as unloadable:
        server_ssl_context(str(bad), str(certs.key_path))
    for err in (missing, unloadable):
        assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def secure_sim(profile_path, certs):
    from pytest_llmperf.sim.access import server_ssl_context

    ctx = server_ssl_context(str(certs.cert_path), str(certs.key_path))
    srv = ThreadedServer(profile_path, api_keys=KEY, ssl_context=ctx)
    yield srv
    srv.close()


def https(certs) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(certs.ca_path)
    return session


def test_https_with_the_test_ca_trusted_serves_a_stream(secure_sim, certs):
    assert secure_sim.url.startswith("https://127.0.0.1:")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 5, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with https(certs) as http:
        with http.post(secure_sim.url + "/v1/chat/completions", json=body, stream=True, timeout=10,
                       headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status_code == 200
            events = sse_events(resp)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 5


def test_without_the_ca_the_tls_handshake_fails(secure_sim):
    import ssl

    port = int(secure_sim.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context()  # the system's CAs only
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    plain = requests.Session()
    plain.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        plain.get(secure_sim.url + "/health", timeout=10)


def test_v1_routes_answer_401_without_the_key_and_200_with_it(secure_sim, certs):
    chat_body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "ignore_eos": True}
    with https(certs) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat_body),
                                       ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1})):
                resp = http.request(method, secure_sim.url + path, json=body, headers=headers, timeout=10)
                assert resp.status_code == 401, (path, headers)
                err = resp.json()["error"]
                assert err["code"] == 401 and err["type"] == "AuthenticationError"
                assert "Authorization: Bearer" in err["message"] and KEY not in resp.text
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {KEY}"}
        assert http.get(secure_sim.url + "/v1/models", headers=auth, timeout=10).status_code == 200
        resp = http.post(secure_sim.url + "/v1/chat/completions", json=chat_body, headers=auth, timeout=10)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2
    assert secure_sim.call(lambda: secure_sim.server.engine.num_requests) == 0  # refused requests never queued


def test_open_routes_stay_open_with_a_key(secure_sim, certs):
    with https(certs) as http:
        assert http.get(secure_sim.url + "/health", timeout=10).status_code == 200
        assert http.get(secure_sim.url + "/version", timeout=10).json()["profile"] == "fast"
        assert "llmperf_sim_steps_total" in http.get(secure_sim.url + "/metrics", timeout=10).text
        assert http.post(secure_sim.url + "/tokenize", json={"prompt": "a b"}, timeout=10).json()["count"] == 2


def run_sim_cli(profile_path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest_llmperf.sim", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--profile", str(profile_path), *args],
                            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def ready_line(proc: subprocess.Popen) -> tuple[str, str]:
    """Read its output up to the ready line: (that line, everything read)."""
    seen = ""
    for line in proc.stdout:
        seen += line
        if line.startswith("sim engine ready on "):
            return line, seen
    pytest.fail(f"the sim exited before it was ready:\n{seen}")


def stop_cli(proc: subprocess.Popen) -> str:
    """SIGTERM, then the rest of its output (killed if it does not stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return out or ""


def test_cli_serves_https_with_the_key_from_the_environment_and_never_prints_it(profile_path, certs):
    env = {"LLMPERF_SIM_API_KEY": KEY}
    proc = run_sim_cli(profile_path, "--ssl-certfile", str(certs.cert_path), "--ssl-keyfile", str(certs.key_path),
                       "--log-level", "debug", env=env)
    out = ""
    try:
        line, out = ready_line(proc)
        assert line.startswith("sim engine ready on https://127.0.0.1:") and "API key required" in line, line
        url = line.split()[4]
        with https(certs) as http:
            assert http.get(url + "/v1/models", timeout=10).status_code == 401
            assert http.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 200
            body = {"prompt": "x", "max_tokens": 2, "ignore_eos": True}
            assert http.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                             timeout=10).status_code == 200
    finally:
        out += stop_cli(proc)
    assert proc.returncode == 0, out
    assert "sim engine stopped" in out and KEY not in out


def test_cli_api_key_flag_wins_over_the_environment(profile_path):
    proc = run_sim_cli(profile_path, "--api-key", "from-the-flag", env={"LLMPERF_SIM_API_KEY": KEY})
    try:
        line, _ = ready_line(proc)
        assert line.startswith("sim engine ready on http://127.0.0.1:") and "API key required" in line, line
        url = line.split()[4]
        assert requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 401
        assert requests.get(url + "/v1/models", headers={"Authorization": "Bearer from-the-flag"},
                            timeout=10).status_code == 200
    finally:
        stop_cli(proc)


@pytest.mark.parametrize("args, message", [
    (["--ssl-keyfile", "k.pem"], "--ssl-keyfile needs --ssl-certfile"),
    (["--ssl-certfile", "missing-cert.pem"], "missing-cert.pem does not exist"),
])
def test_cli_tls_flags_that_cannot_serve_exit_2_with_one_line(profile_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "pytest_llmperf.sim", "serve", "--port", "0", "--profile",
                           str(profile_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and not proc.stdout


# ----------------------------------------------------------------- prefix cache routes and /metrics
@pytest.fixture
def fresh_sim(profile_path):
    srv = ThreadedServer(profile_path)
    yield srv
    srv.close()


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` parsed with prometheus_client: sample name -> value (one label set per name here)."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            assert sample.labels == {"model_name": MODEL}, sample
            out[sample.name] = sample.value
    return out


def completion(url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    resp = requests.post(url + "/v1/completions", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


VLLM_NAMES = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "llmperf_sim_scheduled_seconds_total", "llmperf_sim_busy_seconds_total", "llmperf_sim_max_late_seconds",
    "llmperf_sim_steps_total", "llmperf_sim_chunks_sent_total",
}


def test_metrics_are_vllms_names_and_agree_with_the_requests_served(fresh_sim):
    before = scrape(fresh_sim.url)
    assert set(before) == VLLM_NAMES and all(v == 0 for v in before.values())
    prompt = "one two three four five six seven eight"  # 8 word tokens
    for _ in range(3):  # one after the other: the second and third find the prompt cached
        assert completion(fresh_sim.url, prompt, 5)["usage"] == {"prompt_tokens": 8, "completion_tokens": 5,
                                                                 "total_tokens": 13}
    completion(fresh_sim.url, "another prompt entirely", 2)
    m = scrape(fresh_sim.url)
    assert m["vllm:num_requests_running"] == m["vllm:num_requests_waiting"] == 0
    assert m["vllm:kv_cache_usage_perc"] == 0.0 and m["vllm:num_preemptions_total"] == 0
    assert m["vllm:prefix_cache_queries_total"] == 3 * 8 + 3
    assert m["vllm:prefix_cache_hits_total"] == 2 * 7  # the last token of a prompt is always computed
    assert m["vllm:prompt_tokens_total"] == 3 * 8 + 3
    assert m["vllm:generation_tokens_total"] == 3 * 5 + 2
    assert m["vllm:request_success_total"] == 4
    steps = fresh_sim.call(lambda: fresh_sim.server.tally.steps)
    assert m["llmperf_sim_steps_total"] == steps > 0
    assert m["llmperf_sim_scheduled_seconds_total"] > 0 and m["llmperf_sim_max_late_seconds"] >= 0
    # a real clock never commits before a step's scheduled end: busy time is at least the scheduled time
    assert m["llmperf_sim_busy_seconds_total"] >= m["llmperf_sim_scheduled_seconds_total"] - 1e-9


def test_kv_usage_and_queue_gauges_read_the_engine_live(fresh_sim):
    engine = fresh_sim.server.engine
    # Queued without waking the step loop (it waits for an arrival), so the request stays put while we read.
    fresh_sim.call(lambda: engine.add_request("held", 100, 4))
    m = scrape(fresh_sim.url)
    assert (m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]) == (0, 1)
    fresh_sim.call(lambda: engine.commit_step(engine.plan_step()))  # admitted and prefilled: holds 101 KV tokens
    m = scrape(fresh_sim.url)
    assert (m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]) == (1, 0)
    assert m["vllm:kv_cache_usage_perc"] == pytest.approx(101 / 65536)
    fresh_sim.call(lambda: engine.abort_request("held"))


def test_reset_prefix_cache_forgets_the_prompts(fresh_sim):
    prompt = "alpha beta gamma delta epsilon"
    completion(fresh_sim.url, prompt, 2)
    completion(fresh_sim.url, prompt, 2)
    assert scrape(fresh_sim.url)["vllm:prefix_cache_hits_total"] == 4
    resp = requests.post(fresh_sim.url + "/reset_prefix_cache", timeout=10)
    assert resp.status_code == 200
    completion(fresh_sim.url, prompt, 2)
    m = scrape(fresh_sim.url)
    assert m["vllm:prefix_cache_hits_total"] == 4 and m["vllm:prefix_cache_queries_total"] == 15
    assert requests.get(fresh_sim.url + "/reset_prefix_cache", timeout=10).status_code == 405  # POST only


def test_chat_and_completion_keys_differ_and_chat_repeats_hit(fresh_sim):
    with chat(fresh_sim.url, "same words here", max_tokens=2, ignore_eos=True) as resp:
        assert resp.status_code == 200
    completion(fresh_sim.url, "same words here", 2)  # not the chat's key: a template would differ
    assert scrape(fresh_sim.url)["vllm:prefix_cache_hits_total"] == 0
    with chat(fresh_sim.url, "same words here", max_tokens=2, ignore_eos=True) as resp:
        assert resp.status_code == 200
    assert scrape(fresh_sim.url)["vllm:prefix_cache_hits_total"] == 2


def test_flush_cache_refuses_while_requests_are_pending_and_flushes_when_idle(fresh_sim):
    prompt = "flush me if you can"
    completion(fresh_sim.url, prompt, 2)
    engine = fresh_sim.server.engine
    fresh_sim.call(lambda: engine.add_request("pending", 10, 2))  # waiting; the loop is not woken
    resp = requests.post(fresh_sim.url + "/flush_cache", timeout=10)
    assert resp.status_code == 400 and "not flushed" in resp.text and "waiting" in resp.text
    assert fresh_sim.call(lambda: engine.prefix_cache_tokens) == 5  # untouched
    fresh_sim.call(lambda: engine.abort_request("pending"))
    resp = requests.post(fresh_sim.url + "/flush_cache", timeout=10)
    assert resp.status_code == 200 and resp.text == "Cache flushed.\n"
    assert fresh_sim.call(lambda: engine.prefix_cache_tokens) == 0
    completion(fresh_sim.url, prompt, 2)
    assert scrape(fresh_sim.url)["vllm:prefix_cache_hits_total"] == 0


@pytest.fixture
def prefilling_sim(tmp_path):
    path = tmp_path / "prefill.toml"
    path.write_text(FAST_PROFILE.replace("prefill_ms_per_token = 0.0", "prefill_ms_per_token = 0.01"))
    srv = ThreadedServer(path)
    yield srv
    srv.close()


def test_a_repeat_without_a_reset_is_faster_than_one_after_a_reset(prefilling_sim):
    """The engine's own schedule (virtual, so no timing luck): cached prompts prefill in less time."""
    fresh_sim = prefilling_sim
    prompts = [" ".join(f"w{i}x{j}" for j in range(400)) for i in range(5)]  # 400 word tokens each

    def scheduled_s_of_one_pass() -> float:
        before = scrape(fresh_sim.url)["llmperf_sim_scheduled_seconds_total"]
        for prompt in prompts:
            completion(fresh_sim.url, prompt, 2)
        return scrape(fresh_sim.url)["llmperf_sim_scheduled_seconds_total"] - before

    first = scheduled_s_of_one_pass()
    repeat = scheduled_s_of_one_pass()  # every prompt cached
    assert requests.post(fresh_sim.url + "/reset_prefix_cache", timeout=10).status_code == 200
    after_reset = scheduled_s_of_one_pass()
    assert repeat < 0.8 * after_reset
    assert after_reset == pytest.approx(first, rel=1e-9)
    assert scrape(fresh_sim.url)["vllm:prefix_cache_hits_total"] == 5 * 399


def test_the_api_front_delays_requests_and_paces_chunks(tmp_path):
    # 80 ms per request at the front, 30 ms per chunk out: lower bounds a busy machine cannot break
    path = tmp_path / "front.toml"
    path.write_text(FAST_PROFILE + "frontend_ms_per_request = 80.0\nfrontend_us_per_chunk = 30000.0\n")
    srv = ThreadedServer(path)
    try:
        body = {"model": MODEL, "prompt": "one two three", "max_tokens": 4, "stream": True, "ignore_eos": True}
        done: dict[int, tuple[float, list]] = {}

        def one(i: int) -> None:
            t0 = time.monotonic()
            with requests.post(f"{srv.url}/v1/completions", json=body, stream=True, timeout=30) as resp:
                events = sse_events(resp)
            done[i] = (time.monotonic() - t0, events)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        total_s = time.monotonic() - t_start
        texts = ["".join(e["choices"][0]["text"] for e in events if isinstance(e, dict) and e.get("choices"))
                 for _, events in done.values()]
        assert len(done) == 3 and len(set(texts)) == 1  # same prompt, same answer, every token in order
        # three requests through one input worker, then twelve chunks through one output worker
        assert max(s for s, _ in done.values()) >= 0.08
        assert total_s >= 0.08 + 12 * 0.03 - 0.005
        assert srv.call(lambda: srv.server.engine.stats()["running"]) == 0
    finally:
        srv.close()
