"""CPU per parse of one vLLM /metrics body: what the engine-metrics sampler costs per scrape.

    .venv/bin/python benchmarks/engine_metrics_parse.py              # 8 data-parallel engines (default)
    .venv/bin/python benchmarks/engine_metrics_parse.py --engines 1

The body is laid out as vLLM 0.1x exposes it (tests/engine_metrics_texts.py):
gauges, counters and histograms with their buckets, one label set per
``engine``. Figures are CPU time (process_time) per call, the median of several
repeats, in microseconds: a full parse (the scrapes before and after a run)
and the sampler's parse of the roles' names only (every ``interval_s``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine_metrics_texts import vllm_text  # noqa: E402
from pytest_llmperf.engine_metrics import ROLE_NAMES, parse_prometheus  # noqa: E402


def per_parse_us(text: str, parses: int, only=None) -> float:
    t0 = time.process_time()
    for _ in range(parses):
        parse_prometheus(text, only)
    return (time.process_time() - t0) / parses * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=8, help="engine label values (data-parallel engines)")
    parser.add_argument("--parses", type=int, default=200, help="parses per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    text = vllm_text(engines=args.engines, running=12, waiting=30, kv_usage=0.8, preemptions=7, prefix_queries=9e5,
                     prefix_hits=3e5, prompt_tokens=1e6, generation_tokens=2e5, requests=1000)
    per_parse_us(text, 10)  # warm up (imports, caches)
    print(f"vLLM /metrics, {args.engines} engines: {len(text.splitlines())} lines, {len(text) / 1024:.0f} KiB")
    for what, only in (("full parse", None), ("sampler parse (roles' names)", ROLE_NAMES)):
        figures = [per_parse_us(text, args.parses, only) for _ in range(args.repeats)]
        print(f"{what}: median {statistics.median(figures):.0f} us "
              f"(min {min(figures):.0f}, max {max(figures):.0f}; {args.repeats} x {args.parses} parses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
