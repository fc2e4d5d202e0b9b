"""Prompt lengths aligned to the server's token counts, and the check after a run."""

import pytest

from pytest_llmperf.http import ControlClient
from pytest_llmperf.loadgen.alignment import (TokenizeError, align_through_server, align_to_server,
                                               prompt_length_mismatch, server_token_counter)
from pytest_llmperf.loadgen.datasets import SampleRequest, random_requests


def chars_as_tokens(text):
    """A server tokenizer unlike the word one: one token per 3 characters."""
    return -(-len(text) // 3)


def test_prompts_reach_the_server_count_exactly():
    calls = []

    def count(text):
        calls.append(text)
        return chars_as_tokens(text)

    reqs = random_requests(20, 300, 5, seed=42)
    aligned = align_to_server(reqs, count, seed=42)
    assert [chars_as_tokens(r.prompt) for r in aligned] == [300] * 20
    assert [r.prompt_len for r in aligned] == [300] * 20 and [r.expected_output_len for r in aligned] == [5] * 20
    assert len(calls) < 20 * 12  # strides, not a call per word
    assert align_to_server(reqs, chars_as_tokens, seed=42) == aligned  # deterministic


def test_prompts_already_right_are_left_alone():
    reqs = random_requests(3, 50, 5, seed=1)
    assert align_to_server(reqs, lambda text: len(text.split())) == reqs


def test_an_unreachable_count_keeps_the_closest_prompt():
    even_only = lambda text: 2 * len(text.split())  # odd targets cannot be hit
    (req,) = align_to_server([SampleRequest("a b c", 7, 1)], even_only)
    assert even_only(req.prompt) in (6, 8) and req.prompt_len == 7


def test_prompt_length_mismatch():
    assert prompt_length_mismatch([100, 200, 50], [101, 200, None]) == (pytest.approx(0.5), 2)
    assert prompt_length_mismatch([100], [None]) == (0.0, 0)
    assert prompt_length_mismatch([], []) == (0.0, 0)


@pytest.fixture
def tokenize_server():
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"status": 200, "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["bodies"].append(body)
            status = state["status"]
            reply = {"count": len(body["prompt"].split()), "tokens": []} if status == 200 else {"error": "nope"}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_server_counter_reads_the_count(tokenize_server):
    url, state = tokenize_server
    with ControlClient(url) as client:
        count = server_token_counter(client, "m", timeout_s=5)
        assert count is not None and count("a b c") == 3
    assert state["bodies"][-1] == {"model": "m", "prompt": "a b c", "add_special_tokens": False}


@pytest.mark.parametrize("status", [404, 405, 422])
def test_a_server_without_a_usable_route_gives_none(tokenize_server, status):
    url, state = tokenize_server
    state["status"] = status
    with ControlClient(url) as client:
        assert server_token_counter(client, "m", timeout_s=5) is None


def test_other_answers_raise_with_the_status(tokenize_server):
    url, state = tokenize_server
    state["status"] = 500
    with ControlClient(url) as client, pytest.raises(TokenizeError, match="answered HTTP 500"):
        server_token_counter(client, "m", timeout_s=5)


@pytest.mark.parametrize("status", [500, 503])
def test_a_failing_tokenize_leaves_the_prompts_unaligned_and_says_why(tokenize_server, status):
    url, state = tokenize_server
    state["status"] = status
    reqs = random_requests(3, 20, 2, seed=1)
    with ControlClient(url) as client:
        got, how = align_through_server(reqs, client, "m", seed=1, timeout_s=5)
    assert got == reqs
    assert how.startswith(f"word tokenizer (the server's /tokenize failed: {url}/tokenize answered HTTP {status}")


def test_alignment_through_a_working_route(tokenize_server):
    url, _ = tokenize_server
    reqs = random_requests(3, 20, 2, seed=1)
    with ControlClient(url) as client:
        got, how = align_through_server(reqs, client, "m", seed=1, timeout_s=5)
    assert how == "server /tokenize" and [len(r.prompt.split()) for r in got] == [20] * 3
