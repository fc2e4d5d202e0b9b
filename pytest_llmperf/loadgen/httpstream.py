"""HTTP/1.1 response streaming on an asyncio Protocol: the load generator's hot path.

Why not aiohttp here: its streaming reader wakes a task for every network
read, which costs the client about three times the CPU per SSE chunk that the
measurement budget allows and delays the timestamps of every stream when a
thousand of them share one core (see ``benchmarks/client_overhead.py``).
This module does the one narrow job the measurement needs and nothing more:
send one POST, stamp the clock once per network read, and hand each piece of
the response body to a callback from inside ``data_received``, with no task
switch in between. Everything else HTTP stays elsewhere: the simulated server on aiohttp,
control-plane calls on ``pytest_llmperf.http``.

Supported: ``http`` and ``https``; bodies framed by ``Content-Length``,
``Transfer-Encoding: chunked`` or connection close; keep-alive reuse of
idle connections, one request at a time on each. Headers and the TLS context
come from the caller (``http.HttpOptions``), as for every other request.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
CLOCK = time.perf_counter


class HttpStreamError(Exception):
    """The response could not be read: the message says what was wrong."""


@dataclass(frozen=True)
class Target:
    """Where requests go: scheme, host, port and path, parsed once."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def from_url(cls, url: str) -> "Target":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"the URL {url!r} has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def build_post(target: Target, body: bytes, user_agent: str, extra_headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one POST request with a JSON body."""
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"User-Agent: {user_agent}",
        "Accept: text/event-stream, application/json",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    for name, value in (extra_headers or {}).items():
        if "\n" in name + value or "\r" in name + value:
            raise ValueError(f"header {name!r} must not contain line breaks")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    """What one exchange produced (the body went to the callback)."""

    status: int = 0
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # transport or framing problem; "" when the response was read in full
    reusable: bool = False  # the connection may carry another request


OnBody = Callable[[bytes, float], None]
OnHead = Callable[[int, float], None]

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)


class StreamProtocol(asyncio.Protocol):
    """One connection. ``exchange`` sends a request and feeds its body to ``on_body``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._future: asyncio.Future[Response] | None = None
        self._response = Response()
        self._on_body: OnBody | None = None
        self._on_head: OnHead | None = None
        self._state = _DONE
        self._buffer = b""
        self._remaining = 0
        self._bytes_seen = 0
        self._head_request = False

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._future is None or self._future.done():
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            self._finish(reusable=False)
            return
        if self._state == _HEAD:
            what = "before sending a response" if not self._bytes_seen else "in the middle of the response headers"
        else:
            what = "in the middle of the response body"
        detail = f": {type(exc).__name__}: {exc}" if exc else ""
        self._fail(f"the server closed the connection {what}{detail}")

    def data_received(self, data: bytes) -> None:
        now = CLOCK()
        self._bytes_seen += len(data)
        if self._future is None or self._future.done():
            return  # bytes after a finished exchange: the connection will not be reused
        try:
            self._feed(data, now)
        except HttpStreamError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a callback failed: end the exchange, never lose the request
            self._fail(f"{type(exc).__name__}: {exc}")

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost ends the exchange

    # -- driving one exchange
    def exchange(self, request: bytes, on_head: OnHead, on_body: OnBody) -> "asyncio.Future[Response]":
        """Send ``request``; the future resolves once the response ended (never raises)."""
        loop = asyncio.get_running_loop()
        self._future = loop.create_future()
        self._response = Response()
        if self.transport is None or self.closed:  # closed between connecting and sending
            self._response.error = "the server closed the connection before the request was sent"
            self._future.set_result(self._response)
            return self._future
        self._on_head, self._on_body = on_head, on_body
        self._state = _HEAD
        self._buffer = b""
        self._bytes_seen = 0
        self.transport.write(request)
        return self._future

    def abort(self, reason: str) -> None:
        """End the exchange with ``reason`` and drop the connection."""
        self._fail(reason)

    @property
    def bytes_seen(self) -> int:
        return self._bytes_seen

    def _fail(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
            self.closed = True
        if self._future is not None and not self._future.done():
            self._response.error = reason
            self._response.reusable = False
            self._future.set_result(self._response)

    def _finish(self, reusable: bool) -> None:
        self._state = _DONE
        self._response.reusable = reusable and not self.closed
        if self._future is not None and not self._future.done():
            self._future.set_result(self._response)

    # -- the parser
    def _feed(self, data: bytes, now: float) -> None:
        if self._state == _HEAD:
            data = self._buffer + data if self._buffer else data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    raise HttpStreamError(f"response headers longer than {MAX_HEAD_BYTES} bytes")
                self._buffer = data
                return
            self._buffer = b""
            self._parse_head(data[:end].decode("latin-1"))
            data = data[end + 4:]
            if self._response.status < 200:  # 1xx interim response: the real head follows
                self._state = _HEAD
                if data:
                    self._feed(data, now)
                return
            assert self._on_head is not None
            self._on_head(self._response.status, now)
            if self._state == _DONE:
                self._finish(reusable=self._keep_alive())
                return
        on_body = self._on_body
        assert on_body is not None
        state = self._state
        if state == _LENGTH:
            if len(data) >= self._remaining:
                piece, self._remaining = data[: self._remaining], 0
                if piece:
                    on_body(piece, now)
                self._finish(reusable=self._keep_alive() and len(data) == len(piece))
                return
            self._remaining -= len(data)
            on_body(data, now)
            return
        if state == _UNTIL_CLOSE:
            on_body(data, now)
            return
        self._feed_chunked(data, now, on_body)

    def _feed_chunked(self, data: bytes, now: float, on_body: OnBody) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos, size = 0, len(buffer)
        state = self._state
        while pos < size:
            if state == _CHUNK_DATA:
                take = min(self._remaining, size - pos)
                on_body(buffer[pos:pos + take], now)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _CHUNK_CRLF
                continue
            if state == _CHUNK_CRLF:
                if size - pos < 2:
                    break
                if buffer[pos:pos + 2] != b"\r\n":
                    raise HttpStreamError("malformed chunked body: a chunk did not end with CRLF")
                pos += 2
                state = _CHUNK_SIZE
                continue
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                if size - pos > 1024:
                    raise HttpStreamError("malformed chunked body: a chunk-size line is too long")
                break
            line = buffer[pos:line_end]
            pos = line_end + 2
            if state == _CHUNK_SIZE:
                try:
                    self._remaining = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpStreamError(f"malformed chunked body: bad chunk size {line[:40]!r}") from None
                state = _TRAILERS if self._remaining == 0 else _CHUNK_DATA
            elif state == _TRAILERS:
                if not line:
                    self._state = _DONE
                    self._finish(reusable=self._keep_alive() and pos == size)
                    return
        self._state = state
        self._buffer = buffer[pos:]

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            raise HttpStreamError(f"not an HTTP response: {lines[0][:80]!r}")
        try:
            self._response.status = int(status_line[1])
        except ValueError:
            raise HttpStreamError(f"bad status line: {lines[0][:80]!r}") from None
        self._response.reason = status_line[2] if len(status_line) > 2 else ""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._response.headers = headers
        self._http10 = status_line[0] == "HTTP/1.0"
        status = self._response.status
        if status < 200:
            return
        if status in (204, 304):
            self._state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise HttpStreamError(f"bad Content-Length {headers['content-length']!r}") from None
            self._state = _LENGTH if self._remaining > 0 else _DONE
        else:
            self._state = _UNTIL_CLOSE

    def _keep_alive(self) -> bool:
        connection = self._response.headers.get("connection", "").lower()
        if getattr(self, "_http10", False):
            return "keep-alive" in connection
        return "close" not in connection


class ConnectionPool:
    """Idle keep-alive connections to one target, reused most-recent first."""

    def __init__(self, target: Target, ssl_context: _ssl.SSLContext | None = None,
                 connect_timeout_s: float = 60.0) -> None:
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[StreamProtocol] = []
        self._ssl: _ssl.SSLContext | None = None
        if target.scheme == "https":  # the caller's context (HttpOptions), else the system trust store
            self._ssl = ssl_context or _ssl.create_default_context()

    async def connect(self) -> StreamProtocol:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                StreamProtocol, self.target.host, self.target.port, ssl=self._ssl,
                server_hostname=self.target.host if self._ssl else None,
            ),
            self.connect_timeout_s,
        )
        return protocol

    def take_idle(self) -> StreamProtocol | None:
        while self._idle:
            protocol = self._idle.pop()
            if not protocol.closed:
                return protocol
        return None

    def give_back(self, protocol: StreamProtocol) -> None:
        if not protocol.closed:
            self._idle.append(protocol)

    def close(self) -> None:
        for protocol in self._idle:
            if protocol.transport is not None and not protocol.closed:
                protocol.transport.close()
        self._idle.clear()
