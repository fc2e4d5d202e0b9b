"""``vllm serve MODEL [flags]``: vLLM's command line, served by the simulated engine.

Accepts a subset of vLLM 0.13's flags (unknown or removed ones exit 2 with
argparse's "unrecognized arguments"; no abbreviations; ``--foo_bar`` is read
as ``--foo-bar`` as vLLM's parser does), maps the parallelism, speculative
and DeepGEMM settings to a sim profile, passes ``--api-key`` (else
``VLLM_API_KEY``) and ``--ssl-certfile``/``--ssl-keyfile`` on to the sim,
reserves the port while "loading" (connections refused, no 503 phase) and
answers ``/health``, ``/version``, ``/metrics`` and the OpenAI routes, and
``POST /reset_prefix_cache`` only with ``VLLM_SERVER_DEV_MODE=1``. ``-dcp > 1`` fails
after loading as in the seed (FlashMLA sparse returns no softmax LSE; vLLM
issue 27544).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import (Launch, Log, Personality, StandinExit, env_off, fixed, main_wrapper, no_profile, profile_for,
                    reported_version, run, visible_devices, MODEL_MAX_CONTEXT)

VERSION = "0.13.0"
ENV_API_KEY = "VLLM_API_KEY"
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"

PROFILES = {
    # (tp, dp, pp, expert parallel, speculative, DeepGEMM on) -> sim profile
    (8, 1, 1, False, None, True): "vllm-tp8",
    (8, 1, 1, False, None, False): "vllm-tp8-no-deepgemm",
    (1, 8, 1, True, None, True): "vllm-dp8-ep",
    (8, 1, 1, False, ("mtp", 1), True): "vllm-mtp1",
    # Not of the seed: TP4 for the tests of which GPUs a smaller configuration gets (timed as TP8; no figure of
    # these tests depends on it).
    (4, 1, 1, False, None, True): "vllm-tp8",
}
DCP_FAILURE = ("decode context parallel (-dcp {dcp}) needs the attention backend to return the softmax LSE, "
               "but FlashMLA sparse attention (FLASHMLA_SPARSE, the backend of DeepSeek-V3.2) does not return "
               "the softmax LSE (vLLM issue 27544)")


def _fmt(level: str, message: str) -> str:
    return f"(APIServer pid={os.getpid()}) {level} {time.strftime('%m-%d %H:%M:%S')} [api_server.py] {message}"


def human_int(text: str) -> int:
    """vLLM's readable integers: ``81920``, ``80k`` (x1000), ``80K`` (x1024), ``1m``/``1M``."""
    units = {"k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
    t = text.strip()
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Invalid value {text!r}: expected an integer such as 81920 or 80k") from None


def json_object(text: str) -> dict:
    """A config given as JSON (vLLM: ``Value X cannot be converted to <json.loads>``)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Value {text} cannot be converted to {json.loads}.") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"Value {text} cannot be converted to a config: expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vllm", allow_abbrev=False,
                                  description="vLLM CLI (stand-in: only `vllm serve` is emulated)")
    top.add_argument("-v", "--version", action="version", version=reported_version(VERSION))
    sub = top.add_subparsers(dest="subparser", required=True, metavar="{serve}")
    p = sub.add_parser("serve", prog="vllm serve", allow_abbrev=False, usage="vllm serve [model_tag] [options]",
                       help="Launch a local OpenAI-compatible API server to serve LLM completions via HTTP.")
    p.add_argument("model_tag", nargs="?", default=None, help="The model tag to serve")
    bool_flag = argparse.BooleanOptionalAction

    # frontend
    p.add_argument("--host", default=None, help="Host name (default: all interfaces).")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--uds", default=None)
    p.add_argument("--api-key", nargs="+", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--chat-template", default=None)
    p.add_argument("--chat-template-content-format", default="auto", choices=["auto", "string", "openai"])
    p.add_argument("--response-role", default="assistant")
    p.add_argument("--root-path", default=None)
    p.add_argument("--allowed-origins", type=json.loads, default=["*"])
    p.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    p.add_argument("--disable-uvicorn-access-log", action=bool_flag, default=False)
    p.add_argument("--enable-log-requests", action=bool_flag, default=False)
    p.add_argument("--disable-log-stats", action="store_true")
    p.add_argument("--enable-auto-tool-choice", action=bool_flag, default=False)
    p.add_argument("--tool-call-parser", default=None)
    p.add_argument("--reasoning-parser", default=None)
    p.add_argument("--enable-prompt-tokens-details", action=bool_flag, default=False)
    p.add_argument("--enable-force-include-usage", action=bool_flag, default=False)
    p.add_argument("--max-log-len", type=int, default=None)

    # model
    p.add_argument("--model", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--tokenizer-mode", default="auto")
    p.add_argument("--trust-remote-code", action=bool_flag, default=False)
    p.add_argument("--revision", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-model-len", type=human_int, default=None)
    p.add_argument("--quantization", "-q", default=None)
    p.add_argument("--enforce-eager", action=bool_flag, default=False)
    p.add_argument("--max-logprobs", type=int, default=20)
    p.add_argument("--hf-overrides", type=json_object, default=None)
    p.add_argument("--generation-config", default="auto")
    p.add_argument("--download-dir", default=None)
    p.add_argument("--load-format", default="auto")

    # cache
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--enable-prefix-caching", action=bool_flag, default=None)
    p.add_argument("--kv-cache-memory-bytes", type=human_int, default=None)

    # scheduler
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=human_int, default=None)
    p.add_argument("--enable-chunked-prefill", action=bool_flag, default=None)
    p.add_argument("--async-scheduling", "-asc", action=bool_flag, default=None)
    p.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])

    # parallel
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--data-parallel-size-local", "-dpl", type=int, default=None)
    p.add_argument("--data-parallel-rank", "-dpn", type=int, default=None)
    p.add_argument("--data-parallel-address", "-dpa", default=None)
    p.add_argument("--data-parallel-rpc-port", "-dpp", type=int, default=None)
    p.add_argument("--data-parallel-backend", "-dpb", default="mp", choices=["mp", "ray"])
    p.add_argument("--decode-context-parallel-size", "-dcp", type=int, default=1)
    p.add_argument("--enable-expert-parallel", "-ep", action=bool_flag, default=False)
    p.add_argument("--enable-eplb", action=bool_flag, default=False)
    p.add_argument("--all2all-backend", default=None)
    p.add_argument("--distributed-executor-backend", default=None, choices=["ray", "mp", "uni", "external_launcher"])

    # speculative decoding, compilation, KV transfer
    p.add_argument("--speculative-config", "-sc", type=json_object, default=None)
    p.add_argument("--compilation-config", "-cc", type=json_object, default=None)
    p.add_argument("--kv-transfer-config", type=json_object, default=None)
    return top


def normalize(argv: list[str]) -> list[str]:
    """As vLLM's parser: ``--foo_bar[=v]`` is ``--foo-bar[=v]``."""
    out = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            key, eq, val = a.partition("=")
            a = key.replace("_", "-") + eq + val
        out.append(a)
    return out


def describe(tp: int, dp: int, pp: int, ep: bool, spec, deepgemm: bool) -> str:
    parts = [f"-tp {tp}", f"-dp {dp}", f"-pp {pp}"]
    if ep:
        parts.append("--enable-expert-parallel")
    if spec is not None:
        parts.append(f"--speculative-config {json.dumps(spec, separators=(',', ':'))}")
    if not deepgemm:
        parts.append("VLLM_USE_DEEP_GEMM=0")
    return " ".join(parts)


def spec_key(spec: dict | None):
    if not spec:
        return None
    method = spec.get("method")
    if method in ("mtp", "deepseek_mtp") and spec.get("num_speculative_tokens") == 1:
        return ("mtp", 1)
    return ("unsupported", json.dumps(spec, sort_keys=True))


def dev_mode() -> bool:
    """``VLLM_SERVER_DEV_MODE``, read as vLLM reads it (an integer, 0 by default)."""
    text = os.environ.get("VLLM_SERVER_DEV_MODE", "0").strip() or "0"
    try:
        return bool(int(text))
    except ValueError:
        raise StandinExit(1, f"ValueError: invalid literal for int() with base 10: {text!r} "
                             f"(VLLM_SERVER_DEV_MODE)") from None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(normalize(argv))
    log = Log(_fmt)
    model = args.model_tag or args.model or DEFAULT_MODEL
    served = args.served_model_name[0] if args.served_model_name else model
    tp, dp, pp, dcp = args.tensor_parallel_size, args.data_parallel_size, args.pipeline_parallel_size, \
        args.decode_context_parallel_size
    for name, value in (("tensor_parallel_size", tp), ("data_parallel_size", dp), ("pipeline_parallel_size", pp),
                        ("decode_context_parallel_size", dcp)):
        if value < 1:
            raise StandinExit(1, f"ValueError: {name} must be >= 1, got {value}")
    if tp % dcp != 0:
        raise StandinExit(1, f"ValueError: tensor parallel size {tp} must be divisible by decode context "
                             f"parallel size {dcp}")
    if args.max_model_len is not None and args.max_model_len > MODEL_MAX_CONTEXT:
        raise StandinExit(1, f"ValueError: User-specified max_model_len ({args.max_model_len}) is greater than the "
                             f"derived max_model_len (max_position_embeddings={MODEL_MAX_CONTEXT} in model's "
                             f"config.json).")
    deepgemm = not env_off("VLLM_USE_DEEP_GEMM")
    key = (tp, dp, pp, bool(args.enable_expert_parallel), spec_key(args.speculative_config), deepgemm)
    name = PROFILES.get(key)
    if name is None:
        what = describe(tp, dp, pp, bool(args.enable_expert_parallel), args.speculative_config, deepgemm)
        raise no_profile("vllm", what + (f" -dcp {dcp}" if dcp > 1 else ""))
    failure = None
    if dcp > 1:
        if fixed():
            log.info(f"decode context parallel size {dcp}: LLMPERF_STANDIN_FIXED=1, starting as {name}")
        else:
            failure = ["EngineCore failed to start.",
                       f"RuntimeError: {DCP_FAILURE.format(dcp=dcp)}",
                       "RuntimeError: Engine core initialization failed. See root cause above. "
                       "Failed core proc(s): {}"]
    profile = profile_for(name, args.max_model_len) if failure is None else None

    version = reported_version(VERSION)
    log.info(f"vLLM API server version {version}")
    defaults = vars(build_parser().parse_args(["serve"]))
    non_default = {k: v for k, v in sorted(vars(args).items()) if k != "subparser" and v != defaults.get(k)}
    if "api_key" in non_default:
        non_default["api_key"] = ["<redacted>"] * len(args.api_key)  # the keys are never logged
    log.info(f"non-default args: {non_default}")
    log.info(f"CUDA_VISIBLE_DEVICES={visible_devices()}")
    log.info(f"simulated engine profile: {name}; world size {tp * dp * pp}")
    log.info(f"Resolved architecture: DeepseekV32ForCausalLM; loading {model}")
    # As vLLM: the development routes, /reset_prefix_cache among them, only with VLLM_SERVER_DEV_MODE=1.
    cache_routes = ("/reset_prefix_cache",) if dev_mode() else ()
    personality = Personality(engine="vllm", version=version, owned_by="vllm", metrics="prometheus",
                              cache_routes=cache_routes)
    # As vLLM: --api-key (one or more) takes precedence over VLLM_API_KEY; empty keys are none.
    api_keys = tuple(k for k in (args.api_key or [os.environ.get(ENV_API_KEY, "")]) if k)
    return run(Launch(profile=profile, personality=personality, log=log, model_path=model, served_model_name=served,
                      host=args.host if args.host is not None else "0.0.0.0", port=args.port,
                      bind_before_loading=True, failure=failure, api_keys=api_keys,
                      ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile))


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
