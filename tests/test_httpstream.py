"""The streaming HTTP/1.1 reader, fed bytes split every way a network can split them."""

import asyncio

import pytest

from pytest_llmperf.loadgen.httpstream import StreamProtocol, Target, build_post


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.aborted = self.closed = False

    def write(self, data):
        self.written += data

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return default


def exchange(pieces, lost=False):
    """Feed ``pieces`` to a fresh protocol; (response, body bytes, number of body callbacks)."""

    async def main():
        proto = StreamProtocol()
        proto.connection_made(FakeTransport())
        body, heads = [], []
        fut = proto.exchange(b"POST / HTTP/1.1\r\n\r\n", lambda status, now: heads.append(status),
                             lambda data, now: body.append(data))
        for piece in pieces:
            proto.data_received(piece)
        if lost and not fut.done():
            proto.connection_lost(None)
        response = await asyncio.wait_for(fut, 1)
        return response, b"".join(body), heads, proto

    return asyncio.run(main())


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"7\r\ndata: a\r\n" b"a;ext=1\r\ndata: bcd\n\r\n" b"0\r\nX-Trailer: 1\r\n\r\n")


def splits(raw):
    yield [raw]
    for size in (1, 2, 3, 5, 11):
        yield [raw[i:i + size] for i in range(0, len(raw), size)]


def test_chunked_body_survives_any_split():
    for pieces in splits(CHUNKED):
        response, body, heads, _ = exchange(pieces)
        assert (response.status, response.error, response.reusable) == (200, "", True)
        assert body == b"data: adata: bcd\n" and heads == [200]


def test_content_length_body_and_keep_alive():
    raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!"
    for pieces in splits(raw):
        response, body, _, _ = exchange(pieces)
        assert (response.status, response.reason, body, response.reusable) == (404, "Not Found", b"nope!", True)


def test_connection_close_header_and_http10_are_not_reused():
    response, _, _, _ = exchange([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert response.error == "" and not response.reusable
    response, _, _, _ = exchange([b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert not response.reusable


def test_body_until_close_ends_cleanly_when_the_server_closes():
    response, body, _, _ = exchange([b"HTTP/1.1 200 OK\r\n\r\ndata: x\n\n", b"data: y\n\n"], lost=True)
    assert (response.error, body, response.reusable) == ("", b"data: x\n\ndata: y\n\n", False)


def test_interim_100_continue_is_skipped():
    response, body, heads, _ = exchange([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert (response.status, body, heads) == (200, b"ok", [200])


@pytest.mark.parametrize("pieces, error", [
    ([], "closed the connection before sending a response"),
    ([b"HTTP/1.1 200 OK\r\nTransfer"], "in the middle of the response headers"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], "in the middle of the response body"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"], "in the middle of the response body"),
])
def test_a_connection_lost_early_is_an_error_that_says_where(pieces, error):
    response, _, _, _ = exchange(pieces, lost=True)
    assert error in response.error and not response.reusable


@pytest.mark.parametrize("raw, error", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "did not end with CRLF"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
])
def test_malformed_responses_fail_the_exchange_and_drop_the_connection(raw, error):
    response, _, _, proto = exchange([raw])
    assert error in response.error
    assert proto.transport.aborted and not response.reusable


def test_a_failing_body_callback_ends_the_exchange_with_its_error():
    async def main():
        proto = StreamProtocol()
        proto.connection_made(FakeTransport())

        def boom(data, now):
            raise RuntimeError("parser broke")

        fut = proto.exchange(b"x", lambda s, n: None, boom)
        proto.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        return await fut

    assert asyncio.run(main()).error == "RuntimeError: parser broke"


def test_one_clock_reading_per_network_read():
    async def main():
        proto = StreamProtocol()
        proto.connection_made(FakeTransport())
        times = []
        proto.exchange(b"x", lambda s, n: None, lambda data, now: times.append(now))
        proto.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n")
        proto.data_received(b"1\r\nc\r\n0\r\n\r\n")
        return times

    times = asyncio.run(main())
    assert len(times) == 3 and times[0] == times[1] < times[2]


def test_target_and_request_bytes():
    t = Target.from_url("http://127.0.0.1:8000/v1/chat/completions?x=1")
    assert (t.scheme, t.host, t.port, t.path, t.host_header) == ("http", "127.0.0.1", 8000, "/v1/chat/completions?x=1",
                                                                 "127.0.0.1:8000")
    assert Target.from_url("https://example.invalid/v1").port == 443
    assert Target.from_url("http://[::1]:80/").host_header == "[::1]"
    with pytest.raises(ValueError, match="http:// or https://"):
        Target.from_url("ftp://x/")
    raw = build_post(t, b'{"a":1}', "ua/1", {"Authorization": "Bearer k"})
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Content-Length: 7" in head and b"Authorization: Bearer k" in head and body == b'{"a":1}'
    with pytest.raises(ValueError, match="line breaks"):
        build_post(t, b"", "ua", {"X": "a\r\nInjected: 1"})
