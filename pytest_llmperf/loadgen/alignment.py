"""Prompt lengths in the server's own tokens: alignment through ``/tokenize`` and the check after a run.

``align_to_server`` and ``prompt_length_mismatch`` are pure (the counter is
injected); ``server_token_counter`` reads the server through the control-plane client.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..tokenizer import VOCAB
from .datasets import SampleRequest

if TYPE_CHECKING:  # pragma: no cover
    from ..http import ControlClient, Reply

MAX_ALIGN_STEPS = 12
CountTokens = Callable[[str], int]


_BY_LENGTH = sorted({len(w): w for w in VOCAB}.items())  # one word of each length, shortest first


def _adjust(text: str, target: int, count: CountTokens, rng: random.Random) -> tuple[str, int]:
    """``text`` grown or cut until ``count`` says ``target``, or the closest text seen.

    Big strides first (words per token estimated from the counts so far),
    then one word at a time; when single steps jump over the target, the
    last word is swapped for words of other lengths.
    """
    words = text.split(" ")
    tokens = count(text)
    best = (abs(tokens - target), text, tokens)
    seen: set[int] = set()
    swap = 0
    for step in range(MAX_ALIGN_STEPS * 3):
        if tokens == target:
            return " ".join(words), tokens
        per_word = max(tokens / max(len(words), 1), 1e-6)
        coarse = step < MAX_ALIGN_STEPS // 2
        stride = max(1, math.floor(abs(target - tokens) / per_word)) if coarse else 1
        if not coarse and len(words) in seen and len(words) > 1 and swap < len(_BY_LENGTH):
            words[-1] = _BY_LENGTH[swap][1]  # single steps overshoot: change the last word's length
            swap += 1
        elif tokens < target:
            words.extend(rng.choices(VOCAB, k=stride))
        else:
            del words[max(len(words) - stride, 1):]
        seen.add(len(words))
        current = " ".join(words)
        tokens = count(current)
        if abs(tokens - target) < best[0]:
            best = (abs(tokens - target), current, tokens)
    return best[1], best[2]


def align_to_server(requests: Sequence[SampleRequest], count_tokens: CountTokens, seed: int = 0) -> list[SampleRequest]:
    """Each prompt adjusted (words added or removed) until the server counts its target length.

    Deterministic for the same server and seed. A prompt that cannot be hit
    exactly keeps its closest text; ``prompt_len`` stays the target, so the
    run's mismatch check reports the gap.
    """
    rng = random.Random(seed)
    out = []
    for request in requests:
        text, _ = _adjust(request.prompt, request.prompt_len, count_tokens, rng)
        out.append(replace(request, prompt=text))
    return out


def prompt_length_mismatch(targets: Sequence[int], reported: Sequence[Optional[int]]) -> tuple[float, int]:
    """Mean |reported - target| / target in percent over requests with a reported count, and how many."""
    pairs = [(t, r) for t, r in zip(targets, reported) if r is not None and t > 0]
    if not pairs:
        return 0.0, 0
    return sum(abs(r - t) / t for t, r in pairs) * 100.0 / len(pairs), len(pairs)


class TokenizeError(RuntimeError):
    """The server's ``/tokenize`` failed; the message is one line saying how."""


def server_token_counter(client: "ControlClient", model: str, timeout_s: float = 60.0) -> CountTokens | None:
    """A token counter backed by the server's ``/tokenize``; None when the server has none.

    vLLM answers ``{"model", "prompt"}`` with ``{"count": N, ...}``. A server
    without the route (404, 405), or with another request schema (400, 422),
    gets None; any other failure (an error status, no count, no answer)
    raises TokenizeError, from the probe or from any later count.
    """
    from ..http import HttpFailure

    url = client.url("/tokenize")

    def ask(text: str) -> "Reply":
        try:
            return client.post_json("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False},
                                    timeout_s=timeout_s)
        except HttpFailure as exc:
            raise TokenizeError(str(exc)) from None

    def count(text: str) -> int:
        reply = ask(text)
        if reply.status != 200:
            raise TokenizeError(f"{url} answered HTTP {reply.status}: {reply.excerpt()}")
        try:
            value = reply.json()["count"]
        except (ValueError, KeyError, TypeError):
            raise TokenizeError(f"{url} answered without a token count: {reply.excerpt()}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TokenizeError(f"{url} answered a count that is not an integer: {value!r}")
        return value

    if ask("hello").status in (400, 404, 405, 422):  # no route, or one that speaks another schema
        return None
    count("hello")  # the same checks as every later call
    return count


def align_through_server(requests: Sequence[SampleRequest], client: "ControlClient", model: str, seed: int,
                         timeout_s: float) -> tuple[list[SampleRequest], str]:
    """Prompts aligned through the server's ``/tokenize``, and how their lengths were made.

    A server without the route, or one whose ``/tokenize`` fails, leaves the
    prompts as the word tokenizer built them; the second value says so (and why).
    """
    try:
        counter = server_token_counter(client, model, timeout_s)
        if counter is None:
            return list(requests), "word tokenizer (the server has no /tokenize; give --tokenizer)"
        return align_to_server(requests, counter, seed), "server /tokenize"
    except TokenizeError as exc:
        return list(requests), f"word tokenizer (the server's /tokenize failed: {exc}; give --tokenizer)"
