"""CPU per SSE chunk of the client's parse path alone (no sockets): the hot path of the chunk rules.

    python benchmarks/chunk_parse.py                    # this checkout
    python benchmarks/chunk_parse.py --tree A --tree B  # two checkouts, interleaved repeats, medians and ratio

Each network read carries one chunk, laid out as vLLM, SGLang and TensorRT-LLM
lay out their chat chunks; every read goes through the SSE framing and the
accumulator exactly as ``loadgen.client`` does inside ``data_received``.
Figures are CPU time (process_time) per chunk in microseconds; the ratio
between trees run in one invocation is what to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = {
    "vllm": lambda t: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}]},
    "sglang": lambda t: {"id": "x", "object": "chat.completion.chunk", "created": 7, "model": "m",
                         "choices": [{"index": 0, "delta": {"role": None, "content": t, "reasoning_content": None,
                                                            "tool_calls": None}, "finish_reason": None}],
                         "usage": None},
    "trtllm": lambda t: {"id": "c", "object": "chat.completion.chunk", "created": 7, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]},
}


def child(layout: str, streams: int, tokens: int) -> float:
    from pytest_llmperf.loadgen.client import SSEDecoder, StreamAccumulator
    from pytest_llmperf.loadgen.datasets import SampleRequest

    make = LAYOUTS[layout]
    opening = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                                     separators=(",", ":")).encode() + b"\n\n"
    reads = [opening] + [b"data: " + json.dumps(make(f" tok{i % 97}"), separators=(",", ":")).encode() + b"\n\n"
                         for i in range(tokens)]
    reads.append(b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": tokens}},
                                        separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n")
    request = SampleRequest("p", 1, tokens)
    t0 = time.process_time()
    for _ in range(streams):
        acc = StreamAccumulator(request, 0.0, True)
        decoder = SSEDecoder()
        for n, data in enumerate(reads):
            payloads = decoder.plain_payloads(data)
            if payloads is not None:
                for payload in payloads:
                    if payload == b"[DONE]":
                        acc.done = True
                    else:
                        acc.on_payload(payload, float(n))
            else:
                for event, text in decoder.feed(data):
                    acc.on_event(event, text, float(n))
        rec = acc.record()
        assert rec.success and rec.output_tokens == tokens
    return (time.process_time() - t0) / (streams * len(reads)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", help="a checkout to measure (default: this one)")
    parser.add_argument("--layouts", default="vllm,sglang,trtllm")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.layout, args.streams, args.tokens))
        return 0
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(Path(__file__).resolve().parent.parent)])]
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for layout in args.layouts.split(","):
            for tree in trees:  # interleaved: each repeat measures every tree once, back to back
                out = subprocess.run([sys.executable, __file__, "--child", "--layout", layout, "--streams",
                                      str(args.streams), "--tokens", str(args.tokens)],
                                     env={**os.environ, "PYTHONPATH": tree}, cwd=tree, capture_output=True,
                                     text=True, check=True).stdout
                results.setdefault((layout, tree), []).append(float(out))
    print(f"CPU µs per chunk, median of {args.repeats} interleaved repeats ({args.streams} streams x "
          f"{args.tokens} tokens)")
    for layout in args.layouts.split(","):
        medians = [statistics.median(results[(layout, tree)]) for tree in trees]
        row = "  ".join(f"{Path(t).name}: {m:.2f}" for t, m in zip(trees, medians))
        ratio = f"  ratio {medians[-1] / medians[0]:.3f}" if len(trees) > 1 else ""
        print(f"{layout:7s} {row}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
