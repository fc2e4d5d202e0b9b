"""One streaming request to an OpenAI-compatible server -> one RequestRecord.

The SSE decoding and the chunk rules are plain classes (testable without a
socket); ``send_request`` is the network edge, on the streaming protocol of
``httpstream``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from array import array
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ..metrics import RequestRecord
from ..tokenizer import DEFAULT_TOKENIZER
from .datasets import SampleRequest
from .httpstream import CLOCK, ConnectionPool, StreamProtocol

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
BODY_EXCERPT_CHARS = 200
_loads = json.loads
_OUTPUT_DELTA_KEYS = ("content", "reasoning_content", "reasoning", "tool_calls", "function_call")
_TEXT_DELTA_KEYS = ("reasoning_content", "reasoning", "content")


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

    def plain_payloads(self, chunk: bytes) -> list[bytes] | None:
        """The payloads of ``chunk`` when it is whole ``data:`` events only, else None.

        The fast path for what servers send almost always: one or more
        complete ``data: ...\n\n`` events and nothing pending. Anything else
        (split events, other fields, comments, CR line ends) returns None, and
        the caller feeds the chunk through ``feed``.
        """
        if self._buffer or self._data or self._event or not chunk.startswith(b"data: ") \
                or not chunk.endswith(b"\n\n") or b"\r" in chunk:
            return None
        parts = chunk[6:-2].split(b"\n\ndata: ")
        for part in parts:
            if b"\n" in part:
                return None
        return parts

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


@dataclass(frozen=True)
class ChunkInfo:
    """What one parsed stream event carries, as the metrics reference's rules read it."""

    output: bool  # an output-carrying chunk: a TTFT / ITL event
    text: str = ""  # the output text it carries (counted only when the server sends no usage)
    usage: Mapping[str, Any] | None = None
    error: str | None = None  # why the stream failed at this event (its kind): the server's error, a malformed event
    detail: str = ""  # what the event said
    text_field: str | None = None  # the one plain string field its output came in (the memo learns from it)


_NOTHING = ChunkInfo(False)


def classify_chunk(chunk: Any, chat: bool, event: str = "") -> ChunkInfo:
    """The one set of chunk rules: output or not, its text, usage, error.

    Chat: a delta with non-empty ``content``, ``reasoning_content``,
    ``reasoning``, ``tool_calls`` or ``function_call``, or ``content: ""``
    without a ``role``, carries output; the role-only opening chunk does not.
    Completions: every chunk with choices carries output, even with empty text.
    """
    if not isinstance(chunk, dict) or event or "error" in chunk or chunk.get("object") == "error":
        message = _error_message(event, chunk)
        if message is not None:
            return ChunkInfo(False, error=SERVER_ERROR, detail=message)
        if not isinstance(chunk, dict):
            return ChunkInfo(False, error=NOT_AN_OBJECT, detail=repr(chunk)[:BODY_EXCERPT_CHARS])
    choices = chunk.get("choices")
    usage = chunk.get("usage")
    usage = usage if isinstance(usage, dict) and usage else None
    if not isinstance(choices, list) or not choices:
        return ChunkInfo(False, usage=usage) if usage else _NOTHING
    choice = choices[0]
    if not chat:
        text = choice.get("text") if isinstance(choice, dict) else None
        plain = isinstance(text, str) and bool(text)
        return ChunkInfo(True, text if plain else "", usage, text_field="text" if plain and usage is None else None)
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        return ChunkInfo(False, usage=usage) if usage else _NOTHING
    if not (any(delta.get(key) for key in _OUTPUT_DELTA_KEYS) or (delta.get("content") == "" and "role" not in delta)):
        return ChunkInfo(False, usage=usage) if usage else _NOTHING
    text = "".join(v for v in (delta.get(k) for k in _TEXT_DELTA_KEYS) if isinstance(v, str))
    carried = [k for k in _TEXT_DELTA_KEYS if delta.get(k)]
    single = (len(carried) == 1 and isinstance(delta[carried[0]], str) and usage is None
              and not delta.get("tool_calls") and not delta.get("function_call"))
    return ChunkInfo(True, text, usage, text_field=carried[0] if single else None)


SERVER_ERROR = "server error in stream"
NOT_AN_OBJECT = "unexpected stream event, expected a JSON object"
UNPARSEABLE = "unparseable stream event"
NO_OUTPUT = "stream ended without an output-carrying chunk"


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
    """Builds one request's record from its stream events, each with the time it was parsed.

    Every event is decided by ``classify_chunk``. In front of it sits a memo
    for what servers send almost always: once a chunk whose output came in
    one plain text field has been classified, its bytes before and after
    that text are kept; a later payload with the same bytes around a plain,
    non-empty text (no quote, no escape) is the same JSON with another text,
    so the same decision holds and it is taken without parsing.

    Kept small for long streams: chunk times in a float array, and output
    text (needed only when the server sends no usage) joined as it grows.
    """

    _JOIN_EVERY = 256

    def __init__(self, request: SampleRequest, start_s: float, chat: bool, tokenizer=DEFAULT_TOKENIZER):
        self.request = request
        self.start_s = start_s
        self.chat = chat
        self.tokenizer = tokenizer
        self.chunk_times_s = array("d")
        self._text: list[str] = []
        self.completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.done = False
        self.error = ""  # the kind of failure
        self.error_detail = ""  # what this stream said
        self._memo: tuple[bytes, bytes] | None = None

    def on_payload(self, payload: bytes, now_s: float) -> None:
        """Take the payload of a plain ``data:`` event (the hot path)."""
        if self.error:
            return
        memo = self._memo
        if memo is not None and payload.startswith(memo[0]) and payload.endswith(memo[1]):
            text = payload[len(memo[0]):len(payload) - len(memo[1])]
            if text and b'"' not in text and b"\\" not in text:
                self.chunk_times_s.append(now_s)
                self._keep_text(text.decode("utf-8", errors="replace"))
                return
        try:
            chunk = _loads(payload)
        except ValueError:  # not one JSON value (several lines, or garbage): the general path says which
            self.on_event("", payload.decode("utf-8", errors="replace"), now_s)
            return
        self._take(chunk, "", now_s, payload)

    def on_event(self, event: str, data: str, now_s: float) -> None:
        """Take one SSE event; ``now_s`` is when it was parsed."""
        if self.error:
            return
        if data == "[DONE]" or data.strip() == "[DONE]":
            self.done = True
            return
        for chunk in self._parse(data):
            self._take(chunk, event, now_s, None)
            if self.error:
                return

    def _take(self, chunk: Any, event: str, now_s: float, payload: bytes | None) -> None:
        info = classify_chunk(chunk, self.chat, event)
        if info.error is not None:
            self.error, self.error_detail = info.error, info.detail
            return
        if info.output:
            self.chunk_times_s.append(now_s)
            if info.text:
                self._keep_text(info.text)
        if info.usage is not None:
            self._take_usage(info.usage)
        if payload is not None and info.text_field is not None:
            self._learn(payload, info.text_field)

    def _learn(self, payload: bytes, field_name: str) -> None:
        """Keep the bytes around ``field_name``'s text as the memo, when they delimit it unambiguously."""
        needle = b'"' + field_name.encode() + b'":"'
        if payload.count(needle) != 1:
            return
        start = payload.index(needle) + len(needle)
        end = payload.find(b'"', start)
        if end > start and b"\\" not in payload[start:end]:
            self._memo = (payload[:start], payload[end:])

    def _keep_text(self, text: str) -> None:
        self._text.append(text)
        if len(self._text) >= self._JOIN_EVERY:
            self._text = ["".join(self._text)]

    def _take_usage(self, usage: Mapping[str, Any]) -> None:
        if isinstance(usage.get("completion_tokens"), int):
            self.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            self.prompt_tokens = usage["prompt_tokens"]

    def _parse(self, data: str) -> list[Any]:
        try:
            return [json.loads(data)]
        except json.JSONDecodeError:
            pass
        # Servers that put one JSON object per data line without blank lines between.
        try:
            return [json.loads(line) for line in data.split("\n") if line.strip() and line.strip() != "[DONE]"]
        except json.JSONDecodeError:
            self.error, self.error_detail = UNPARSEABLE, repr(data[:BODY_EXCERPT_CHARS])
            return []

    def record(self, error: str = "", detail: str = "") -> RequestRecord:
        """The request's record; ``error`` (transport, timeout: its kind) makes it a failure."""
        rec = RequestRecord(
            prompt_len=self.request.prompt_len,
            expected_output_len=self.request.expected_output_len,
            start_s=self.start_s,
            input_tokens=self.prompt_tokens,
        )
        if not error:
            error, detail = self.error, self.error_detail
        times = self.chunk_times_s
        if not error and not times:
            error = NO_OUTPUT + (" (got [DONE])" if self.done else "")
        if error:
            if times:
                detail = f"{detail}; " if detail else ""
                detail += f"after {len(times)} output chunks"
            rec.error, rec.error_detail = error, detail
            return rec
        rec.success = True
        rec.ttft_s = times[0] - self.start_s
        rec.itl_s = array("d", (b - a for a, b in zip(times, itertools.islice(times, 1, None))))
        rec.latency_s = times[-1] - self.start_s
        if self.completion_tokens is not None:
            rec.output_tokens = self.completion_tokens
        else:
            rec.output_tokens = self.tokenizer.count("".join(self._text))
        return rec


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as sent: compact JSON, UTF-8."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def send_request(
    pool: ConnectionPool,
    request_bytes: bytes,
    request: SampleRequest,
    chat: bool,
    timeout_s: float,
    tokenizer=DEFAULT_TOKENIZER,
    in_flight: set | None = None,
) -> RequestRecord:
    """Send one streaming request and record what came back; never raises for a failed request.

    ``start`` is stamped just before a connection is taken (an idle one, or
    a new one: connecting counts, as in the reference). A reused idle
    connection that the server had already closed (nothing came back) is
    retried once on a fresh connection, with a fresh start. ``in_flight``
    holds the request's accumulator while it runs (for progress counts).
    """
    live = in_flight if in_flight is not None else set()
    for attempt in range(2):
        protocol = pool.take_idle()
        start_s = CLOCK()
        acc = StreamAccumulator(request, start_s, chat, tokenizer)
        live.add(acc)
        try:
            record = await _attempt(pool, protocol, request_bytes, acc, timeout_s, start_s, last=attempt == 1)
        finally:
            live.discard(acc)
        if record is not None:
            return record
    raise AssertionError("unreachable")  # pragma: no cover


async def _attempt(pool: ConnectionPool, protocol: StreamProtocol | None, request_bytes: bytes,
                   acc: StreamAccumulator, timeout_s: float, start_s: float, last: bool) -> RequestRecord | None:
    """One try of a request; None asks for a retry (a stale idle connection)."""
    reused = protocol is not None
    if protocol is None:
        target = pool.target
        try:
            protocol = await asyncio.wait_for(pool.connect(), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            return acc.record(f"timed out after {timeout_s:g} s (connecting)")
        except OSError as exc:
            return acc.record(f"transport error: cannot connect to {target.host}:{target.port}",
                              f"{type(exc).__name__}: {exc}")
    error, detail, reusable = await _exchange(protocol, request_bytes, acc, timeout_s - (CLOCK() - start_s))
    if error and error != _TIMEOUT and reused and not last and protocol.bytes_seen == 0 and not acc.error:
        return None  # a stale keep-alive connection: closed before any response
    if reusable:  # _exchange says so only for a complete response, 200 or not, on a kept-alive connection
        pool.give_back(protocol)
    elif protocol.transport is not None and not protocol.closed:
        protocol.transport.close()
    if error == _TIMEOUT:
        error = f"timed out after {timeout_s:g} s"
    return acc.record(error, detail)


_TIMEOUT = "timeout"


async def _exchange(protocol: StreamProtocol, request_bytes: bytes, acc: StreamAccumulator,
                    timeout_s: float) -> tuple[str, str, bool]:
    """One request on ``protocol``: (error kind or "", its detail, whether the connection may be reused)."""
    status_of = [0]
    excerpt = bytearray()
    decoder = SSEDecoder()
    on_event, on_payload, plain_payloads = acc.on_event, acc.on_payload, decoder.plain_payloads

    def on_head(status: int, now_s: float) -> None:
        status_of[0] = status

    def on_body(data: bytes, now_s: float) -> None:
        if status_of[0] != 200:
            if len(excerpt) < 4 * BODY_EXCERPT_CHARS:
                excerpt.extend(data[: 4 * BODY_EXCERPT_CHARS - len(excerpt)])
            return
        payloads = plain_payloads(data)
        if payloads is not None:
            for payload in payloads:
                if payload == b"[DONE]":
                    acc.done = True
                else:
                    on_payload(payload, now_s)
        else:
            for event, text in decoder.feed(data):
                on_event(event, text, now_s)
        if acc.error:
            protocol.abort(acc.error)

    timer = asyncio.get_running_loop().call_later(max(timeout_s, 0.0), protocol.abort, _TIMEOUT)
    try:
        response = await protocol.exchange(request_bytes, on_head, on_body)
    except BaseException:  # cancelled (a stop signal): drop the connection, the server stops streaming
        protocol.abort("cancelled")
        raise
    finally:
        timer.cancel()
    if acc.error:
        return "", "", False  # the accumulator's own error is the record's
    if response.error:
        if response.error == _TIMEOUT:
            return _TIMEOUT, "", False
        return "transport error", response.error, False
    status = status_of[0]
    if status != 200:
        text = " ".join(bytes(excerpt).decode("utf-8", errors="replace").split())[:BODY_EXCERPT_CHARS]
        head = f"HTTP {status} {response.reason}" if response.reason else f"HTTP {status}"
        return head, text or "(empty body)", response.reusable
    now_s = CLOCK()
    for event, payload in decoder.finish():
        on_event(event, payload, now_s)
    return "", "", response.reusable
