"""SGLang: ``python3 -m sglang.launch_server --model-path MODEL [flags]``.

It refuses connections while loading, then answers 503 on ``/health`` during
its warm-up while other routes already answer: ready is ``/health`` 200.
Its version is in ``GET /get_server_info``. ``GET /metrics`` exists only with
``--enable-metrics``, which the launch adds unless the configuration has it;
``POST /flush_cache`` empties its caches and answers 400 while requests are
running or waiting.

A configuration with ``chat_template = true`` is launched with the template
the user gives (``--chat-template PATH``); without one the flag is left out
and the run says so. ``chat_template = "PATH"`` names a file directly
(relative to the suite file).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..suite import EngineConfig
from . import STARTUP_TIMEOUT_S
from .base import EngineAdapter, Launch, ResetRoute, python_module_missing

MODULE = "sglang.launch_server"
ENABLE_METRICS = "--enable-metrics"
FLUSH_CACHE = ResetRoute("/flush_cache", busy_statuses=frozenset({400}))


class SglangAdapter(EngineAdapter):
    name = "sglang"
    uses_gpus = True
    startup_timeout_s = STARTUP_TIMEOUT_S["sglang"]
    version_paths = ("/get_server_info", "/version")
    option_keys = frozenset({"python", "chat_template", "served_model_name"})
    metrics_format = "prometheus"
    cache_reset_routes = (FLUSH_CACHE,)

    def _python(self, config: EngineConfig) -> str:
        return str(config.option("python", sys.executable))

    def _template(self, config: EngineConfig, launch: Launch) -> Path | None:
        """--chat-template first (as other command-line options override the suite), then the suite's file."""
        option = config.option("chat_template", False)
        if option and launch.chat_template is not None:
            return launch.chat_template
        if isinstance(option, str):
            path = Path(option)
            return path if path.is_absolute() else Path(config.source_dir) / path
        return launch.chat_template if option else None

    def validate(self, config: EngineConfig) -> None:
        super().validate(config)
        option = config.option("chat_template", False)
        if not isinstance(option, (bool, str)) or option == "":
            raise ValueError(f"{config.id}: chat_template must be true (use --chat-template PATH) or a file path, "
                             f"got {option!r}")
        if isinstance(option, str):
            path = self._template(config, Launch())
            if path is not None and not path.is_file():
                raise ValueError(f"{config.id}: chat template {path} does not exist")

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        argv = [self._python(config), "-m", MODULE, "--model-path", launch.model or config.model]
        template = self._template(config, launch)
        if template is not None:
            argv += ["--chat-template", str(template)]
        argv += [*config.args, "--host", launch.host, "--port", launch.port]
        if ENABLE_METRICS not in config.args:
            argv.append(ENABLE_METRICS)
        if launch.served_model_name:
            argv += ["--served-model-name", launch.served_model_name]
        return argv

    def notes(self, config: EngineConfig, launch: Launch) -> list[str]:
        if config.option("chat_template") is True and launch.chat_template is None:
            return [f"{config.id} runs without --chat-template: this configuration was written for a chat template; "
                    f"give yours with --chat-template PATH"]
        return []

    def missing_executable(self, config: EngineConfig) -> str | None:
        return python_module_missing(self._python(config), MODULE)


ADAPTER = SglangAdapter()
