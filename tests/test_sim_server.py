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
        self.url = f"http://127.0.0.1:{port}"

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
    from pytest_llmperf.loadgen.alignment import align_to_server, server_token_counter
    from pytest_llmperf.loadgen.datasets import random_requests

    count = server_token_counter(sim.url, MODEL, timeout_s=10)
    assert count is not None and count("x y z") == 3
    reqs = random_requests(4, 40, 2, seed=1)
    assert align_to_server(reqs, count, seed=1) == reqs  # the sim counts as the client does: nothing to change
    assert sim.call(lambda: sim.server.engine.num_requests) == 0  # counting admits nothing into the engine


def test_a_server_can_leave_tokenize_out(profile_path, monkeypatch):
    from pytest_llmperf.loadgen.alignment import server_token_counter

    monkeypatch.setattr(SimServer, "tokenize_route", False)  # as a subclass imitating such an engine would
    srv = ThreadedServer(profile_path)
    try:
        assert tokenize(srv.url, {"prompt": "a"}).status_code in (404, 405)
        assert server_token_counter(srv.url, MODEL, timeout_s=10) is None
    finally:
        srv.close()
