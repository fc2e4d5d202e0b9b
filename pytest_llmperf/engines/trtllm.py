"""TensorRT-LLM: ``trtllm-serve MODEL [flags]`` (underscore flags, never abbreviated).

Ready when ``GET /health`` answers 200 (connections are refused while the
model loads; the newest releases answer 503 until ready). ``GET /version``
answers ``{"version": ...}``. Its request models forbid unknown fields (HTTP
400), so the load generator sends it only the fields listed here.
``GET /metrics`` is JSON iteration stats, drained by each read (the plugin
must be their only reader). It has no cache-reset route.
"""

from __future__ import annotations

from ..suite import EngineConfig
from . import STARTUP_TIMEOUT_S
from .base import EngineAdapter, Launch, find_executable, flag_value, size_flag

# Top-level fields of TRT-LLM's OpenAI requests that the load generator may
# send, per endpoint (its request models reject any other field with HTTP 400;
# chat takes max_tokens as an alias of max_completion_tokens, completions
# rejects max_completion_tokens).
_COMMON = {"model", "stream", "stream_options", "ignore_eos", "min_tokens", "temperature", "top_p", "seed", "stop", "n"}
REQUEST_FIELDS = {
    "/v1/chat/completions": frozenset(_COMMON | {"messages", "max_completion_tokens", "max_tokens", "chat_template_kwargs"}),
    "/v1/completions": frozenset(_COMMON | {"prompt", "max_tokens"}),
}


# GPUs = tp x pp (each defaults to 1); expert parallelism (--ep_size) splits the TP ranks and adds none. Read
# from the flags only: this adapter does not read the --extra_llm_api_options (newer: --config) YAML, which
# may set tensor_parallel_size or pipeline_parallel_size over the flags, so with that file the count is
# unknown (None) and the suite's ``gpus = N`` says it.
TENSOR_PARALLEL = ("--tp_size",)
PIPELINE_PARALLEL = ("--pp_size",)
EXTRA_OPTIONS = ("--extra_llm_api_options", "--config")


class TrtllmAdapter(EngineAdapter):
    name = "trtllm"
    uses_gpus = True
    startup_timeout_s = STARTUP_TIMEOUT_S["trtllm"]
    version_paths = ("/version",)
    option_keys = frozenset({"executable"})
    request_fields = REQUEST_FIELDS
    metrics_format = "trtllm-json"
    cache_reset_routes = ()  # none: runs after the first may find the KV cache warm
    takes_served_model_name = False  # the seed's release has no such flag: it serves the model's own name
    gpu_flags = (*TENSOR_PARALLEL, *PIPELINE_PARALLEL)

    def _executable(self, config: EngineConfig) -> str:
        return str(config.option("executable", "trtllm-serve"))

    def argv(self, config: EngineConfig, launch: Launch) -> list[str]:
        return [self._executable(config), launch.model or config.model, *config.args,
                "--host", launch.host, "--port", launch.port]

    def gpus_needed(self, config: EngineConfig) -> int | None:
        gpus = size_flag(config, TENSOR_PARALLEL) * size_flag(config, PIPELINE_PARALLEL)  # bad values fail either way
        return None if flag_value(config.args, EXTRA_OPTIONS) is not None else gpus

    def missing_executable(self, config: EngineConfig) -> str | None:
        return find_executable(self._executable(config))


ADAPTER = TrtllmAdapter()
