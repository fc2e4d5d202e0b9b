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
from .base import EngineAdapter, Launch, ResetRoute, flag_value, python_module_missing, size_flag

MODULE = "sglang.launch_server"
ENABLE_METRICS = "--enable-metrics"
FLUSH_CACHE = ResetRoute("/flush_cache", busy_statuses=frozenset({400}))

# The parallel sizes (each defaults to 1); SGLang's parser also takes a unique prefix, so --tp and --dp are
# the same flags. Without DP attention each of the dp_size replicas is a whole tp x pp engine on its own GPUs:
# GPUs = tp x dp x pp. With --enable-dp-attention the DP ranks split the attention of one TP group (dp divides
# tp), so GPUs = tp x pp; newer releases say this with --attn-dp-size N, read the same way. Expert
# parallelism (--ep-size) and decode context parallelism (--dcp-size) live inside the TP group and add none.
# A multi-node launch (--nnodes) is counted whole: the GPUs of every node together.
TENSOR_PARALLEL = ("--tp-size", "--tensor-parallel-size", "--tp")
DATA_PARALLEL = ("--dp-size", "--data-parallel-size", "--dp")
PIPELINE_PARALLEL = ("--pp-size", "--pipeline-parallel-size", "--pp")
DP_ATTENTION = "--enable-dp-attention"
ATTENTION_DP_SIZE = ("--attn-dp-size",)


class SglangAdapter(EngineAdapter):
    name = "sglang"
    uses_gpus = True
    startup_timeout_s = STARTUP_TIMEOUT_S["sglang"]
    version_paths = ("/get_server_info", "/version")
    option_keys = frozenset({"python", "chat_template", "served_model_name"})
    metrics_format = "prometheus"
    cache_reset_routes = (FLUSH_CACHE,)
    gpu_flags = (*TENSOR_PARALLEL, *DATA_PARALLEL, *PIPELINE_PARALLEL, *ATTENTION_DP_SIZE)
    gpu_switches = (DP_ATTENTION,)

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

    def gpus_needed(self, config: EngineConfig) -> int:
        """tp x pp, times dp unless DP attention puts the DP ranks inside the TP group (see above)."""
        tp = size_flag(config, TENSOR_PARALLEL)
        pp = size_flag(config, PIPELINE_PARALLEL)
        dp = size_flag(config, DATA_PARALLEL)
        dp_attention = DP_ATTENTION in config.args
        if flag_value(config.args, ATTENTION_DP_SIZE) is not None:
            size_flag(config, ATTENTION_DP_SIZE)  # checked like the others
            dp_attention = True
        return tp * pp if dp_attention else tp * dp * pp

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
