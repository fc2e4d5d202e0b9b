"""An engine that is already running: an OpenAI-compatible endpoint.

Nothing is launched or stopped. ``--endpoint URL`` (or ``endpoint`` in a
suite configuration) names it; the node check runs only when ``--gpus`` is
given, since the endpoint may live on another machine. Its engine is not
known: ``/metrics`` is read if it is Prometheus text, and caches are reset by
vLLM's route, else SGLang's (404 on both: it has none).
"""

from __future__ import annotations

from ..suite import EngineConfig
from . import STARTUP_TIMEOUT_S
from ..http import normalize_endpoint
from .base import EngineAdapter, Launch
from .sglang import FLUSH_CACHE
from .vllm import RESET_PREFIX_CACHE


class ExternalAdapter(EngineAdapter):
    name = "external"
    boots = False
    startup_timeout_s = STARTUP_TIMEOUT_S["external"]
    version_paths = ("/version", "/get_server_info")
    option_keys = frozenset({"endpoint", "served_model_name"})
    metrics_format = "prometheus"
    cache_reset_routes = (RESET_PREFIX_CACHE, FLUSH_CACHE)

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
