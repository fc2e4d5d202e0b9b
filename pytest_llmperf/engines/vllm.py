"""vLLM: ``vllm serve MODEL [flags]``.

Ready when ``GET /health`` answers 200 (the port refuses connections until
the engine is built); ``GET /version`` answers ``{"version": ...}``.
"""

from __future__ import annotations

from ..suite import EngineConfig
from . import STARTUP_TIMEOUT_S
from .base import EngineAdapter, Launch, find_executable


class VllmAdapter(EngineAdapter):
    name = "vllm"
    uses_gpus = True
    startup_timeout_s = STARTUP_TIMEOUT_S["vllm"]
    version_paths = ("/version",)
    option_keys = frozenset({"executable", "served_model_name"})

    def _executable(self, config: EngineConfig) -> str:
        return str(config.option("executable", "vllm"))

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        argv = [self._executable(config), "serve", launch.model or config.model, *config.args,
                "--host", launch.host, "--port", launch.port]
        if launch.served_model_name:
            argv += ["--served-model-name", launch.served_model_name]
        return argv

    def missing_executable(self, config: EngineConfig) -> str | None:
        return find_executable(self._executable(config))


ADAPTER = VllmAdapter()
