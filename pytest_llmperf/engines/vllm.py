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
from .base import EngineAdapter, Launch, ResetRoute, find_executable, flag_value, size_flag


DEV_MODE_VAR = "VLLM_SERVER_DEV_MODE"  # turns on the development routes, /reset_prefix_cache among them
RESET_PREFIX_CACHE = ResetRoute("/reset_prefix_cache",
                                missing_hint=f"start it with {DEV_MODE_VAR}=1")

# The parallel sizes that multiply the GPUs one server uses (each defaults to 1). One engine (a DP rank) uses
# tp x pp x pcp GPUs; decode context parallelism (-dcp) reuses the TP ranks and expert parallelism
# (--enable-expert-parallel) spans TP x DP, so neither adds GPUs. The ranks on this node are -dpl when given
# (a multi-node DP run; the other nodes' ranks run elsewhere), one with -dpn (external load balancing: this
# server is that one rank), else every DP rank.
TENSOR_PARALLEL = ("--tensor-parallel-size", "-tp")
PIPELINE_PARALLEL = ("--pipeline-parallel-size", "-pp")
PREFILL_CONTEXT_PARALLEL = ("--prefill-context-parallel-size", "-pcp")
DATA_PARALLEL = ("--data-parallel-size", "-dp")
DATA_PARALLEL_LOCAL = ("--data-parallel-size-local", "-dpl")
DATA_PARALLEL_RANK = ("--data-parallel-rank", "-dpn")
# With DP, the API server and its engines talk over this port, at a fixed default (29550): two DP servers side
# by side would collide, so unless the configuration sets it, it gets a port reserved with the GPU lease.
DATA_PARALLEL_RPC_PORT = ("--data-parallel-rpc-port", "-dpp")


def _dashes(flag: str) -> str:
    """vLLM's parser reads ``--tensor_parallel_size`` as ``--tensor-parallel-size``."""
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


class VllmAdapter(EngineAdapter):
    name = "vllm"
    uses_gpus = True
    startup_timeout_s = STARTUP_TIMEOUT_S["vllm"]
    version_paths = ("/version",)
    option_keys = frozenset({"executable", "served_model_name"})
    metrics_format = "prometheus"
    cache_reset_routes = (RESET_PREFIX_CACHE,)
    gpu_flags = (*TENSOR_PARALLEL, *PIPELINE_PARALLEL, *PREFILL_CONTEXT_PARALLEL, *DATA_PARALLEL, *DATA_PARALLEL_LOCAL,
                 *DATA_PARALLEL_RANK)
    flag_spelling = staticmethod(_dashes)

    def _executable(self, config: EngineConfig) -> str:
        return str(config.option("executable", "vllm"))

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        argv = [self._executable(config), "serve", launch.model or config.model, *config.args,
                "--host", launch.host, "--port", launch.port]
        if launch.served_model_name:
            argv += ["--served-model-name", launch.served_model_name]
        for flag, port in launch.extra_ports:
            argv += [flag, port]
        return argv

    def port_flags(self, config: EngineConfig) -> tuple[str, ...]:
        if size_flag(config, DATA_PARALLEL, normalize=_dashes) > 1 and flag_value(
                config.args, DATA_PARALLEL_RPC_PORT, _dashes) is None:
            return DATA_PARALLEL_RPC_PORT[:1]
        return ()

    def gpus_needed(self, config: EngineConfig) -> int:
        """tp x pp x pcp x the DP ranks on this node (see the flags above)."""
        per_rank = 1
        for names in (TENSOR_PARALLEL, PIPELINE_PARALLEL, PREFILL_CONTEXT_PARALLEL):
            per_rank *= size_flag(config, names, normalize=_dashes)
        ranks = size_flag(config, DATA_PARALLEL, normalize=_dashes)
        if flag_value(config.args, DATA_PARALLEL_LOCAL, _dashes) is not None:
            ranks = size_flag(config, DATA_PARALLEL_LOCAL, normalize=_dashes)
        elif flag_value(config.args, DATA_PARALLEL_RANK, _dashes) is not None:
            ranks = 1
        return per_rank * ranks

    def env(self, config: EngineConfig, launch: Launch) -> dict[str, str]:
        env = super().env(config, launch)
        env.setdefault(DEV_MODE_VAR, "1")  # a configuration's own value wins
        return env

    def missing_executable(self, config: EngineConfig) -> str | None:
        return find_executable(self._executable(config))


ADAPTER = VllmAdapter()
