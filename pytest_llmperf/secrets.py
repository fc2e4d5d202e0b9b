"""Secrets never printed or written (pure).

What counts as a secret: the API key, every ``--header`` value, an engine
configuration's environment values whose names contain KEY, TOKEN, SECRET or
PASSWORD, and command-line values of flags whose names end in key, token,
secret or password (``--api-key sk-...``, ``--hf-token=...``). Structured
places (an environment table, an argv, headers) are redacted by position;
``Redactor.scrub`` then replaces those values still found in free text (a log
tail, a server's error message) with ``***``: the API key from four
characters, other values from eight (shorter ones would mask ordinary words).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

MASK = "***"
# Values shorter than this are masked where they stand (env, argv, headers) but not searched for in free
# text, where they would mask ordinary words ("false", "test"); the API key is searched for from 4 characters.
MIN_SCRUBBED_CHARS = 8
MIN_SCRUBBED_KEY_CHARS = 4
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
# the flag's last word is key, token, secret or password (not "tokens": --max-num-batched-tokens is no secret)
_SECRET_FLAG = re.compile(r"^--?(?:[A-Za-z0-9]+[-_])*(?:key|token|secret|password)$", re.IGNORECASE)


def is_secret_env(name: str) -> bool:
    return bool(_SECRET_ENV.search(name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (MASK if is_secret_env(k) else v) for k, v in env.items()}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``--api-key X`` and ``--api-key=X`` with the value masked; everything else as it is."""
    out: list[str] = []
    mask_next = False
    for word in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        flag, eq, _ = word.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(word)
                mask_next = True
            continue
        out.append(word)
    return out


def env_secrets(env: Mapping[str, str]) -> list[str]:
    return [v for k, v in env.items() if is_secret_env(k) and v]


def argv_secrets(argv: Sequence[str]) -> list[str]:
    """The values ``redact_argv`` masks."""
    out = []
    for word, shown in zip(argv, redact_argv(argv)):
        if word != shown:
            out.append(word.partition("=")[2] if shown.endswith("=" + MASK) else word)
    return [v for v in out if v]


class Redactor:
    """Masks known secret values wherever they appear in text or in JSON-like data."""

    def __init__(self, values: Iterable[str] = (), keys: Iterable[str] = ()):
        self._values: tuple[str, ...] = ()
        self.add(values)
        self.add(keys, MIN_SCRUBBED_KEY_CHARS)

    def add(self, values: Iterable[str], min_chars: int = MIN_SCRUBBED_CHARS) -> None:
        """Search for these values in text from now on (those of at least ``min_chars`` characters)."""
        # longest first, so a value that contains another is masked whole
        self._values = tuple(sorted({*self._values, *(v for v in values if v and len(v) >= min_chars)},
                                    key=len, reverse=True))

    @property
    def active(self) -> bool:
        """Whether there is anything to search for in text."""
        return bool(self._values)

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def scrub_data(self, data: Any) -> Any:
        """A copy of JSON-like data with every string scrubbed (keys too)."""
        if not self._values:
            return data
        if isinstance(data, str):
            return self.scrub(data)
        if isinstance(data, Mapping):
            return {self.scrub(str(k)): self.scrub_data(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.scrub_data(v) for v in data]
        return data
