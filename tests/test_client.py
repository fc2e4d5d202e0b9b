"""The streaming client against a scripted SSE server, and its pure parts without one."""

import socket
import subprocess
import sys

import pytest

from pytest_llmperf.loadgen.client import SSEDecoder, StreamAccumulator, build_body, classify_chunk


def chunk_carries_output(chunk, chat):
    return classify_chunk(chunk, chat).output
from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.run import LoadSpec, run_load
from streamserver import CLOSE, DONE, Reply, Sleep, StreamServer, chat_chunk, completion_chunk, sse, usage_chunk

REQ = SampleRequest("alpha beta gamma", 3, 5)


def spec(server, requests=(REQ,), **kw):
    return LoadSpec(base_url=server.base_url, model="m", requests=list(requests), **kw)


def one(script, **kw):
    with StreamServer(lambda body: script) as server:
        result = run_load(spec(server, **kw))
    assert len(result.records) == 1
    return result.records[0], server.bodies[0], result


# ---------------------------------------------------------------- pure parts
def test_sse_decoder_handles_any_split_and_line_endings():
    stream = (b": keep-alive comment\n\ndata: {\"a\": 1}\r\n\r\n"
              b"event: error\ndata: {\"b\":\ndata: 2}\n\ndata:[DONE]\n\n")
    expected = [("", '{"a": 1}'), ("error", '{"b":\n2}'), ("", "[DONE]")]
    for size in (1, 2, 7, len(stream)):
        dec = SSEDecoder()
        got = [ev for i in range(0, len(stream), size) for ev in dec.feed(stream[i:i + size])]
        assert got + list(dec.finish()) == expected, size


def test_sse_decoder_flushes_an_unterminated_last_event():
    dec = SSEDecoder()
    assert list(dec.feed(b"data: x\n\ndata: y")) == [("", "x")]
    assert list(dec.finish()) == [("", "y")]


@pytest.mark.parametrize(
    "delta, carries",
    [
        ({"role": "assistant", "content": ""}, False),  # the opening role chunk
        ({"role": "assistant"}, False),
        ({}, False),
        ({"content": None}, False),
        ({"content": "hi"}, True),
        ({"role": "assistant", "content": "hi"}, True),
        ({"content": ""}, True),  # empty content without a role still counts
        ({"reasoning_content": "hmm"}, True),
        ({"reasoning": "hmm"}, True),
        ({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}, True),
        ({"tool_calls": []}, False),
        ({"function_call": {"name": "f"}}, True),
    ],
)
def test_chat_output_chunk_rules(delta, carries):
    assert chunk_carries_output({"choices": [{"delta": delta}]}, chat=True) is carries


def test_completions_output_chunk_rules():
    assert chunk_carries_output({"choices": [{"text": ""}]}, chat=False)
    assert not chunk_carries_output({"choices": [], "usage": {"completion_tokens": 3}}, chat=False)
    assert not chunk_carries_output({"usage": {}}, chat=False)


def test_accumulator_times_each_event_separately():
    acc = StreamAccumulator(REQ, start_s=10.0, chat=True)
    for t, data in [(10.5, '{"choices":[{"delta":{"role":"assistant","content":""}}]}'),
                    (11.0, '{"choices":[{"delta":{"content":"a"}}]}'),
                    (11.25, '{"choices":[{"delta":{"content":" b c"}}]}'),
                    (11.75, '{"choices":[{"delta":{"content":" d"}}]}'),
                    (12.0, '{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6}}'),
                    (12.5, "[DONE]")]:
        acc.on_event("", data, t)
    rec = acc.record()
    assert rec.success and rec.ttft_s == 1.0 and list(rec.itl_s) == [0.25, 0.5] and rec.latency_s == 1.75
    assert rec.output_tokens == 6 and rec.input_tokens == 4 and rec.prompt_len == 3


def test_body_fields():
    chat = build_body("/v1/chat/completions", "m", REQ, ignore_eos=True, extra_body={"temperature": 0})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "alpha beta gamma"}],
                    "max_completion_tokens": 5, "stream": True, "stream_options": {"include_usage": True},
                    "ignore_eos": True, "temperature": 0}
    comp = build_body("/v1/completions", "m", REQ)
    assert comp == {"model": "m", "prompt": "alpha beta gamma", "max_tokens": 5, "stream": True,
                    "stream_options": {"include_usage": True}}


def test_load_spec_validation():
    with pytest.raises(ValueError, match="at least one request"):
        LoadSpec(base_url="http://x", model="m", requests=[])
    with pytest.raises(ValueError, match="max_concurrency must be an integer >= 1 or None, got 0"):
        LoadSpec(base_url="http://x", model="m", requests=[REQ], max_concurrency=0)
    with pytest.raises(ValueError, match="base_url must start with http"):
        LoadSpec(base_url="localhost:8000", model="m", requests=[REQ])


def test_importing_the_loadgen_pulls_no_aiohttp():
    code = ("import sys, pytest_llmperf.loadgen.run, pytest_llmperf.metrics, pytest_llmperf.loadgen.datasets;"
            "print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- against the server
def test_chat_stream_with_reasoning_usage_and_split_events():
    content = chat_chunk(content=" world")
    script = [
        chat_chunk(role="assistant", content=""),
        chat_chunk(reasoning_content="think"),
        chat_chunk(content="Hello") + content[:11],  # two events in one write, the second cut mid-way
        Sleep(0.05),
        content[11:] + chat_chunk(content="!") + chat_chunk(),  # an empty final delta carries nothing
        usage_chunk(prompt_tokens=4, completion_tokens=7),
        DONE,
    ]
    rec, body, result = one(script, ignore_eos=True)
    assert rec.success, rec.error
    assert rec.output_tokens == 7 and rec.input_tokens == 4  # usage wins over counting
    assert len(rec.itl_s) == 4 - 1  # reasoning, Hello, world, !
    assert rec.itl_s[1] >= 0.045  # the scheduled 50 ms gap
    assert rec.latency_s == pytest.approx(rec.ttft_s + sum(rec.itl_s))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 5 and body["ignore_eos"] is True
    assert result.duration_s >= rec.latency_s


def test_without_usage_output_tokens_are_counted():
    rec, _, _ = one([chat_chunk(role="assistant"), chat_chunk(content="one two"), chat_chunk(content=" three"), DONE])
    assert rec.success and rec.output_tokens == 3 and rec.input_tokens is None


def test_completions_endpoint():
    script = [completion_chunk("a"), completion_chunk(""), completion_chunk(" b"),
              sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}), DONE]
    rec, body, _ = one(script, endpoint="/v1/completions")
    assert rec.success and rec.output_tokens == 2 and len(rec.itl_s) == 2  # the empty-text chunk counts too
    assert body["prompt"] == "alpha beta gamma" and body["max_tokens"] == 5 and "messages" not in body


def test_ttft_includes_the_server_delay():
    rec, _, _ = one([chat_chunk(role="assistant"), Sleep(0.05), chat_chunk(content="x"), DONE])
    assert rec.success and rec.ttft_s >= 0.045 and len(rec.itl_s) == 0


@pytest.mark.parametrize(
    "script, kind, detail",
    [
        ([Reply(503, "engine overloaded, retry later")], "HTTP 503 Service Unavailable", "engine overloaded, retry later"),
        ([Reply(400, "")], "HTTP 400 Bad Request", "(empty body)"),
        ([chat_chunk(content="a"), sse({"error": {"message": "out of memory", "code": 500}})],
         "server error in stream", "out of memory; after 1 output chunks"),
        ([b'event: error\ndata: {"message": "bad"}\n\n'], "server error in stream", "bad"),
        ([sse({"object": "error", "message": "too long"})], "server error in stream", "too long"),
        ([chat_chunk(role="assistant", content=""), usage_chunk(3, 0), DONE],
         "stream ended without an output-carrying chunk (got [DONE])", ""),
        ([], "stream ended without an output-carrying chunk", ""),
        ([chat_chunk(content="a"), CLOSE], "transport error", "the server closed the connection in the middle of"),
        ([b"data: {not json\n\n"], "unparseable stream event", "'{not json'"),
        ([sse([1, 2])], "unexpected stream event, expected a JSON object", "[1, 2]"),
    ],
)
def test_failures_carry_their_kind_and_what_the_request_saw(script, kind, detail):
    rec, _, _ = one(script)
    assert not rec.success
    assert rec.error == kind
    assert rec.error_detail.startswith(detail), rec.error_detail


def test_failures_of_one_kind_group_into_one_reason_whatever_each_stream_said():
    from pytest_llmperf.metrics import failure_reasons

    def script(body):
        prompt = body["messages"][0]["content"]
        return [chat_chunk(content="a"), f"data: {{broken {prompt}\n\n".encode()]

    requests = [SampleRequest(f"prompt-{i}", 1, 2) for i in range(5)]
    with StreamServer(script) as server:
        result = run_load(spec(server, requests=requests))
    assert {r.error for r in result.records} == {"unparseable stream event"}
    assert len({r.error_detail for r in result.records}) == 5  # each stream's own text stays with its record
    (line,) = failure_reasons(result.records)
    assert line.startswith("unparseable stream event (x5; first: ")


def test_timeout_is_a_recorded_failure():
    rec, _, _ = one([chat_chunk(content="a"), Sleep(5), DONE], request_timeout_s=0.3)
    assert not rec.success and rec.error == "timed out after 0.3 s"


def test_connection_refused_is_a_recorded_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_load(LoadSpec(base_url=f"http://127.0.0.1:{port}", model="m", requests=[REQ, REQ]))
    assert [r.success for r in result.records] == [False, False]
    assert all(r.error == f"transport error: cannot connect to 127.0.0.1:{port}" for r in result.records)
    assert all("ConnectionRefusedError" in r.error_detail for r in result.records)


def test_every_request_recorded_in_order_with_mixed_outcomes():
    def script(body):
        prompt = body["messages"][0]["content"]
        if prompt.startswith("fail"):
            return [Reply(500, "boom")]
        return [chat_chunk(content=prompt), Sleep(0.01), chat_chunk(content=" z"), usage_chunk(1, 2), DONE]

    requests = [SampleRequest(f"{'fail' if i % 3 == 0 else 'ok'}{i}", 1, 2) for i in range(12)]
    with StreamServer(script) as server:
        result = run_load(spec(server, requests=requests))
    assert [r.success for r in result.records] == [i % 3 != 0 for i in range(12)]
    assert all(r.error == "HTTP 500 Internal Server Error" for r in result.records if not r.success)
    assert all(r.output_tokens == 2 and len(r.itl_s) == 1 for r in result.records if r.success)


@pytest.mark.parametrize("limit, expected_max", [(2, 2), (None, 6)])
def test_max_concurrency_limits_requests_in_flight(limit, expected_max):
    # the pause is long enough that every unlimited request is in flight at once even on a loaded machine
    script = [chat_chunk(content="a"), Sleep(0.5), chat_chunk(content=" b"), DONE]
    with StreamServer(lambda body: script) as server:
        result = run_load(spec(server, requests=[REQ] * 6, max_concurrency=limit))
    assert all(r.success for r in result.records)
    assert server.max_in_flight == expected_max
    if limit == 2:  # three waves of two: starts are taken after the limiter lets a request through
        starts = sorted(r.start_s for r in result.records)
        assert starts[2] - starts[0] >= 0.45 and starts[4] - starts[2] >= 0.45


def test_a_stop_signal_during_the_load_surfaces_as_keyboard_interrupt_and_handlers_come_back():
    import os
    import signal
    import threading
    import time

    def handler(signum, frame):  # what the plugin installs; must be back after the load
        raise AssertionError("the load's own handler should have taken this signal")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        script = [chat_chunk(content="a"), Sleep(30), DONE]
        with StreamServer(lambda body: script) as server:
            def send_when_in_flight():
                deadline = time.monotonic() + 20
                while server.max_in_flight < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=send_when_in_flight, daemon=True).start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt, match="during the load"):
                run_load(spec(server, requests=[REQ] * 3))
            assert time.monotonic() - t0 < 25  # cancelled, not waited out
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


CHUNK_SEQUENCES = {
    "vllm-reasoning": [
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        *[{"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
           "choices": [{"index": 0, "delta": {"reasoning": t}, "finish_reason": None}]} for t in ["Let", " me", " think"]],
        *[{"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
           "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
          for t in ["He", 'said "hi"', "line\nbreak", "caf\u00e9", "", " ok"]],
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]},
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 12}},
    ],
    "sglang": [
        {"choices": [{"index": 0, "delta": {"reasoning_content": None, "role": "assistant", "content": ""}}], "usage": None},
        *[{"choices": [{"index": 0, "delta": {"reasoning_content": None, "content": t}}], "usage": None}
          for t in ["a", "b", "", "c"]],
        {"choices": [{"index": 0, "delta": {"reasoning_content": None}, "finish_reason": "stop"}], "usage": None},
    ],
    "trtllm": [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        *[{"choices": [{"index": 0, "delta": {"content": "", "reasoning_content": t}}]} for t in ["x", "y"]],
        *[{"choices": [{"index": 0, "delta": {"content": t, "reasoning_content": ""}}]} for t in ["p", "q"]],
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "r", "reasoning_content": ""}}]},
        {"error": {"message": "later failure"}},
    ],
}


@pytest.mark.parametrize("name", sorted(CHUNK_SEQUENCES))
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_the_fast_path_decides_exactly_like_the_full_parse(name, separators):
    import json as _json

    payloads = [_json.dumps(c, separators=separators).encode() for c in CHUNK_SEQUENCES[name]]
    fast = StreamAccumulator(REQ, start_s=0.0, chat=True)
    slow = StreamAccumulator(REQ, start_s=0.0, chat=True)
    for i, p in enumerate(payloads):
        fast.on_payload(p, float(i))
        slow.on_event("", p.decode(), float(i))
    assert list(fast.chunk_times_s) == list(slow.chunk_times_s)
    assert fast.record() == slow.record()
    assert "".join(fast._text) == "".join(slow._text)
    if separators == (",", ":") and name != "trtllm":
        assert fast._memo is not None  # the compact layout is learned


def test_completions_fast_path_counts_every_chunk_with_choices():
    import json as _json

    chunks = [{"id": "x", "choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ["a", " b", "", " c"]]
    chunks.append({"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3}})
    fast = StreamAccumulator(REQ, start_s=0.0, chat=False)
    for i, c in enumerate(chunks):
        fast.on_payload(_json.dumps(c, separators=(",", ":")).encode(), float(i + 1))
    rec = fast.record()
    assert list(fast.chunk_times_s) == [1.0, 2.0, 3.0, 4.0] and rec.output_tokens == 3
