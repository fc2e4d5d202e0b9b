"""The one HTTP edge: connection options every request shares, and the control-plane client.

``HttpOptions`` says how to reach an engine: extra headers (``--header``),
the API key (sent as ``Authorization: Bearer ...``, as the reference client
does with ``OPENAI_API_KEY``), and whom to trust over https (the system trust
store by default, ``--ca-bundle`` instead, or nothing with ``--insecure``).
The control plane (readiness, version, models, ``/tokenize``) and the
streaming load generator (``loadgen.httpstream``) both take their headers and
their TLS context from it, so every request the plugin makes is sent and
verified the same way. No proxy is used: engines are reached directly.

``ControlClient`` is a small synchronous client on the standard library's
``http.client`` (one kept-alive connection); a request that cannot be
answered raises ``HttpFailure`` with its kind (refused, tls, timeout, ...)
and one line saying what happened at which URL.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

EXCERPT_CHARS = 200


@dataclass(frozen=True)
class HttpOptions:
    """How every request reaches an engine. Picklable, so client processes rebuild the same context."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # values may be secrets
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str = ""  # where the key came from (a variable's name), for reports; never the key
    ca_bundle: Path | None = None
    insecure: bool = False

    def request_headers(self) -> dict[str, str]:
        """The headers sent on every request: ``--header`` values, then the API key unless a header set one."""
        out = dict(self.headers)
        if self.api_key and not any(name.lower() == "authorization" for name in out):
            out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def secrets(self) -> tuple[str, ...]:
        """Header values, never to print or write (the API key: ``api_key``)."""
        return tuple(value for _, value in self.headers if value)

    def ssl_context(self) -> ssl.SSLContext:
        return _ssl_context(self.ca_bundle, self.insecure)

    def describe(self) -> dict[str, Any]:
        """The options as a report shows them: header names only, where the key came from, the trust anchor."""
        return {
            "headers": [f"{name}: ***" for name, _ in self.headers],
            "api_key": f"from {self.api_key_source}" if self.api_key else None,
            "ca_bundle": str(self.ca_bundle) if self.ca_bundle else None,
            "insecure": self.insecure,
        }


@functools.lru_cache(maxsize=8)
def _ssl_context(ca_bundle: Path | None, insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def normalize_endpoint(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing ``/`` or ``/v1``; ValueError otherwise."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    if parts.username or parts.password:  # the URL is shown and stored: no credentials in it
        raise ValueError("credentials in the endpoint URL are not used; give the API key with OPENAI_API_KEY "
                         "(or --api-key-env) or a header with --header, and a URL without user:password@")
    if parts.query or parts.fragment:
        raise ValueError(f"expected a base URL without query or fragment, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``("Name", "value")``; ValueError for anything a request line could not carry."""
    name, sep, value = str(text).partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:  # the text itself is not shown: it may hold a secret
        raise ValueError("expected \"Name: value\", got text without a name before ':'")
    if any(c in name for c in " \t()<>@,;:\\\"/[]?={}") or not name.isascii() or not name.isprintable():
        raise ValueError(f"{name!r} is not a valid header name")
    if "\r" in value or "\n" in value or not value.isprintable():
        raise ValueError(f"the value of header {name} has line breaks or control characters")
    return name, value


# ----------------------------------------------------------------- control plane
REFUSED, TLS, TIMEOUT, UNREACHABLE, BROKEN = "refused", "tls", "timeout", "unreachable", "broken"


class HttpFailure(Exception):
    """No answer: ``kind`` is refused / tls / timeout / unreachable / broken; the message is one line."""

    def __init__(self, kind: str, url: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.url = url


def _failure(exc: BaseException, url: str, timeout_s: float) -> HttpFailure:
    if isinstance(exc, ConnectionRefusedError):
        return HttpFailure(REFUSED, url, f"connection refused at {url}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        return HttpFailure(TLS, url, f"TLS certificate of {url} not trusted ({why}); give the server's CA with "
                                     f"--ca-bundle FILE, or --insecure to skip verification")
    if isinstance(exc, ssl.SSLError):
        return HttpFailure(TLS, url, f"TLS handshake with {url} failed ({exc.reason or exc}); is it an https server?")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return HttpFailure(TIMEOUT, url, f"no answer from {url} within {timeout_s:g} s")
    if isinstance(exc, socket.gaierror):
        return HttpFailure(UNREACHABLE, url, f"cannot resolve the host of {url} ({exc.strerror or exc})")
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
        return HttpFailure(UNREACHABLE, url, f"cannot reach {url} ({exc.strerror or exc})")
    return HttpFailure(BROKEN, url, f"{url} broke off the exchange ({type(exc).__name__}: {exc})")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body)

    def excerpt(self) -> str:
        return " ".join(self.body.decode("utf-8", errors="replace").split())[:EXCERPT_CHARS]


class ControlClient:
    """Synchronous JSON requests to one server, on one kept-alive connection; ``with`` closes it."""

    def __init__(self, base_url: str, options: HttpOptions = HttpOptions(), timeout_s: float = 5.0):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) base URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.options = options
        self.timeout_s = timeout_s
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"User-Agent": user_agent(), "Accept": "application/json", **options.request_headers()}
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str, timeout_s: float | None = None) -> Reply:
        return self._request("GET", path, None, timeout_s)

    def post_json(self, path: str, body: Mapping[str, Any], timeout_s: float | None = None) -> Reply:
        return self._request("POST", path, json.dumps(body).encode(), timeout_s)

    def url(self, path: str) -> str:
        return self.base_url + path

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s,
                                               context=self.options.ssl_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)

    def _request(self, method: str, path: str, body: bytes | None, timeout_s: float | None) -> Reply:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect(timeout_s)
            conn = self._conn
            conn.timeout = timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(timeout_s)
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                stale = reused and isinstance(exc, (ConnectionError, http.client.RemoteDisconnected,
                                                    http.client.BadStatusLine))
                if stale and attempt == 0:
                    continue  # the server closed a kept-alive connection: once more on a new one
                raise _failure(exc, self.url(path), timeout_s) from None
            if response.will_close:
                self.close()
            return Reply(response.status, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def user_agent() -> str:
    """The User-Agent of every request the plugin makes."""
    from . import __version__

    return f"pytest-llmperf/{__version__}"
