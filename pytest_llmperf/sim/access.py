"""Who may use the sim, and over what: API keys and TLS, as vLLM has them.

With API keys, every route under ``/v1`` needs ``Authorization: Bearer KEY``
(one of the keys) and answers HTTP 401 otherwise; other routes (``/health``,
``/version``, ``/metrics``, ``/tokenize``) stay open, and so does any
``OPTIONS`` request, as in vLLM's authentication middleware. Keys are kept
only as SHA-256 digests and compared in constant time; they are never printed
or logged.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
from typing import Iterable

ENV_API_KEY = "LLMPERF_SIM_API_KEY"
"""The environment variable ``python -m pytest_llmperf.sim serve`` reads its API key from (``--api-key`` wins)."""

GUARDED_PREFIX = "/v1"

UNAUTHORIZED_MESSAGE = ("Unauthorized: this server requires an API key; send it in the header "
                        "'Authorization: Bearer <key>'")


class ApiKeys:
    """The keys a server accepts (none: every request is let in)."""

    def __init__(self, keys: str | Iterable[str] | None = None):
        if keys is None:
            keys = ()
        elif isinstance(keys, str):
            keys = (keys,)
        self._digests = [_digest(k) for k in keys if k]  # empty keys are no keys, as in vLLM

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:  # never the keys themselves
        return f"ApiKeys({len(self._digests)} key{'s' if len(self._digests) != 1 else ''})"

    def allows(self, method: str, path: str, authorization: str | None) -> bool:
        """Whether a request may pass: open routes and OPTIONS always, ``/v1`` routes with a known bearer key."""
        if not self._digests or method == "OPTIONS" or not path.startswith(GUARDED_PREFIX):
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = _digest(token)
        match = False
        for known in self._digests:  # every key compared: the time taken does not tell which one matched
            match |= secrets.compare_digest(digest, known)
        return match


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def server_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A TLS server context from PEM files (``keyfile`` may be left out when ``certfile`` holds the key too).

    Raises ValueError, one line naming the file and the cause.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise ValueError(f"cannot read the TLS certificate or key: {exc.filename or certfile} does not exist; "
                         f"give PEM files with --ssl-certfile and --ssl-keyfile") from None
    except (ssl.SSLError, OSError) as exc:
        which = f"{certfile} with key {keyfile}" if keyfile else certfile
        raise ValueError(f"cannot load the TLS certificate {which}: {exc}; give a PEM certificate chain "
                         f"and its private key") from None
    return ctx
