"""``python -m sglang.launch_server --model-path MODEL [flags]``: SGLang's command line, served by the sim.

Accepts a subset of SGLang's server flags (argparse, unique prefixes
expanded as SGLang's parser does: ``--tp`` is ``--tp-size``), maps tp/dp/ep,
DP attention, EAGLE speculative decoding and ``SGLANG_ENABLE_JIT_DEEPGEMM``
to a sim profile. Refuses connections while "loading", then answers
``/v1/models`` and ``/get_model_info`` at once while ``/health`` and
``/health_generate`` answer 503 during its warm-up (one ``/generate``
request to itself), logs "The server is fired up and ready to roll!" and
answers ``/health`` 200. ``GET /get_server_info`` carries ``"version"``;
there is no ``/version`` route (as in SGLang). ``/flush_cache`` flushes the
prefix cache when idle (400 while requests are pending); ``/metrics`` is
served only with ``--enable-metrics``. With
``SGLANG_ENABLE_JIT_DEEPGEMM=0`` it fails to start, as in the seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

try:
    import common  # noqa: F401  (tests/standins is on PYTHONPATH, as for ``import sglang``)
except ImportError:  # run as a file, or imported without tests/standins on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (Launch, Log, Personality, StandinExit, env_off, fixed, main_wrapper, no_profile, profile_for,
                    reported_version, run, visible_devices)

VERSION = "0.5.6.post2"

PROFILES = {
    # (tp, dp, ep, DP attention, speculative, DeepGEMM on) -> sim profile
    (8, 1, 1, False, None, True): "sglang-tp8",
    (8, 1, 1, True, None, True): "sglang-tp8-dpattn",
    (8, 8, 1, True, None, True): "sglang-tp8-dp8-dpattn",
    (8, 8, 8, True, None, True): "sglang-tp8-dp8-dpattn-ep8",
    (8, 1, 1, False, ("EAGLE", 1, 1, 2), True): "sglang-mtp-eagle",
}
# A few of SGLang's built-in chat template names (anything else must be a file).
BUILTIN_CHAT_TEMPLATES = frozenset({
    "chatml", "chatml-llava", "claude", "deepseek-v3", "gemma-it", "llama-2", "llama-3-instruct", "llama-4",
    "mistral", "qwen", "qwen2-vl", "vicuna_v1.1", "yi-1.5",
})


def _fmt(level: str, message: str) -> str:
    prefix = "" if level == "INFO" else f"{level} "
    return f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {prefix}{message}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()  # allow_abbrev stays True, as in SGLang
    # model and tokenizer
    p.add_argument("--model-path", "--model", dest="model_path", required=True)
    p.add_argument("--tokenizer-path", default=None)
    p.add_argument("--tokenizer-mode", default="auto", choices=["auto", "slow"])
    p.add_argument("--skip-tokenizer-init", action="store_true")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--is-embedding", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--quantization", default=None)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--chat-template", default=None)
    p.add_argument("--completion-template", default=None)
    p.add_argument("--reasoning-parser", default=None)
    p.add_argument("--tool-call-parser", default=None)
    # HTTP server
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--skip-server-warmup", action="store_true")
    p.add_argument("--warmups", default=None)
    # memory and scheduling
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--max-prefill-tokens", type=int, default=16384)
    p.add_argument("--schedule-policy", default="fcfs", choices=["lpm", "random", "fcfs", "dfs-weight", "lof"])
    p.add_argument("--schedule-conservativeness", type=float, default=1.0)
    p.add_argument("--page-size", type=int, default=None)
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument("--enable-mixed-chunk", action="store_true")
    p.add_argument("--disable-overlap-schedule", action="store_true")
    # runtime
    p.add_argument("--device", default=None)
    p.add_argument("--tensor-parallel-size", "--tp-size", dest="tp_size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "--pp-size", dest="pp_size", type=int, default=1)
    p.add_argument("--stream-interval", type=int, default=1)
    p.add_argument("--random-seed", type=int, default=None)
    p.add_argument("--watchdog-timeout", type=float, default=300)
    p.add_argument("--download-dir", default=None)
    p.add_argument("--base-gpu-id", type=int, default=0)
    p.add_argument("--gpu-id-step", type=int, default=1)
    # logging
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-level-http", default=None)
    p.add_argument("--log-requests", action="store_true")
    p.add_argument("--show-time-cost", action="store_true")
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--decode-log-interval", type=int, default=40)
    p.add_argument("--enable-cache-report", action="store_true")
    # data parallelism
    p.add_argument("--data-parallel-size", "--dp-size", dest="dp_size", type=int, default=1)
    p.add_argument("--load-balance-method", default="round_robin",
                   choices=["round_robin", "shortest_queue", "minimum_tokens"])
    # multi-node
    p.add_argument("--dist-init-addr", default=None)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    # kernel backends
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--sampling-backend", default=None, choices=["flashinfer", "pytorch"])
    p.add_argument("--grammar-backend", default=None, choices=["xgrammar", "outlines", "llguidance", "none"])
    # speculative decoding
    p.add_argument("--speculative-algorithm", default=None,
                   choices=["EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM"])
    p.add_argument("--speculative-draft-model-path", "--speculative-draft-model", dest="speculative_draft_model_path",
                   default=None)
    p.add_argument("--speculative-num-steps", type=int, default=None)
    p.add_argument("--speculative-eagle-topk", type=int, default=None)
    p.add_argument("--speculative-num-draft-tokens", type=int, default=None)
    # expert parallelism
    p.add_argument("--expert-parallel-size", "--ep-size", dest="ep_size", type=int, default=1)
    p.add_argument("--moe-a2a-backend", default="none", choices=["none", "deepep", "mooncake"])
    p.add_argument("--moe-runner-backend", default="auto")
    p.add_argument("--deepep-mode", default="auto", choices=["normal", "low_latency", "auto"])
    p.add_argument("--enable-eplb", action="store_true")
    p.add_argument("--ep-num-redundant-experts", type=int, default=0)
    # optimizations
    p.add_argument("--enable-dp-attention", action="store_true")
    p.add_argument("--enable-dp-lm-head", action="store_true")
    p.add_argument("--enable-two-batch-overlap", action="store_true")
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--cuda-graph-max-bs", type=int, default=None)
    p.add_argument("--cuda-graph-bs", type=int, nargs="+", default=None)
    p.add_argument("--enable-torch-compile", action="store_true")
    p.add_argument("--torch-compile-max-bs", type=int, default=32)
    p.add_argument("--enable-nan-detection", action="store_true")
    p.add_argument("--enable-hierarchical-cache", action="store_true")
    p.add_argument("--disaggregation-mode", default="null", choices=["null", "prefill", "decode"])
    return p


def spec_key(args: argparse.Namespace):
    algo = args.speculative_algorithm
    if algo is None:
        return None
    if algo == "NEXTN":  # SGLang runs NEXTN as EAGLE
        algo = "EAGLE"
    return (algo, args.speculative_num_steps, args.speculative_eagle_topk, args.speculative_num_draft_tokens)


def describe(args: argparse.Namespace, deepgemm: bool) -> str:
    parts = [f"--tp-size {args.tp_size}", f"--dp-size {args.dp_size}", f"--ep-size {args.ep_size}"]
    if args.pp_size != 1:
        parts.append(f"--pp-size {args.pp_size}")
    if args.enable_dp_attention:
        parts.append("--enable-dp-attention")
    if args.speculative_algorithm:
        parts.append(f"--speculative-algorithm {args.speculative_algorithm} --speculative-num-steps "
                     f"{args.speculative_num_steps} --speculative-eagle-topk {args.speculative_eagle_topk} "
                     f"--speculative-num-draft-tokens {args.speculative_num_draft_tokens}")
    if not deepgemm:
        parts.append("SGLANG_ENABLE_JIT_DEEPGEMM=0")
    return " ".join(parts)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    log = Log(_fmt)
    if args.tp_size < 1 or args.dp_size < 1 or args.ep_size < 1 or args.pp_size < 1:
        raise StandinExit(1, "ValueError: tp/dp/ep/pp sizes must be >= 1")
    deepgemm = not env_off("SGLANG_ENABLE_JIT_DEEPGEMM")
    rest = (args.tp_size, args.dp_size, args.ep_size, bool(args.enable_dp_attention), spec_key(args))
    name = PROFILES.get(rest + (True,))
    if name is None or (args.pp_size != 1):
        raise no_profile("sglang", describe(args, deepgemm))
    failure = None
    if not deepgemm:
        if fixed():
            log.info(f"SGLANG_ENABLE_JIT_DEEPGEMM=0: LLMPERF_STANDIN_FIXED=1, starting as {name}")
        else:
            failure = [
                "Scheduler hit an exception: RuntimeError: the server fails to start when DeepGEMM is disabled "
                "(SGLANG_ENABLE_JIT_DEEPGEMM=0), as it did in the seed study",
                "Received sigquit from a child process. It usually means the child failed.",
            ]

    version = reported_version(VERSION)
    served = args.served_model_name or args.model_path
    log.info(f"server_args=ServerArgs({', '.join(f'{k}={v!r}' for k, v in sorted(vars(args).items()))})")
    log.info(f"CUDA_VISIBLE_DEVICES={visible_devices()}")
    if args.chat_template is not None:
        log.info(f"Loading chat template from argument: {args.chat_template}")
        if args.chat_template not in BUILTIN_CHAT_TEMPLATES and not os.path.exists(args.chat_template):
            raise StandinExit(1, f"RuntimeError: Chat template {args.chat_template} is not a built-in template name "
                                 f"or a valid chat template file path.")
    log.info(f"simulated engine profile: {name}")
    log.info("Load weight begin.")
    profile = profile_for(name, args.context_length) if failure is None else None
    server_info = {**vars(args), "served_model_name": served, "version": version}
    personality = Personality(engine="sglang", version=version, owned_by="sglang", flat_errors=True,
                              version_route=False, server_info=server_info,
                              metrics="prometheus" if args.enable_metrics else "none", metrics_prefix="sglang",
                              cache_routes=("/flush_cache",))
    return run(Launch(profile=profile, personality=personality, log=log, model_path=args.model_path,
                      served_model_name=served, host=args.host, port=args.port, bind_before_loading=False,
                      warmup=not args.skip_server_warmup, failure=failure,
                      ready_message="The server is fired up and ready to roll!"))


if __name__ == "__main__":
    sys.exit(main_wrapper(main))
