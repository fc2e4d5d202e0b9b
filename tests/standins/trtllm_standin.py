"""``trtllm-serve MODEL [flags]``: TensorRT-LLM's command line, served by the simulated engine.

Accepts a subset of trtllm-serve's (click) options, underscore spelled and
never abbreviated; an unknown one exits 2 with click's "No such option".
``--extra_llm_api_options``/``--config`` YAML overrides the command line
(simple top-level ``key: value`` lines are read). Maps tp/ep/pp and
``TRTLLM_DG_ENABLED`` to a sim profile, keeps the port bound but not
listening while "loading", and, as trtllm-serve's request models forbid
extra fields, answers HTTP 400 naming any top-level request field that
TensorRT-LLM's ``ChatCompletionRequest``/``CompletionRequest`` do not declare.
``GET /metrics`` returns the iteration stats since the last read (JSON) and
drains them; there is no cache reset route.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from common import (Launch, Log, Personality, StandinExit, env_off, main_wrapper, no_profile, profile_for,
                    reported_version, run, visible_devices)

VERSION = "1.2.0rc5"
PROG = "trtllm-serve"

# Top-level fields of tensorrt_llm/serve/openai_protocol.py's request models (late 2025, the 1.2 line);
# both models are pydantic with extra="forbid". Chat reads its token limit as ``max_completion_tokens``,
# validation alias ``max_tokens`` (populate_by_name: both spellings); completions know only ``max_tokens``.
CHAT_FIELDS = frozenset({
    "messages", "prompt_token_ids", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_completion_tokens", "max_tokens", "n", "presence_penalty", "response_format", "seed", "stop", "stream",
    "stream_options", "temperature", "top_p", "tools", "tool_choice", "user", "reasoning_effort",
    "prompt_ignore_length",
    # sampling extras
    "best_of", "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty", "length_penalty",
    "early_stopping", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens", "lora_request",
    # chat extras
    "echo", "add_generation_prompt", "add_special_tokens", "documents", "chat_template", "chat_template_kwargs",
    "disaggregated_params", "cache_salt",
})
COMPLETION_FIELDS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
    "lora_request", "prompt_ignore_length",
    # sampling extras
    "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty", "length_penalty", "early_stopping",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "return_context_logits", "detokenize",
    # completion extras
    "add_special_tokens", "response_format", "disaggregated_params",
})
STRICT_FIELDS = {"/v1/chat/completions": CHAT_FIELDS, "/v1/completions": COMPLETION_FIELDS}
REQUIRED_FIELDS = {"/v1/chat/completions": frozenset({"messages", "model"}),
                   "/v1/completions": frozenset({"model", "prompt"})}

PROFILES = {
    # (tp, ep, pp, DeepGEMM on) -> sim profile; ep 1 (or unset) keeps the experts tensor parallel
    (8, 1, 1, True): "trtllm-tp8",
    (8, 8, 1, True): "trtllm-tp8-ep8",
    (8, 8, 1, False): "trtllm-tp8-ep8-no-deepgemm",
}
LOG_LEVELS = ["internal_error", "error", "warning", "info", "verbose", "debug", "trace"]


def _fmt(level: str, message: str) -> str:
    letter = {"INFO": "I", "WARNING": "W", "ERROR": "E"}.get(level, "I")
    return f"[{time.strftime('%m/%d/%Y-%H:%M:%S')}] [TRT-LLM] [{letter}] {message}"


class ClickLikeParser(argparse.ArgumentParser):
    """argparse with click's usage errors (exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        m = re.match(r"argument (\S+): invalid (\w+) value: '(.*)'", message)
        if m:
            kind = {"int": "integer", "float": "float"}.get(m.group(2), m.group(2))
            names = " / ".join(f"'{n}'" for n in m.group(1).split("/"))
            message = f"Invalid value for {names}: '{m.group(3)}' is not a valid {kind}."
        elif message.startswith("the following arguments are required: MODEL"):
            message = "Missing argument 'MODEL'."
        elif m := re.match(r"argument (\S+?)(?:/\S+)?: expected one argument", message):
            message = f"Option '{m.group(1)}' requires an argument."
        elif m := re.match(r"argument (\S+?)(?:/\S+)?: invalid choice: '(.*?)'", message):
            message = f"Invalid value for '{m.group(1)}': '{m.group(2)}' is not one of the choices."
        self.exit(2, f"Usage: {PROG} [OPTIONS] MODEL\nTry '{PROG} --help' for help.\n\nError: {message}\n")


def build_parser() -> ClickLikeParser:
    p = ClickLikeParser(prog=PROG, allow_abbrev=False, usage=f"{PROG} [OPTIONS] MODEL",
                        description="Running an OpenAI API compatible server. "
                                    "MODEL: model name | HF checkpoint path | TensorRT engine path")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--custom_tokenizer", default=None)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="pytorch", choices=["pytorch", "tensorrt", "trt", "_autodeploy"])
    p.add_argument("--custom_module_dirs", action="append", default=[])
    p.add_argument("--log_level", default="info", choices=LOG_LEVELS)
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument("--max_batch_size", type=int, default=2048)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--max_seq_len", type=int, default=None)
    p.add_argument("--tensor_parallel_size", "--tp_size", dest="tp_size", type=int, default=1)
    p.add_argument("--pipeline_parallel_size", "--pp_size", dest="pp_size", type=int, default=1)
    p.add_argument("--context_parallel_size", "--cp_size", dest="cp_size", type=int, default=1)
    p.add_argument("--moe_expert_parallel_size", "--ep_size", dest="ep_size", type=int, default=None)
    p.add_argument("--moe_cluster_parallel_size", "--cluster_size", dest="cluster_size", type=int, default=None)
    p.add_argument("--gpus_per_node", type=int, default=None)
    p.add_argument("--free_gpu_memory_fraction", "--kv_cache_free_gpu_memory_fraction",
                   dest="free_gpu_memory_fraction", type=float, default=0.9)
    p.add_argument("--num_postprocess_workers", type=int, default=0)
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--config", "--extra_llm_api_options", dest="extra_llm_api_options", default=None)
    p.add_argument("--reasoning_parser", default=None)
    p.add_argument("--tool_parser", default=None)
    p.add_argument("--metadata_server_config_file", default=None)
    p.add_argument("--server_role", default=None)
    p.add_argument("--fail_fast_on_attention_window_too_large", action="store_true")
    p.add_argument("--otlp_traces_endpoint", default=None)
    p.add_argument("--disagg_cluster_uri", default=None)
    p.add_argument("--enable_chunked_prefill", action="store_true")
    p.add_argument("--media_io_kwargs", default=None)
    p.add_argument("--chat_template", default=None)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] == "serve":  # the default command of the trtllm-serve group
        argv = argv[1:]
    elif argv and argv[0] in ("disaggregated", "disaggregated_mpi_worker", "mm_embedding_serve", "grpc"):
        raise StandinExit(2, f"Error: the stand-in emulates only `{PROG} [serve] MODEL`, not `{argv[0]}`")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for item in extra:
        if item.startswith("-"):
            parser.error(f"No such option: {item.split('=', 1)[0]}")
    if extra:
        parser.error(f"Got unexpected extra argument ({extra[0]})")
    return args


def yaml_overrides(path: str) -> dict[str, object]:
    """Top-level ``key: value`` scalars of the extra LLM API options file (nested blocks are ignored)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise StandinExit(1, f"FileNotFoundError: {exc}") from None
    out: dict[str, object] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][\w]*)\s*:\s*([^#]*?)\s*(?:#.*)?$", line)
        if not m or not m.group(2):
            continue
        value: object = m.group(2).strip("'\"")
        if re.fullmatch(r"-?\d+", str(value)):
            value = int(str(value))
        out[m.group(1)] = value
    return out


def served_name(model: str) -> str:
    """trtllm-serve names the model after a local checkpoint directory, else as given."""
    path = Path(model)
    return path.name if path.is_dir() else model


def main(argv: list[str]) -> int:
    args = parse(argv)
    log = Log(_fmt)
    tp, ep, pp, max_seq_len = args.tp_size, args.ep_size, args.pp_size, args.max_seq_len
    if args.extra_llm_api_options:
        extra = yaml_overrides(args.extra_llm_api_options)
        tp = int(extra.get("tensor_parallel_size", tp))  # type: ignore[arg-type]
        pp = int(extra.get("pipeline_parallel_size", pp))  # type: ignore[arg-type]
        if "moe_expert_parallel_size" in extra:
            ep = int(extra["moe_expert_parallel_size"])  # type: ignore[arg-type]
        if "max_seq_len" in extra:
            max_seq_len = int(extra["max_seq_len"])  # type: ignore[arg-type]
    if tp < 1 or pp < 1 or (ep is not None and ep < 1):
        raise StandinExit(1, f"ValueError: parallel sizes must be >= 1 (tp_size={tp}, pp_size={pp}, ep_size={ep})")
    if ep is not None and tp % ep != 0:
        raise StandinExit(1, f"ValueError: tp_size ({tp}) must be divisible by moe_expert_parallel_size ({ep})")
    deepgemm = not env_off("TRTLLM_DG_ENABLED")
    name = PROFILES.get((tp, ep or 1, pp, deepgemm))
    if name is None:
        raise no_profile("trtllm", f"--tp_size {tp} --ep_size {ep} --pp_size {pp}"
                                   + ("" if deepgemm else " TRTLLM_DG_ENABLED=0"))
    profile = profile_for(name, max_seq_len)

    version = reported_version(VERSION)
    Log.raw(f"[TensorRT-LLM] TensorRT-LLM version: {version}")
    log.info(f"CUDA_VISIBLE_DEVICES={visible_devices()}")
    log.info(f"simulated engine profile: {name}")
    log.info(f"Using LLM with {'PyTorch' if args.backend == 'pytorch' else args.backend} backend")
    log.info(f"tp_size={tp}, pp_size={pp}, moe_ep_size={ep}, DeepGEMM {'on' if deepgemm else 'off'}; "
             f"loading {args.model}")
    personality = Personality(engine="trtllm", version=version, owned_by="tensorrt_llm",
                              strict_fields=STRICT_FIELDS, required_fields=REQUIRED_FIELDS, flat_errors=True,
                              metrics="json", tokenize_route=False)
    return run(Launch(profile=profile, personality=personality, log=log, model_path=args.model,
                      served_model_name=served_name(args.model), host=args.host, port=args.port,
                      bind_before_loading=True))


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
