"""vLLM: ``vllm serve MODEL [flags]``.

Ready when ``GET /health`` answers 200 (the port refuses connections until
the engine is built); ``GET /version`` answers ``{"version": ...}``.
``GET /metrics`` is Prometheus text. ``POST /reset_prefix_cache`` exists only
when the server runs with ``VLLM_SERVER_DEV_MODE=1``, so the launch sets it
unless the configuration sets it itself.
"""

from __future__ import annotations

from ..suite import EngineConfig
from . import STARTUP_TIMEOUT_S
from .base import EngineAdapter, Launch, ResetRoute, find_executable


DEV_MODE_VAR = "VLLM_SERVER_DEV_MODE"  # turns on the development routes, /reset_prefix_cache among them
RESET_PREFIX_CACHE = ResetRoute("/reset_prefix_cache",
                                missing_hint=f"start it with {DEV_MODE_VAR}=1")


class VllmAdapter(EngineAdapter):
    name = "vllm"
    uses_gpus = True
    startup_timeout_s = STARTUP_TIMEOUT_S["vllm"]
    version_paths = ("/version",)
    option_keys = frozenset({"executable", "served_model_name"})
    metrics_format = "prometheus"
    cache_reset_routes = (RESET_PREFIX_CACHE,)

    def _executable(self, config: EngineConfig) -> str:
        return str(config.option("executable", "vllm"))

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        argv = [self._executable(config), "serve", launch.model or config.model, *config.args,
                "--host", launch.host, "--port", launch.port]
        if launch.served_model_name:
            argv += ["--served-model-name", launch.served_model_name]
        return argv

    def env(self, config: EngineConfig, launch: Launch) -> dict[str, str]:
        env = super().env(config, launch)
        env.setdefault(DEV_MODE_VAR, "1")  # a configuration's own value wins
        return env

    def missing_executable(self, config: EngineConfig) -> str | None:
        return find_executable(self._executable(config))


ADAPTER = VllmAdapter()
