"""The load runner: schedules, warm-up, connection reuse, progress and client processes."""

import math

import pytest

from pytest_llmperf.loadgen.arrivals import send_offsets_s
from pytest_llmperf.loadgen.datasets import SampleRequest
from pytest_llmperf.loadgen.health import read_counts
from pytest_llmperf.loadgen.run import LoadSpec, Progress, _limit_share, run_load
from streamserver import DONE, Sleep, StreamServer, chat_chunk, usage_chunk


def reply(body):
    n = body["max_completion_tokens"]
    return [chat_chunk(role="assistant", content="")] + [chat_chunk(content=f" t{i}") for i in range(n)] \
        + [usage_chunk(len(body["messages"][0]["content"].split()), n), DONE]


def requests(n, out=2, tag="r"):
    return [SampleRequest(f"{tag}{i} x", 2, out) for i in range(n)]


def test_a_finite_rate_follows_the_absolute_schedule():
    with StreamServer(reply) as server:
        spec = LoadSpec(base_url=server.base_url, model="m", requests=requests(6), request_rate=20.0, seed=3)
        result = run_load(spec)
    offsets = send_offsets_s(6, 20.0, 1.0, seed=3)
    origin = result.records[0].scheduled_s
    assert [r.scheduled_s - origin for r in result.records] == pytest.approx(offsets)
    assert all(r.success and r.start_s >= r.scheduled_s for r in result.records)
    assert result.duration_s >= offsets[-1]  # the run lasts at least until the last request is due


def test_infinite_rate_schedules_everything_at_the_start():
    with StreamServer(reply) as server:
        result = run_load(LoadSpec(base_url=server.base_url, model="m", requests=requests(4)))
    assert len({r.scheduled_s for r in result.records}) == 1


def test_warm_up_requests_go_first_and_stay_out_of_the_records():
    with StreamServer(reply) as server:
        spec = LoadSpec(base_url=server.base_url, model="m", requests=requests(3), warmup_requests=requests(2, tag="w"))
        result = run_load(spec)
    prompts = [b["messages"][0]["content"] for b in server.bodies]
    assert sorted(prompts[:2]) == ["w0 x", "w1 x"] and sorted(prompts[2:]) == ["r0 x", "r1 x", "r2 x"]
    assert len(result.records) == 3 and len(result.warmup_records) == 2
    assert min(r.start_s for r in result.records) > max(r.start_s for r in result.warmup_records)


def test_connections_are_kept_alive_and_reused():
    with StreamServer(reply) as server:
        result = run_load(LoadSpec(base_url=server.base_url, model="m", requests=requests(5), max_concurrency=1))
    assert all(r.success for r in result.records)
    assert len(set(server.peers)) == 1  # one connection carried all five requests, one after another


def test_progress_reports_counts_while_the_load_runs():
    seen = []
    script = lambda body: [chat_chunk(content="a"), Sleep(1.3), chat_chunk(content=" b"), usage_chunk(1, 2), DONE]
    with StreamServer(script) as server:
        run_load(LoadSpec(base_url=server.base_url, model="m", requests=requests(3)), progress=seen.append)
    assert seen and all(isinstance(p, Progress) and p.total == 3 for p in seen)
    assert seen[0].done == 0 and seen[0].output_tokens == 3  # first chunks of the three streams in flight
    assert [p.elapsed_s for p in seen] == sorted(p.elapsed_s for p in seen)


@pytest.mark.parametrize("limit, workers, shares", [(None, 3, [None] * 3), (7, 3, [3, 2, 2]), (2, 2, [1, 1])])
def test_a_concurrency_limit_is_shared_out_between_client_processes(limit, workers, shares):
    assert [_limit_share(limit, w, workers) for w in range(workers)] == shares


def test_client_processes_share_the_clock_and_merge_in_order():
    reqs = [SampleRequest(f"r{i} x", 2, i + 1) for i in range(7)]  # request i asks for i + 1 tokens
    with StreamServer(reply) as server:
        spec = LoadSpec(base_url=server.base_url, model="m", requests=reqs, client_processes=2)
        result = run_load(spec)
    assert [r.success for r in result.records] == [True] * 7
    assert [r.output_tokens for r in result.records] == [1, 2, 3, 4, 5, 6, 7]  # back in the spec's order
    assert sorted(b["messages"][0]["content"] for b in server.bodies) == sorted(f"r{i} x" for i in range(7))
    assert len({r.scheduled_s for r in result.records}) == 1  # one start instant for both processes
    assert result.duration_s >= max(r.start_s + r.latency_s for r in result.records) - result.records[0].scheduled_s
    health = result.client_health  # each process measured its own; the result combines them
    assert health.processes == 2 and health.output_reads == read_counts(result.records)[0]
    assert health.cpu_s > 0 and health.cpu_pct_max_process <= health.cpu_pct


@pytest.mark.parametrize("kwargs, message", [
    ({"request_rate": 0.0}, "request_rate"), ({"burstiness": -1.0}, "burstiness"),
    ({"client_processes": 0}, "client_processes"), ({"max_concurrency": 0}, "max_concurrency"),
])
def test_bad_load_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoadSpec(base_url="http://127.0.0.1:1", model="m", requests=requests(1), **kwargs)
    assert math.isinf(LoadSpec(base_url="http://127.0.0.1:1", model="m", requests=requests(1)).request_rate)


def test_a_kept_alive_connection_the_server_dropped_is_retried_once_on_a_new_one():
    """The server answers one request per connection and drops the next one unanswered."""
    import socket
    import threading

    body = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}\n\ndata: [DONE]\n\n')
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    connections = []

    def read_request(conn):
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return False
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        while len(rest) < length:
            rest += conn.recv(65536)
        return True

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            if read_request(conn):
                conn.sendall(reply)
                read_request(conn)  # the second request on this connection: dropped unanswered
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        spec = LoadSpec(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", model="m", requests=requests(3),
                        max_concurrency=1)
        result = run_load(spec)
    finally:
        listener.close()
    assert [r.success for r in result.records] == [True] * 3, [r.error for r in result.records]
    assert len(connections) == 3  # each reuse failed once and was retried on a fresh connection
