"""An engine that is already running: an OpenAI-compatible endpoint.

Nothing is launched or stopped. ``--endpoint URL`` (or ``endpoint`` in a
suite configuration) names it; the node check runs only when ``--gpus`` is
given, since the endpoint may live on another machine.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..suite import EngineConfig
from . import STARTUP_TIMEOUT_S
from .base import EngineAdapter, Launch


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
    if parts.query or parts.fragment:
        raise ValueError(f"expected a base URL without query or fragment, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


class ExternalAdapter(EngineAdapter):
    name = "external"
    boots = False
    startup_timeout_s = STARTUP_TIMEOUT_S["external"]
    version_paths = ("/version", "/get_server_info")
    option_keys = frozenset({"endpoint", "served_model_name"})

    def validate(self, config: EngineConfig) -> None:
        super().validate(config)
        endpoint = config.option("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError(f"{config.id}: an external engine needs an endpoint (--endpoint URL)")
        try:
            normalize_endpoint(endpoint)
        except ValueError as exc:
            raise ValueError(f"{config.id}: endpoint: {exc}") from None

    def base_url(self, config: EngineConfig) -> str:
        return normalize_endpoint(str(config.option("endpoint")))

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        return []


ADAPTER = ExternalAdapter()
