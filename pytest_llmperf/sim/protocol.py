"""The OpenAI-compatible request side of the sim: bodies in, validated requests or errors out (pure, no IO).

``parse_completion`` reads a ``/v1/chat/completions`` or ``/v1/completions``
body as vLLM would (same error shapes and messages), counts the prompt in the
sim's word tokens and decides how many tokens the answer will have;
``tokenize_text`` does the same for ``/tokenize``. The server (``server.py``)
only wires them to routes.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any

from ..tokenizer import DEFAULT_TOKENIZER
from .model import EngineModel

NATURAL_STOP_FRACTION = 0.04
"""Share of prompts whose natural answer is short (4..511 tokens); the rest run to 2048..4095 tokens."""


def natural_output_tokens(prompt_text: str) -> int:
    """The length the simulated model would answer ``prompt_text`` with when free to stop (deterministic)."""
    h = zlib.crc32(prompt_text.encode("utf-8", "surrogatepass"))
    if (h & 0xFFFF) / 65536.0 < NATURAL_STOP_FRACTION:
        return 4 + (h >> 16) % 508
    return 2048 + (h >> 16) % 2048


class ApiError(Exception):
    """An error answered as OpenAI-compatible servers do: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}}

    def response(self, headers: dict[str, str] | None = None):
        """The error as an aiohttp JSON response."""
        from aiohttp import web

        return web.json_response(self.body(), status=self.status, headers=headers)


@dataclass(frozen=True)
class ParsedRequest:
    """A completion request the engine can serve, and how its answer ends."""

    chat: bool
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    finish_reason: str
    output_tokens: int


def json_object(raw: bytes) -> dict:
    """A request body that must be a JSON object."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _int_field(body: dict, name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ApiError(400, f"{name} must be an integer >= 1, got {v!r}", param=name)
    return v


def message_text(messages: Any) -> str:
    """The text of chat ``messages`` (string contents and text parts), joined by newlines."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects", param="messages")
    parts: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role', got {m!r:.80}", param="messages")
        content = m.get("content")
        if content is None or isinstance(content, str):
            parts.append(content or "")
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                else:
                    raise ApiError(400, f"messages[{i}].content parts must be {{\"type\": \"text\", \"text\": ...}}", param="messages")
        else:
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
    return "\n".join(parts)


def _check_model(body: dict, model_name: str) -> None:
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")


def parse_completion(body: dict, chat: bool, model_name: str, engine: EngineModel) -> ParsedRequest:
    """Validate a (chat) completion body for ``engine`` serving ``model_name``; raises ``ApiError``."""
    _check_model(body, model_name)
    if chat:
        text = message_text(body.get("messages"))
        max_tokens = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (or a list of one string)", param="prompt")
        text = prompt
        max_tokens = _int_field(body, "max_tokens")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, f"the sim engine supports n=1 only, got n={n!r}", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be a boolean, got {stream!r}", param="stream")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, f"ignore_eos must be a boolean, got {ignore_eos!r}", param="ignore_eos")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    include_usage = bool(opts.get("include_usage", False))

    prompt_tokens = DEFAULT_TOKENIZER.count(text)
    limit = engine.profile.max_context_tokens
    if prompt_tokens >= limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your request has "
                            f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
                       param="messages" if chat else "prompt")
    if max_tokens is None:
        max_tokens = limit - max(1, prompt_tokens)
    try:
        engine.check_request(max(1, prompt_tokens), max_tokens)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="max_tokens") from None
    output_tokens, finish = max_tokens, "length"
    if not ignore_eos:
        natural = natural_output_tokens(text)
        if natural < max_tokens:
            output_tokens, finish = natural, "stop"
    return ParsedRequest(chat, text, prompt_tokens, max_tokens, stream, include_usage, finish, output_tokens)


def prefix_key(p: ParsedRequest) -> str:
    """The engine's prefix-cache key of a request: a hash of its prompt text (for chat, the messages' content as
    parsed), chat and plain completions apart (a chat template would make their token sequences differ)."""
    digest = hashlib.blake2b(p.prompt_text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return ("chat:" if p.chat else "text:") + digest


def text_seed(prompt_text: str) -> int:
    """The seed of a prompt's answer text (the answer is a function of the prompt)."""
    return zlib.crc32(prompt_text.encode("utf-8", "surrogatepass"))


def answer_text(seed: int, start: int, n: int) -> str:
    """Tokens ``start`` .. ``start + n - 1`` of the answer seeded ``seed``, as text."""
    tt = DEFAULT_TOKENIZER.token_text
    return "".join(tt(seed, i) for i in range(start, start + n))


def completion_body(rid: str, p: ParsedRequest, text: str, completion_tokens: int, model_name: str) -> dict:
    """A whole (non-streamed) completion response."""
    usage = {"prompt_tokens": p.prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": p.prompt_tokens + completion_tokens}
    if p.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": p.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": p.finish_reason}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model_name,
            "choices": [choice], "usage": usage}


def tokenize_text(body: dict, model_name: str) -> str:
    """The text a ``/tokenize`` body asks to count: its ``prompt``, or its chat ``messages`` joined."""
    _check_model(body, model_name)
    add_special = body.get("add_special_tokens", True)
    if not isinstance(add_special, bool):  # the word tokenizer has no special tokens: accepted, no effect
        raise ApiError(400, f"add_special_tokens must be a boolean, got {add_special!r}",
                       param="add_special_tokens")
    if "prompt" in body and "messages" in body:
        raise ApiError(400, "give either prompt or messages, not both", param="prompt")
    if "messages" in body:
        return message_text(body["messages"])
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, f"prompt must be a string, got {prompt!r:.80}", param="prompt")
    return prompt
