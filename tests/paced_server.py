"""A streaming server that emits tokens on a known schedule and logs when it really sent them.

Run as a process: ``python tests/paced_server.py --port-file F [--ttft-ms 50 --gap-ms 20 ...]``.
It answers OpenAI-style streaming POSTs (``/v1/chat/completions``,
``/v1/completions``) on keep-alive HTTP/1.1 connections, with almost no work
per chunk: the first output chunk is due ``ttft_ms`` after the request
arrived, then one chunk every ``gap_ms`` (an absolute schedule: a late
write does not shift later ones), each carrying ``tokens_per_chunk`` tokens,
then the usage chunk (unless ``--no-usage``) and ``[DONE]``. The number of
tokens is the request's ``max_completion_tokens`` / ``max_tokens``; a
request may override the schedule with a ``"schedule"`` object in its body.

Writes due in the same millisecond go out from one timer callback, so a
few thousand streams cost one wake-up per millisecond, not one per chunk.
``GET /log`` returns, per request (keyed by its prompt), when it arrived
and when each chunk was written, on ``time.perf_counter()``, which on Linux
is the system-wide monotonic clock the client reads too. ``GET /lateness``
returns how late the writes ran behind their schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import time
from pathlib import Path

CLOCK = time.perf_counter


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse(obj: dict) -> bytes:
    return chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


class Stream:
    __slots__ = ("transport", "chat", "tokens", "per_chunk", "usage", "prompt_tokens", "sent_tokens", "log",
                 "first_due", "gap_s", "index")

    def __init__(self, transport, chat, tokens, per_chunk, usage, prompt_tokens, log, first_due, gap_s):
        self.transport, self.chat, self.tokens, self.per_chunk = transport, chat, tokens, per_chunk
        self.usage, self.prompt_tokens, self.log = usage, prompt_tokens, log
        self.sent_tokens, self.first_due, self.gap_s, self.index = 0, first_due, gap_s, 0

    def piece(self, n: int) -> bytes:
        return _piece(self.chat, n)


_PIECES: dict[tuple[bool, int], bytes] = {}


def _piece(chat: bool, n: int) -> bytes:
    """The chunk of ``n`` tokens, encoded once: the server does almost no work per chunk."""
    data = _PIECES.get((chat, n))
    if data is None:
        text = " tok" * n
        if chat:
            obj = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text},
                                                                   "finish_reason": None}]}
        else:
            obj = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": None}]}
        data = _PIECES[(chat, n)] = sse(obj)
    return data


class Server:
    def __init__(self, args):
        self.args = args
        self.log: dict[str, dict] = {}
        self.slots: dict[int, list[Stream]] = {}
        self.lateness_sum_s = 0.0
        self.lateness_max_s = 0.0
        self.writes = 0
        self.wake = asyncio.Event()

    # -- scheduling
    def schedule(self, stream: Stream, due_s: float) -> None:
        slot = math.ceil(due_s * 1000)
        self.slots.setdefault(slot, []).append(stream)
        self.wake.set()

    async def ticker(self) -> None:
        while True:
            if not self.slots:
                self.wake.clear()
                await self.wake.wait()
                continue
            slot = min(self.slots)
            delay = slot / 1000 - CLOCK()
            if delay > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            for stream in self.slots.pop(slot):
                self.emit(stream)

    def emit(self, s: Stream) -> None:
        if s.transport.is_closing():
            return
        due = s.first_due + s.index * s.gap_s
        n = min(s.per_chunk, s.tokens - s.sent_tokens)
        data = s.piece(n)
        s.sent_tokens += n
        s.index += 1
        last = s.sent_tokens >= s.tokens
        if last:
            if s.usage:
                data += sse({"object": "chat.completion.chunk", "choices": [],
                             "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.tokens,
                                       "total_tokens": s.prompt_tokens + s.tokens}})
            data += chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        now = CLOCK()
        s.transport.write(data)
        late = now - due
        self.lateness_sum_s += max(late, 0.0)
        self.lateness_max_s = max(self.lateness_max_s, late)
        self.writes += 1
        if s.log is not None:
            s.log["sent_s"].append(now)
        if not last:
            self.schedule(s, s.first_due + s.index * s.gap_s)

    # -- requests
    def request(self, transport, path: str, body: dict, arrived_s: float) -> None:
        chat = path.endswith("chat/completions")
        if chat:
            prompt = body["messages"][0]["content"]
        else:
            prompt = body["prompt"]
        plan = {"ttft_ms": self.args.ttft_ms, "gap_ms": self.args.gap_ms,
                "tokens_per_chunk": self.args.tokens_per_chunk, "usage": not self.args.no_usage,
                **(body.get("schedule") or {})}
        tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        log = None
        if not self.args.no_log:
            log = self.log[prompt] = {"arrived_s": arrived_s, "sent_s": [], "tokens": tokens,
                                      "tokens_per_chunk": plan["tokens_per_chunk"]}
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        if chat:
            head += sse({"object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        transport.write(head)
        first_due = arrived_s + plan["ttft_ms"] / 1000
        stream = Stream(transport, chat, tokens, int(plan["tokens_per_chunk"]), bool(plan["usage"]),
                        len(prompt.split()), log, first_due, plan["gap_ms"] / 1000)
        self.schedule(stream, first_due)

    def answer_get(self, transport, path: str) -> None:
        if path == "/log":
            payload = json.dumps(self.log).encode()
        elif path == "/lateness":
            payload = json.dumps({"writes": self.writes, "max_ms": self.lateness_max_s * 1000,
                                  "mean_ms": self.lateness_sum_s * 1000 / max(self.writes, 1)}).encode()
        elif path == "/reset":
            self.log.clear()
            self.lateness_sum_s = self.lateness_max_s = 0.0
            self.writes = 0
            payload = b"{}"
        else:
            transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(payload), payload))


class Connection(asyncio.Protocol):
    def __init__(self, server: Server):
        self.server = server
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        arrived_s = CLOCK()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            if method == "GET":
                self.server.answer_get(self.transport, path)
            else:
                self.server.request(self.transport, path, json.loads(body), arrived_s)


class PacedServer:
    """Runs the server in its own process; ``stop`` (or leaving the ``with``) ends it by its pid."""

    def __init__(self, *options: str, start_timeout_s: float = 30.0):
        import subprocess
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="paced-")
        port_file = Path(self._dir.name) / "port"
        self.proc = subprocess.Popen([sys.executable, __file__, "--port-file", str(port_file), *options],
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + start_timeout_s
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the paced server did not start (exit code {self.proc.returncode})")
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}"

    def get(self, path: str) -> dict:
        import requests

        return requests.get(self.base_url + path, timeout=60).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        self._dir.cleanup()

    def __enter__(self) -> "PacedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def main(args) -> None:
    server = Server(args)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Connection(server), "127.0.0.1", args.port, backlog=8192)
    port = srv.sockets[0].getsockname()[1]
    Path(args.port_file).write_text(str(port))
    await server.ticker()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--no-usage", action="store_true")
    parser.add_argument("--no-log", action="store_true", help="keep no per-request log (big benchmark runs)")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
