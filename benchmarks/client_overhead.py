"""What the load generator itself costs: CPU per chunk, late first tokens, TPOT error, memory.

    python benchmarks/client_overhead.py                       # 100, 1000, 4000 streams
    python benchmarks/client_overhead.py --streams 1000 --repeats 5 --tokens 200
    python benchmarks/client_overhead.py --memory-check         # 1000 streams x 2000 tokens
    python benchmarks/client_overhead.py --quick                # a smoke run

A paced server (tests/paced_server.py, its own process) writes one chunk per
stream every 15 ms and logs when it really wrote each one. Every client runs
in a fresh process of its own, so its CPU time and peak memory are its own:

- ``bare``: the floor. An asyncio Protocol that sends each request and only
  notes when the first body bytes arrive and counts chunks; no parsing.
- ``llmperf``: the plugin's load generator (``run_load``).
- ``llmperf xN``: the same spread over N client processes.
  For both, the client's own health figures (``LoadResult.client_health``):
  its event loop's lag at p99 / max, and the share of reads that carried
  more than one chunk of a stream.
- ``aiohttp reference-style``: an aiohttp client that reads the way the
  reference benchmark does (iterate the body line by line, ``json.loads``
  every ``data:`` message, one clock reading per message).

Figures, medians over repeats: client CPU (user+sys, children included,
imports not) per SSE chunk in µs; TTFT inflation, the client's mean TTFT
over the server's scheduled 0 ms (connecting included, as for every
client), and its ratio to the bare reader's; how long after the server
wrote the first token the client saw it; mean |TPOT error| against the
server's actual pace; peak RSS. Both ends share the machine's cores, as in
the reference's measurements, so the absolute figures depend on the machine;
the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

TARGET_CPU_US = 7.5
TARGET_LATENESS_RATIO = 1.2
TARGET_TPOT_ERROR_PCT = 0.5
TARGET_RSS_MB = 200


def prompts(run_id: str, streams: int) -> list[str]:
    return [f"{run_id}-{i} alpha beta" for i in range(streams)]


def body(prompt: str, tokens: int) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], "max_completion_tokens": tokens,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()


# ----------------------------------------------------------------------------- clients (run in a child)
def run_bare(port: int, run_id: str, streams: int, tokens: int) -> dict:
    """Floor: send, note the first body bytes after the headers, count data: events."""

    class Reader(asyncio.Protocol):
        def __init__(self, request: bytes, done: asyncio.Future):
            self.request, self.done, self.first_s, self.chunks, self.head = request, done, None, 0, b""

        def connection_made(self, transport):
            self.transport = transport
            transport.write(self.request)

        def data_received(self, data):
            now = time.perf_counter()
            if self.head is not None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data, self.head = self.head[end + 4:], None
            n = data.count(b"data: ")
            if n and self.first_s is None:
                # the role-only opening chunk comes with the headers; the next event is the first token
                n -= 1 if self.chunks == 0 and b'"role"' in data else 0
                if n:
                    self.first_s = now
            self.chunks += n
            if data.endswith(b"0\r\n\r\n"):
                self.transport.close()

        def connection_lost(self, exc):
            if not self.done.done():
                self.done.set_result(None)

    async def main():
        loop = asyncio.get_running_loop()
        readers = []
        for p in prompts(run_id, streams):
            b = body(p, tokens)
            req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(b), b))
            readers.append(Reader(req, loop.create_future()))
        start_s = time.perf_counter()  # like the others: before connecting
        for r in readers:
            r.start_s = start_s
        await asyncio.gather(*(loop.create_connection(lambda r=r: r, "127.0.0.1", port) for r in readers))
        await asyncio.gather(*(r.done for r in readers))
        return {p: {"start_s": r.start_s, "first_s": r.first_s, "chunks": r.chunks - 1}  # minus [DONE]
                for p, r in zip(prompts(run_id, streams), readers)}

    return {"requests": asyncio.run(main())}


def run_llmperf(port: int, run_id: str, streams: int, tokens: int, processes: int = 1) -> dict:
    from pytest_llmperf.loadgen.datasets import SampleRequest
    from pytest_llmperf.loadgen.run import LoadSpec, run_load

    reqs = [SampleRequest(p, 3, tokens) for p in prompts(run_id, streams)]
    result = run_load(LoadSpec(base_url=f"http://127.0.0.1:{port}", model="m", requests=reqs,
                               client_processes=processes))
    out = {"health": result.client_health.to_json() if getattr(result, "client_health", None) else None}
    for p, rec in zip(prompts(run_id, streams), result.records):
        out[p] = {"start_s": rec.start_s, "first_s": rec.start_s + rec.ttft_s if rec.success else None,
                  "chunks": len(rec.itl_s) + 1 if rec.success else 0,
                  "tpot_s": rec.tpot_s, "error": rec.error}
    health = out.pop("health")
    return {"requests": out, "health": health}


def run_reference_style(port: int, run_id: str, streams: int, tokens: int) -> dict:
    import aiohttp

    async def one(session, prompt):
        start_s = time.perf_counter()
        first_s = last_s = None
        chunks, output_tokens = 0, None
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=body(prompt, tokens),
                                headers={"Content-Type": "application/json"}) as resp:
            async for line in resp.content:
                line = line.strip()
                if not line:
                    continue
                text = line.decode("utf-8").removeprefix("data: ")
                if text == "[DONE]":
                    continue
                data = json.loads(text)
                now = time.perf_counter()
                if data.get("choices") and data["choices"][0]["delta"].get("content"):
                    first_s = first_s or now
                    last_s = now
                    chunks += 1
                if data.get("usage"):
                    output_tokens = data["usage"]["completion_tokens"]
        tpot = (last_s - first_s) / (output_tokens - 1) if output_tokens and output_tokens > 1 else None
        return {"start_s": start_s, "first_s": first_s, "chunks": chunks, "tpot_s": tpot}

    async def main():
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            got = await asyncio.gather(*(one(session, p) for p in prompts(run_id, streams)))
        return dict(zip(prompts(run_id, streams), got))

    return {"requests": asyncio.run(main())}


def child(args) -> None:
    """One client run; prints one JSON line with its own CPU and memory (imports not counted)."""
    import aiohttp  # noqa: F401  (imported before the clock, like the others' modules)
    import psutil  # noqa: F401  (the load's health probe reads the machine's CPU times with it)

    import pytest_llmperf.loadgen.run  # noqa: F401

    c0 = os.times()
    if args.client == "bare":
        out = run_bare(args.port, args.run_id, args.streams, args.tokens)
    elif args.client == "reference":
        out = run_reference_style(args.port, args.run_id, args.streams, args.tokens)
    else:
        out = run_llmperf(args.port, args.run_id, args.streams, args.tokens, args.processes)
    c1 = os.times()
    cpu_s = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) \
        + (c1.children_system - c0.children_system)
    rss_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    out.update(cpu_s=cpu_s, rss_mb=rss_kb / 1024)
    print(json.dumps(out))


# ----------------------------------------------------------------------------- the parent
def measure(server, client: str, streams: int, tokens: int, processes: int) -> dict:
    run_id = f"{client}{processes}-{streams}-{time.monotonic_ns()}"
    server.get("/reset")
    cmd = [sys.executable, __file__, "--child", "--client", client, "--port", server.base_url.rsplit(":", 1)[1],
           "--run-id", run_id, "--streams", str(streams), "--tokens", str(tokens), "--processes", str(processes)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{client} failed: {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    log = server.get("/log")
    lateness = server.get("/lateness")
    late_s, ttft_s, tpot_err, chunks = [], [], [], 0
    for prompt, rec in got["requests"].items():
        truth = log.get(prompt)
        if truth is None or rec.get("first_s") is None:
            continue
        chunks += rec["chunks"]
        late_s.append(rec["first_s"] - truth["sent_s"][0])
        ttft_s.append(rec["first_s"] - rec["start_s"])
        sent = truth["sent_s"]
        if rec.get("tpot_s") and len(sent) > 1:
            server_tpot = (sent[-1] - sent[0]) / (truth["tokens"] - 1)
            tpot_err.append(abs(rec["tpot_s"] - server_tpot) / server_tpot)
    return {"cpu_us_per_chunk": got["cpu_s"] / max(chunks, 1) * 1e6,
            "first_token_late_ms": statistics.fmean(late_s) * 1000 if late_s else float("nan"),
            "ttft_inflation_ms": statistics.fmean(ttft_s) * 1000 if ttft_s else float("nan"),
            "tpot_error_pct": statistics.fmean(tpot_err) * 100 if tpot_err else float("nan"),
            "rss_mb": got["rss_mb"], "ok": len(late_s), "server_late_max_ms": lateness["max_ms"],
            "server_late_mean_ms": lateness["mean_ms"],
            # the client's own view of itself (llmperf only): loop lag and reads that carried several chunks
            "loop_lag_p99_ms": (got.get("health") or {}).get("loop_lag_p99_ms", float("nan")),
            "loop_lag_max_ms": (got.get("health") or {}).get("loop_lag_max_ms", float("nan")),
            "coalesced_reads_pct": (got.get("health") or {}).get("coalesced_reads_pct", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description="client overhead of the load generator")
    parser.add_argument("--streams", default="100,1000,4000")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="N for the 'llmperf xN' rows")
    parser.add_argument("--clients", default="bare,llmperf,llmperf-multi,reference")
    parser.add_argument("--quick", action="store_true", help="100 streams, 50 tokens, one repeat")
    parser.add_argument("--memory-check", action="store_true", help="1000 streams x 2000 tokens, llmperf only")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.streams = int(args.streams)
        child(args)
        return
    from tabulate import tabulate

    from paced_server import PacedServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it
    if args.quick:
        args.streams, args.tokens, args.repeats = "100", 50, 1
    clients = args.clients.split(",")
    if args.memory_check:
        args.streams, args.tokens, args.repeats, clients = "1000", 2000, 1, ["llmperf"]
        args.gap_ms = min(args.gap_ms, 5.0)
    rows = []
    with PacedServer("--ttft-ms", "0", "--gap-ms", str(args.gap_ms)) as server:
        for streams in [int(s) for s in args.streams.split(",")]:
            if streams * 2 + 64 > resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
                print(f"skipping {streams} streams: the open-file limit is too low", file=sys.stderr)
                continue
            figures: dict[str, list[dict]] = {}
            for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every client alike
                for client in clients:
                    name, procs = client, 1
                    if client == "llmperf-multi":
                        name, procs = f"llmperf x{args.processes}", args.processes
                    kind = "llmperf" if client.startswith("llmperf") else client
                    figures.setdefault(name, []).append(measure(server, kind, streams, args.tokens, procs))
            bare = {k: statistics.median(f[k] for f in figures["bare"]) for k in ("first_token_late_ms",
                                                                                     "ttft_inflation_ms")} \
                if "bare" in figures else {}
            for name, runs in figures.items():
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                ratio = med["ttft_inflation_ms"] / bare["ttft_inflation_ms"] if bare else float("nan")
                rows.append([streams, name, f"{med['cpu_us_per_chunk']:.1f}", f"{med['ttft_inflation_ms']:.1f}",
                             f"{ratio:.2f}", f"{med['first_token_late_ms']:.1f}",
                             "-" if name == "bare" else f"{med['tpot_error_pct']:.3f}",
                             f"{med['rss_mb']:.0f}", f"{med['server_late_mean_ms']:.1f} / {med['server_late_max_ms']:.0f}",
                             "-" if not name.startswith("llmperf") else
                             f"{med['loop_lag_p99_ms']:.1f} / {med['loop_lag_max_ms']:.0f}",
                             "-" if not name.startswith("llmperf") else f"{med['coalesced_reads_pct']:.1f}",
                             int(med["ok"])])
    print(tabulate(rows, headers=["streams", "client", "CPU us/chunk", "TTFT inflation ms", "vs bare",
                                  "seen after sent ms",
                                  "TPOT err %", "RSS MB", "server late ms mean/max", "client lag ms p99/max",
                                  "coalesced %", "requests"],
                   tablefmt="simple", disable_numparse=True))
    print(f"\ntargets: CPU <= {TARGET_CPU_US} us/chunk; first-token lateness <= {TARGET_LATENESS_RATIO}x bare "
          f"at 1000 streams; TPOT error <= {TARGET_TPOT_ERROR_PCT}% while the server keeps its schedule; "
          f"RSS < {TARGET_RSS_MB} MB at 1000 streams x 2000 tokens (--memory-check)")
    print("a large 'server late' means the server missed its own schedule: the client is not to blame for that part")


if __name__ == "__main__":
    main()
