"""A case's result in the reference benchmark's saved-result layout (pure).

``vllm bench serve --save-result`` writes one JSON object per run; tools
that read those files find the same keys here for every figure both
measure (``completed``, ``total_token_throughput``, ``mean_ttft_ms``,
``p99_itl_ms``, ``max_concurrent_requests``, ...), plus the run's
parameters under the reference's names (``backend``, ``model_id``,
``num_prompts``, ``request_rate``, ``burstiness``, ``max_concurrency``).
Our extra figures keep their own names beside them. With per-request
records, the reference's parallel lists (``input_lens``, ``output_lens``,
``ttfts``, ``itls``, ``errors``, in seconds) are added, and ``requests``
holds our fuller records.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any, Mapping, Sequence

from ..metrics import RequestRecord
from ..suite import Case

RESULT_SCHEMA = "pytest-llmperf/result/1"


def result_file_name(case: Case) -> str:
    """One file per case: ``engine-config-workload.json`` with unsafe characters replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{case.config.engine}-{case.config.name}-{case.workload.name}") + ".json"


def request_records(records: Sequence[RequestRecord], origin_s: float | None = None) -> list[dict[str, Any]]:
    """Every request as a plain dict; times in seconds from the run's start (the first schedule or send)."""
    if origin_s is None:
        origin_s = min((t for r in records for t in (r.start_s, r.scheduled_s) if t is not None), default=0.0)
    out = []
    for r in records:
        out.append({
            "start_s": r.start_s - origin_s,
            "scheduled_s": None if r.scheduled_s is None else r.scheduled_s - origin_s,
            "success": r.success,
            "ttft_s": r.ttft_s if r.success else None,
            "itl_s": list(r.itl_s),
            "latency_s": r.latency_s if r.success else None,
            "prompt_len": r.prompt_len,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "expected_output_len": r.expected_output_len,
            "error": r.error,
            "error_detail": r.error_detail,
        })
    return out


def result_json(
    case: Case,
    backend: str,
    shape: Any,
    metrics: Mapping[str, Any],
    percentiles: Sequence[float],
    records: Sequence[RequestRecord] | None = None,
    tokenizer_id: str = "word",
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """The saved-result object of one case (``shape``: how its load was sent); ``records`` adds the per-request lists."""
    now = now or _dt.datetime.now()
    rate = shape.request_rate
    data: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "date": now.strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai-chat" if shape.endpoint.rstrip("/").endswith("chat/completions") else "openai",
        "backend": backend,
        "label": case.id,
        "model_id": shape.model,
        "tokenizer_id": tokenizer_id,
        "num_prompts": shape.num_prompts,
        "request_rate": "inf" if math.isinf(rate) else rate,
        "burstiness": shape.burstiness,
        "max_concurrency": shape.max_concurrency,
        "percentiles": list(percentiles),
        "workload": case.workload.params(),
    }
    data.update(metrics)
    if records is not None:
        data["input_lens"] = [r.input_tokens if r.input_tokens is not None else r.prompt_len for r in records]
        data["output_lens"] = [r.output_tokens if r.success else 0 for r in records]
        data["ttfts"] = [r.ttft_s if r.success else 0.0 for r in records]
        data["itls"] = [list(r.itl_s) for r in records]
        data["errors"] = [f"{r.error}: {r.error_detail}" if r.error_detail else r.error for r in records]
        data["requests"] = request_records(records)
    return data
