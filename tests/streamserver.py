"""A tiny scripted SSE server for the client tests.

``StreamServer(script)`` listens on 127.0.0.1 (a free port) in a background
thread; ``script(body) -> list of steps`` decides what each request gets:
``bytes``/``str`` are written as they are (one write each), ``Sleep(s)``
pauses, ``CLOSE`` drops the connection mid-stream, and a ``Reply(status,
text)`` as the only step answers without streaming. Received JSON bodies are
kept in ``server.bodies``, the client address of each in ``server.peers``;
``server.max_in_flight`` is the most requests it held at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from aiohttp import web


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Reply:
    status: int
    text: str = ""


CLOSE = object()
DONE = b"data: [DONE]\n\n"
Step = Union[bytes, str, Sleep, Reply, object]


def sse(obj: Any) -> bytes:
    """One SSE event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_chunk(**delta: Any) -> bytes:
    return sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def completion_chunk(text: str) -> bytes:
    return sse({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": None}]})


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> bytes:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return sse({"object": "chat.completion.chunk", "choices": [], "usage": usage})


class StreamServer:
    def __init__(self, script: Callable[[dict], Sequence[Step]]):
        self.script = script
        self.bodies: list[dict] = []
        self.peers: list[Any] = []  # the client address of each request: repeats mean a reused connection
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._serve(request)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        steps = list(self.script(body))
        if steps and isinstance(steps[0], Reply):
            return web.Response(status=steps[0].status, text=steps[0].text)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for step in steps:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif step is CLOSE:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                else:
                    await resp.write(step.encode() if isinstance(step, str) else step)
            await resp.write_eof()
        except ConnectionResetError:  # the client went away (timeout tests)
            pass
        return resp

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)  # don't wait out a scripted sleep
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> "StreamServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
