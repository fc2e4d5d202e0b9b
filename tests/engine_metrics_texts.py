"""Canned engine /metrics bodies, laid out as the engines lay them out (for tests and the parse benchmark).

``vllm_text`` follows vLLM 0.1x's exposition: every series labelled with
``engine`` (one per data-parallel engine) and ``model_name``, counters with
``_total``, histograms with their buckets; the values given are per engine.
"""

from __future__ import annotations

import json

MODEL = "deepseek-ai/DeepSeek-V3.2"
LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                     10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
REQUEST_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                     240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def _labels(engine: int, extra: str = "") -> str:
    return f'{{{extra}engine="{engine}",model_name="{MODEL}"}}'


def _histogram(lines: list[str], name: str, help_text: str, buckets: tuple, engines: int, count: int) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for e in range(engines):
        for i, le in enumerate(buckets):
            le_label = f'le="{float(le)}",'
            lines.append(f"{name}_bucket{_labels(e, le_label)} {float(count * (i + 1) // len(buckets))}")
        inf_label = 'le="+Inf",'
        lines.append(f"{name}_bucket{_labels(e, inf_label)} {float(count)}")
        lines.append(f"{name}_count{_labels(e)} {float(count)}")
        lines.append(f"{name}_sum{_labels(e)} {count * 0.37}")


def vllm_text(engines: int = 8, running: float = 0, waiting: float = 0, kv_usage: float = 0.0,
              preemptions: float = 0, prefix_queries: float = 0, prefix_hits: float = 0,
              prompt_tokens: float = 0, generation_tokens: float = 0, requests: int = 0,
              kv_name: str = "vllm:kv_cache_usage_perc", kv_usage_by_engine: dict[int, float] | None = None) -> str:
    """A vLLM /metrics body; every per-engine value is the same unless ``kv_usage_by_engine`` says otherwise."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, value_of) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        sample = f"{name}_total" if kind == "counter" else name
        for e in range(engines):
            lines.append(f"{sample}{_labels(e)} {float(value_of(e))}")

    family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", lambda e: running)
    family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", lambda e: waiting)
    family(kv_name, "gauge", "KV-cache usage. 1 means 100 percent usage.",
           lambda e: (kv_usage_by_engine or {}).get(e, kv_usage))
    family("vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine.", lambda e: preemptions)
    family("vllm:prefix_cache_queries", "counter", "Prefix cache queries, in terms of number of queried tokens.",
           lambda e: prefix_queries)
    family("vllm:prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens.",
           lambda e: prefix_hits)
    family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.", lambda e: prompt_tokens)
    family("vllm:generation_tokens", "counter", "Number of generation tokens processed.", lambda e: generation_tokens)
    lines += ["# HELP vllm:request_success_total Count of successfully processed requests.",
              "# TYPE vllm:request_success_total counter"]
    for e in range(engines):
        for reason in ("stop", "length", "abort"):
            reason_label = f'finished_reason="{reason}",'
            lines.append(f"vllm:request_success_total{_labels(e, reason_label)} "
                         f"{float(requests if reason == 'length' else 0)}")
    _histogram(lines, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
               LATENCY_BUCKETS_S, engines, requests)
    _histogram(lines, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
               LATENCY_BUCKETS_S, engines, int(generation_tokens))
    _histogram(lines, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
               REQUEST_BUCKETS_S, engines, requests)
    _histogram(lines, "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
               REQUEST_BUCKETS_S, engines, requests)
    _histogram(lines, "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS,
               engines, requests)
    lines += ["# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
              "# TYPE vllm:cache_config_info gauge",
              'vllm:cache_config_info{block_size="64",cache_dtype="fp8",enable_prefix_caching="True",engine="0",'
              'gpu_memory_utilization="0.9",num_gpu_blocks="13108"} 1.0']
    return "\n".join(lines) + "\n"


def sglang_text(dp_ranks: int = 2, running: float = 0, queued: float = 0, token_usage: float = 0.0,
                cache_hit_rate: float = 0.0, retracted_total: float | None = None, retracted_batch: float = 0,
                prompt_tokens: float = 0, generation_tokens: float = 0) -> str:
    """An SGLang (``--enable-metrics``) /metrics body, one label set per DP rank."""
    lines: list[str] = []

    def family(name: str, kind: str, value_of) -> None:
        lines.extend([f"# HELP {name} {name}", f"# TYPE {name} {kind}"])
        sample = f"{name}_total" if kind == "counter" else name
        for r in range(dp_ranks):
            lines.append(f'{sample}{{dp_rank="{r}",model_name="{MODEL}",tp_rank="0"}} {float(value_of(r))}')

    family("sglang:num_running_reqs", "gauge", lambda r: running)
    family("sglang:num_queue_reqs", "gauge", lambda r: queued)
    family("sglang:token_usage", "gauge", lambda r: token_usage)
    family("sglang:cache_hit_rate", "gauge", lambda r: cache_hit_rate)
    family("sglang:gen_throughput", "gauge", lambda r: 1234.5)
    family("sglang:num_retracted_reqs", "gauge", lambda r: retracted_batch)
    if retracted_total is not None:
        family("sglang:num_retracted_requests", "counter", lambda r: retracted_total)
    family("sglang:prompt_tokens", "counter", lambda r: prompt_tokens)
    family("sglang:generation_tokens", "counter", lambda r: generation_tokens)
    return "\n".join(lines) + "\n"


def trtllm_iteration(queued: int = 0, active: int = 0, max_blocks: int = 1000, used_blocks: int = 0,
                     context: int = 0, gen: int = 0, iteration: int = 0) -> dict:
    """One TRT-LLM iteration-stats object as ``GET /metrics`` returns it (PyTorch backend, trimmed)."""
    return {
        "iter": iteration, "iterLatencyMS": 12.5, "gpuMemUsage": 123456789, "cpuMemUsage": 0,
        "numQueuedRequests": queued, "numActiveRequests": active, "maxNumActiveRequests": 256,
        "kvCacheStats": {"maxNumBlocks": max_blocks, "freeNumBlocks": max_blocks - used_blocks,
                         "usedNumBlocks": used_blocks, "tokensPerBlock": 32, "allocTotalBlocks": used_blocks,
                         "allocNewBlocks": 0, "reusedBlocks": 0},
        "inflightBatchingStats": {"numScheduledRequests": context + gen, "numContextRequests": context,
                                  "numGenRequests": gen, "numPausedRequests": 0, "numCtxTokens": 0,
                                  "microBatchId": 0, "avgNumDecodedTokensPerIter": 1.0},
    }


def trtllm_text(*iterations: dict) -> str:
    return json.dumps(list(iterations))
