"""One streaming request to an OpenAI-compatible server -> one RequestRecord.

The SSE decoding and the chunk rules are plain classes (testable without a
socket); ``send_request`` is the aiohttp edge. aiohttp is imported only when
a request is actually sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ..metrics import RequestRecord
from ..tokenizer import DEFAULT_TOKENIZER
from .datasets import SampleRequest

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
BODY_EXCERPT_CHARS = 200
_OUTPUT_DELTA_KEYS = ("content", "reasoning_content", "reasoning", "tool_calls", "function_call")


def is_chat_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` speaks the chat protocol (else the completions one)."""
    return endpoint.rstrip("/").endswith("chat/completions")


def build_body(
    endpoint: str,
    model: str,
    request: SampleRequest,
    ignore_eos: bool = False,
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a streaming request for ``endpoint``."""
    body: dict[str, Any] = {"model": model}
    if is_chat_endpoint(endpoint):
        body["messages"] = [{"role": "user", "content": request.prompt}]
        body["max_completion_tokens"] = request.expected_output_len
    else:
        body["prompt"] = request.prompt
        body["max_tokens"] = request.expected_output_len
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra_body or {})
    return body


class SSEDecoder:
    """Incremental server-sent-events decoder.

    Feed it bytes as they arrive, split anywhere; it yields ``(event, data)``
    for every complete event (lines ending in ``\\n`` or ``\\r\\n``, events
    ended by a blank line, ``data:`` lines joined with ``\\n``, comments
    skipped). ``event`` is the ``event:`` field, "" when absent.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        pos = 0
        while True:
            newline = buffer.find(b"\n", pos)
            if newline < 0:
                break
            line = buffer[pos:newline].rstrip(b"\r").decode("utf-8", errors="replace")
            pos = newline + 1
            event = self._line(line)
            if event is not None:
                yield event
        self._buffer = buffer[pos:]

    def finish(self) -> Iterator[tuple[str, str]]:
        """Events left when the stream ends without a final blank line."""
        if self._buffer:
            raw, self._buffer = self._buffer, b""
            event = self._line(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
            if event is not None:
                yield event
        event = self._line("")
        if event is not None:
            yield event

    def _line(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = (self._event, "\n".join(self._data))
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def chunk_carries_output(chunk: Mapping[str, Any], chat: bool) -> bool:
    """Whether a parsed stream chunk carries output (the metrics reference's rule)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    if not chat:
        return True
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    if not isinstance(delta, dict):
        return False
    if any(delta.get(key) for key in _OUTPUT_DELTA_KEYS):
        return True
    return delta.get("content") == "" and "role" not in delta


def _chunk_text(chunk: Mapping[str, Any], chat: bool) -> str:
    choice = chunk["choices"][0]
    if not isinstance(choice, dict):
        return ""
    if not chat:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    parts = (delta.get(key) for key in ("reasoning_content", "reasoning", "content"))
    return "".join(p for p in parts if isinstance(p, str))


def _error_message(event: str, chunk: Any) -> str | None:
    """The server's error when the event reports one, else None."""
    err: Any = None
    if isinstance(chunk, dict):
        err = chunk.get("error")
        if err is None and (chunk.get("object") == "error" or event == "error"):
            err = chunk
    elif event == "error":
        err = chunk
    if err is None:
        return None
    if isinstance(err, dict):
        err = err.get("message") or json.dumps(err)
    return str(err)[:BODY_EXCERPT_CHARS]


class StreamAccumulator:
    """Builds one request's record from its stream events, each with the time it was parsed."""

    def __init__(self, request: SampleRequest, start_s: float, chat: bool, tokenizer=DEFAULT_TOKENIZER):
        self.request = request
        self.start_s = start_s
        self.chat = chat
        self.tokenizer = tokenizer
        self.chunk_times_s: list[float] = []
        self.output_chunks: list[Mapping[str, Any]] = []  # kept to count text only if no usage comes
        self.completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.done = False
        self.error = ""

    def on_event(self, event: str, data: str, now_s: float) -> None:
        """Take one SSE event; ``now_s`` is when it was parsed."""
        if self.error:
            return
        if data == "[DONE]" or data.strip() == "[DONE]":
            self.done = True
            return
        for chunk in self._parse(event, data):
            if not isinstance(chunk, dict) or event or "error" in chunk or chunk.get("object") == "error":
                message = _error_message(event, chunk)
                if message is not None:
                    self.error = f"server error in stream: {message}"
                    return
                if not isinstance(chunk, dict):
                    self.error = f"unexpected stream event, expected a JSON object: {data[:BODY_EXCERPT_CHARS]!r}"
                    return
            if chunk_carries_output(chunk, self.chat):
                self.chunk_times_s.append(now_s)
                self.output_chunks.append(chunk)
            usage = chunk.get("usage")
            if usage and isinstance(usage, dict):
                if isinstance(usage.get("completion_tokens"), int):
                    self.completion_tokens = usage["completion_tokens"]
                if isinstance(usage.get("prompt_tokens"), int):
                    self.prompt_tokens = usage["prompt_tokens"]

    def _parse(self, event: str, data: str) -> list[Any]:
        try:
            return [json.loads(data)]
        except json.JSONDecodeError:
            pass
        # Servers that put one JSON object per data line without blank lines between.
        try:
            return [json.loads(line) for line in data.split("\n") if line.strip() and line.strip() != "[DONE]"]
        except json.JSONDecodeError:
            self.error = f"unparseable stream event: {data[:BODY_EXCERPT_CHARS]!r}"
            return []

    def record(self, error: str = "") -> RequestRecord:
        """The request's record; ``error`` (transport, timeout) makes it a failure."""
        rec = RequestRecord(
            prompt_len=self.request.prompt_len,
            expected_output_len=self.request.expected_output_len,
            start_s=self.start_s,
            input_tokens=self.prompt_tokens,
        )
        error = error or self.error
        if not error and not self.chunk_times_s:
            error = "stream ended without an output-carrying chunk" + (" (got [DONE])" if self.done else "")
        if error:
            if self.chunk_times_s:
                error += f" (after {len(self.chunk_times_s)} output chunks)"
            rec.error = error
            return rec
        times = self.chunk_times_s
        rec.success = True
        rec.ttft_s = times[0] - self.start_s
        rec.itl_s = [b - a for a, b in zip(times, times[1:])]
        rec.latency_s = times[-1] - self.start_s
        if self.completion_tokens is not None:
            rec.output_tokens = self.completion_tokens
        else:
            rec.output_tokens = self.tokenizer.count("".join(_chunk_text(c, self.chat) for c in self.output_chunks))
        return rec


async def send_request(
    session: "aiohttp.ClientSession",
    url: str,
    body: Mapping[str, Any],
    request: SampleRequest,
    chat: bool,
    timeout_s: float,
) -> RequestRecord:
    """Send one streaming request and record what came back; never raises for a failed request."""
    import aiohttp

    start_s = time.perf_counter()
    acc = StreamAccumulator(request, start_s, chat)
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                excerpt = (await resp.content.read(4 * BODY_EXCERPT_CHARS)).decode("utf-8", errors="replace")
                excerpt = " ".join(excerpt.split())[:BODY_EXCERPT_CHARS]
                status = f"HTTP {resp.status} {resp.reason}" if resp.reason else f"HTTP {resp.status}"
                return acc.record(f"{status}: {excerpt or '(empty body)'}")
            decoder = SSEDecoder()
            async for data in resp.content.iter_any():
                for event, payload in decoder.feed(data):
                    acc.on_event(event, payload, time.perf_counter())
                if acc.error:
                    return acc.record()
            for event, payload in decoder.finish():
                acc.on_event(event, payload, time.perf_counter())
    except (asyncio.TimeoutError, TimeoutError):  # distinct on 3.10; aiohttp's timeouts derive from them
        return acc.record(f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return acc.record(f"transport error: {type(exc).__name__}: {exc}")
    except Exception as exc:  # a request never disappears: anything else is recorded too
        return acc.record(f"client error: {type(exc).__name__}: {exc}")
    return acc.record()
