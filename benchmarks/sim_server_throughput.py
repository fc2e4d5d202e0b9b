"""How many SSE chunks per second the sim server emits on one CPU core.

    .venv/bin/python benchmarks/sim_server_throughput.py [--streams 1000] [--tokens 200] [--cpu 0]

Starts ``python -m pytest_llmperf.sim serve`` pinned to one core with a
profile whose steps are nearly free (so the server, not the model, is the
limit), opens N concurrent streaming chat requests from a lean raw-socket
client (pinned elsewhere when there is a second core), and reports chunks/s
from the server's own counter. A figure, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAST_PROFILE = """
description = "near-free steps: measures the HTTP side"
max_context_tokens = 8192
max_running_requests = 100000
kv_capacity_tokens = 100000000
chunked_prefill_tokens = 1000000
step_base_ms = 0.5
decode_ms_per_seq = 0.0
prefill_ms_per_token = 0.0
"""


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def one_stream(port: int, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    events = 0
    tail = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf = tail + data
        events += buf.count(b"data: ") - tail.count(b"data: ")
        tail = buf[-8:]
        if b"[DONE]" in buf:
            break
    writer.close()
    return events


async def drive(port: int, streams: int, tokens: int) -> tuple[int, float]:
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "one two three four"}],
                       "max_completion_tokens": tokens, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one_stream(port, body) for _ in range(streams)))
    return sum(counts), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--cpu", type=int, default=0, help="core the server is pinned to")
    ap.add_argument("--port", type=int, default=18731)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "fast.toml"
        prof.write_text(FAST_PROFILE)
        argv = [sys.executable, "-m", "pytest_llmperf.sim", "serve", "--port", str(args.port), "--profile", str(prof),
                "--served-model-name", "bench", "--log-level", "warning"]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if "ready" not in line:
                raise SystemExit(f"sim server did not start: {line!r}")
            cores = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(proc.pid, {args.cpu})
            others = [c for c in cores if c != args.cpu]
            if others:
                os.sched_setaffinity(0, set(others))
            before = metric(args.port, "llmperf_sim_chunks_sent_total")
            events, wall_s = asyncio.run(drive(args.port, args.streams, args.tokens))
            chunks = metric(args.port, "llmperf_sim_chunks_sent_total") - before
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"{args.streams} streams x {args.tokens} tokens: {chunks:.0f} token chunks in {wall_s:.2f} s "
          f"-> {chunks / wall_s:.0f} chunks/s from one server core ({events} SSE events received; "
          f"client {'on other cores' if others else 'sharing the core'})")


if __name__ == "__main__":
    main()
