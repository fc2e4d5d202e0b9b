"""Prompt lengths in the server's own tokens: alignment through ``/tokenize`` and the check after a run.

``align_to_server`` and ``prompt_length_mismatch`` are pure (the counter is
injected); ``server_token_counter`` is the HTTP edge.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Callable, Optional, Sequence

from ..tokenizer import VOCAB
from .datasets import SampleRequest

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


def server_token_counter(base_url: str, model: str, timeout_s: float = 60.0) -> CountTokens | None:
    """A token counter backed by the server's ``/tokenize``; None when the server has none.

    vLLM answers ``{"model", "prompt"}`` with ``{"count": N, ...}``. A server
    without the route (404, 405), or with another request schema (400, 422),
    gets None; other answers raise with the
    status and a body excerpt.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    url = base_url.rstrip("/") + "/tokenize"

    def count(text: str) -> int:
        resp = session.post(url, json={"model": model, "prompt": text, "add_special_tokens": False},
                            timeout=timeout_s)
        if resp.status_code != 200:
            raise RuntimeError(f"{url} answered HTTP {resp.status_code}: {' '.join(resp.text.split())[:200]}")
        try:
            value = resp.json()["count"]
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"{url} answered without a token count: {' '.join(resp.text.split())[:200]}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RuntimeError(f"{url} answered a count that is not an integer: {value!r}")
        return value

    try:
        probe = session.post(url, json={"model": model, "prompt": "hello", "add_special_tokens": False},
                             timeout=timeout_s)
    except requests.RequestException as exc:
        raise RuntimeError(f"cannot reach {url} to align prompt lengths: {exc}") from None
    if probe.status_code in (400, 404, 405, 422):  # no route, or one that speaks another schema
        return None
    count("hello")  # the same checks as every later call
    return count
