"""The sim engine's OpenAI-compatible HTTP server (aiohttp).

One scheduler task runs the engine's step loop (``steps.run_steps``, the
same loop the DES runs in virtual time) on the event loop's clock: plan a
step, sleep until its scheduled end on an absolute timeline, commit, and hand
each request its tokens. Handlers only parse, queue (waking the loop), wait
and write pre-encoded SSE chunks.

Besides the OpenAI routes: vLLM's ``POST /reset_prefix_cache`` and SGLang's
``POST /flush_cache`` (refused with 400 while requests are running or
waiting), and ``GET /metrics`` in Prometheus text with vLLM's metric names
plus the sim's own apparatus figures (``llmperf_sim_*``: how far the step
loop fell behind its schedule, see ``steps.ScheduleTally``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..tokenizer import DEFAULT_TOKENIZER
from .access import UNAUTHORIZED_MESSAGE, ApiKeys
from .model import EngineModel, Profile, StepPlan, TokenEvent
from .protocol import NATURAL_STOP_FRACTION, ApiError, ParsedRequest, json_object, natural_output_tokens
from .protocol import answer_text, completion_body, parse_completion, prefix_key, text_seed, tokenize_text
from .steps import LoopClock, ScheduleTally, run_steps

__all__ = ["ApiError", "NATURAL_STOP_FRACTION", "SimServer", "natural_output_tokens"]

log = logging.getLogger("pytest_llmperf.sim")

DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
UNAUTHORIZED = ApiError(401, UNAUTHORIZED_MESSAGE, "AuthenticationError")


def _require(keys: ApiKeys):
    """An aiohttp middleware letting through only what ``keys`` allow (401 otherwise, as vLLM answers)."""

    @web.middleware
    async def require_api_key(request: web.Request, handler):
        if keys.allows(request.method, request.path, request.headers.get("Authorization")):
            return await handler(request)
        return UNAUTHORIZED.response(headers={"WWW-Authenticate": "Bearer"})

    return require_api_key


FLUSHED_TEXT = "Cache flushed.\n"
NOT_FLUSHED_TEXT = ("Cache not flushed: requests are running or waiting; the cache is flushed only when the engine "
                    "is idle. Retry once they have finished.\n")


class LiveCollector:
    """A prometheus_client collector reading live values: ``families()`` gives the metric families."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families()


def gauge(name: str, doc: str, labels: dict[str, str], value: float) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(name: str, doc: str, labels: dict[str, str], value: float) -> Metric:
    """A counter family; the exposition names its sample ``<name>_total``."""
    family = CounterMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


@dataclass(eq=False)
class _Stream:
    """Tokens handed from the scheduler to one request's handler."""

    pending: list = field(default_factory=list)  # (new_tokens, finished)
    waiter: asyncio.Future | None = None
    closed_reason: str | None = None

    def push(self, item: tuple[int, bool]) -> None:
        self.pending.append(item)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def close(self, reason: str) -> None:
        self.closed_reason = reason
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class SimServer:
    """The HTTP front of one simulated engine."""

    tokenize_route = True
    """Serve vLLM's ``POST /tokenize`` (subclasses imitating an engine without one turn it off)."""
    cache_routes: tuple[str, ...] = ("/reset_prefix_cache", "/flush_cache")
    """The prefix-cache reset routes served (vLLM's, SGLang's); subclasses imitating an engine keep its own."""

    def __init__(self, profile: Profile, served_model_name: str | None = None, slowdown: float = 1.0, *,
                 api_keys: str | Iterable[str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 stall_s_per_step: float = 0.0):
        """``api_keys``: with one or more, ``/v1`` routes need ``Authorization: Bearer KEY`` (see ``access``).
        ``ssl_context``: serve HTTPS with it (``access.server_ssl_context`` makes one from PEM files).
        ``stall_s_per_step``: block the event loop this long after every step (fault injection: the loop
        falls behind its schedule as on a busy machine, and its ``/metrics`` say so)."""
        self.profile = profile
        self.stall_s_per_step = stall_s_per_step
        self._api_keys = ApiKeys(api_keys)
        self.ssl_context = ssl_context
        self.model_name = served_model_name or profile.model
        self.engine = EngineModel(profile, slowdown)
        self.created = int(time.time())
        self._streams: dict[str, _Stream] = {}
        self._clock: LoopClock | None = None
        self._scheduler: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self._next_id = 0
        self.port: int | None = None
        self.chunks_sent = 0
        self.tally = ScheduleTally()
        self.metrics_registry = CollectorRegistry(auto_describe=False)
        self.metrics_registry.register(LiveCollector(self.metric_families))

    # -- lifecycle ----------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def requires_api_key(self) -> bool:
        return bool(self._api_keys)

    def make_app(self) -> web.Application:
        middlewares = [_require(self._api_keys)] if self._api_keys else []
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=middlewares)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_post("/v1/completions", self.handle_completions)
        app.router.add_get("/v1/models", self.handle_models)
        if self.tokenize_route:
            app.router.add_post("/tokenize", self.handle_tokenize)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/version", self.handle_version)
        app.router.add_get("/metrics", self.handle_metrics)
        if "/reset_prefix_cache" in self.cache_routes:
            app.router.add_post("/reset_prefix_cache", self.handle_reset_prefix_cache)
        if "/flush_cache" in self.cache_routes:
            app.router.add_post("/flush_cache", self.handle_flush_cache)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> int:
        """Start serving; returns the bound port.

        ``sock``: an already bound (not yet listening) socket to serve on instead of ``host``/``port``,
        for engines that reserve their port before they are ready to listen.
        """
        self._clock = LoopClock()
        self._scheduler = asyncio.create_task(self._schedule(), name="sim-scheduler")
        self._runner = web.AppRunner(self.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        if sock is not None:
            site: web.BaseSite = web.SockSite(self._runner, sock, backlog=4096, ssl_context=self.ssl_context)
            port = sock.getsockname()[1]
        else:
            site = web.TCPSite(self._runner, host, port, backlog=4096, ssl_context=self.ssl_context)
        await site.start()
        sockets = self._runner.addresses
        self.port = sockets[0][1] if sockets else port
        return self.port

    async def stop(self) -> None:
        """Stop the scheduler, end open streams, close the listener."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            try:
                await self._scheduler
            except asyncio.CancelledError:
                pass
            self._scheduler = None
        for stream in list(self._streams.values()):
            stream.close("server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the scheduler ------------------------------------------------------

    async def _schedule(self) -> None:
        assert self._clock is not None
        await run_steps(self.engine, self._clock, self._deliver, tally=self.tally)

    def _deliver(self, end_s: float, plan: StepPlan, events: list[TokenEvent]) -> None:
        """Hand each request the tokens of the step that just ended."""
        if self.stall_s_per_step:
            time.sleep(self.stall_s_per_step)  # deliberately blocks the loop: see __init__
        streams = self._streams
        frontend = self.engine.frontend
        call_at = asyncio.get_running_loop().call_at if frontend.s_per_chunk > 0 else None
        for ev in events:
            stream = streams.get(ev.request_id)
            if stream is None:
                continue
            if call_at is None:
                stream.push((ev.new_tokens, ev.finished))
            else:  # the API front's output worker sends it later (in order: the times only grow)
                call_at(frontend.chunk_sent_s(end_s), stream.push, (ev.new_tokens, ev.finished))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("step %d: %d decodes, %d prefill tokens, %.1f ms, %s", self.engine.num_steps,
                      plan.num_decode_seqs, plan.num_prefill_tokens, plan.cost_ms, self.engine.stats())

    # -- request handling ---------------------------------------------------

    async def _read_json(self, request: web.Request) -> dict:
        return json_object(await request.read())

    def _parse(self, body: dict, chat: bool) -> ParsedRequest:
        return parse_completion(body, chat, self.model_name, self.engine)

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    def _admit(self, prefix: str, parsed: ParsedRequest) -> tuple[str, _Stream]:
        """Queue a parsed request in the engine; its id and the stream its tokens arrive on."""
        self._next_id += 1
        rid = f"{prefix}-sim{self._next_id:08x}"
        stream = _Stream()
        self._streams[rid] = stream
        loop = asyncio.get_running_loop()
        ready_s = self.engine.frontend.request_ready_s(loop.time(), max(1, parsed.prompt_tokens))  # the API front
        if ready_s > loop.time():
            loop.call_at(ready_s, self._enqueue, rid, parsed)
        else:
            self._enqueue(rid, parsed)
        return rid, stream

    def _enqueue(self, rid: str, parsed: ParsedRequest) -> None:
        """Hand a request to the scheduler, unless its client went away meanwhile."""
        if rid not in self._streams:
            return
        self.engine.add_request(rid, max(1, parsed.prompt_tokens), parsed.output_tokens, prefix_key(parsed))
        assert self._clock is not None
        self._clock.wake()

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            parsed = self._parse(await self._read_json(request), chat)
        except ApiError as err:
            return err.response()
        rid, stream = self._admit("chatcmpl" if chat else "cmpl", parsed)
        try:
            if parsed.stream:
                return await self._stream(request, rid, parsed, stream)
            try:
                return await self._whole(rid, parsed, stream)
            except ConnectionResetError as exc:
                return ApiError(503, f"request ended before completion: {exc}", "ServiceUnavailableError").response()
        finally:
            # Still in the engine when the client went away or the server stopped: abort it (no-op when finished).
            self._streams.pop(rid, None)
            self.engine.abort_request(rid)

    async def _next_events(self, stream: _Stream) -> list:
        while not stream.pending:
            if stream.closed_reason:
                raise ConnectionResetError(stream.closed_reason)
            stream.waiter = asyncio.get_running_loop().create_future()
            await stream.waiter
            stream.waiter = None
        items, stream.pending = stream.pending, []
        return items

    async def _stream(self, request: web.Request, rid: str, p: ParsedRequest, stream: _Stream) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await resp.prepare(request)
        created = int(time.time())
        model_json = json.dumps(self.model_name)
        if p.chat:
            head = (f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},"model":{model_json},'
                    f'"choices":[{{"index":0,"delta":').encode()
            opening = head + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            try:
                await resp.write(opening)
            except ConnectionResetError:
                return resp
        else:
            head = (f'data: {{"id":"{rid}","object":"text_completion","created":{created},"model":{model_json},'
                    f'"choices":[{{"index":0,"text":').encode()
        try:
            await self._write_tokens(resp, rid, p, stream, head, created, model_json)
        except ConnectionResetError as exc:
            log.debug("%s: stream ended early (%s)", rid, exc)
        return resp

    async def _write_tokens(self, resp: web.StreamResponse, rid: str, p: ParsedRequest, stream: _Stream, head: bytes,
                            created: int, model_json: str) -> None:
        tail_open = b',"logprobs":null,"finish_reason":null}]}\n\n'
        seed = text_seed(p.prompt_text)
        sent = 0
        done = False
        while not done:
            out = bytearray()
            for n, finished in await self._next_events(stream):
                text = json.dumps(answer_text(seed, sent, n))
                sent += n
                if p.chat:
                    out += head + b'{"content":' + text.encode()
                    out += b"}" + (f',"logprobs":null,"finish_reason":"{p.finish_reason}"}}]}}\n\n'.encode() if finished else tail_open)
                else:
                    out += head + text.encode()
                    out += (f',"logprobs":null,"finish_reason":"{p.finish_reason}"}}]}}\n\n'.encode() if finished else tail_open)
                self.chunks_sent += 1
                if finished:
                    done = True
                    break
            if done:
                if p.include_usage:
                    usage = {"prompt_tokens": p.prompt_tokens, "completion_tokens": sent,
                             "total_tokens": p.prompt_tokens + sent}
                    obj = "chat.completion.chunk" if p.chat else "text_completion"
                    out += (f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":{model_json},'
                            f'"choices":[],"usage":{json.dumps(usage)}}}\n\n').encode()
                out += DONE_EVENT
            await resp.write(bytes(out))
        await resp.write_eof()

    async def generate(self, prompt: str, max_tokens: int | None = None, ignore_eos: bool = False) -> dict:
        """Run one non-streamed completion of ``prompt`` through the engine; returns the completion body.

        For native routes (e.g. an engine's own warm-up request). Raises ``ApiError`` for a bad request.
        """
        body: dict[str, Any] = {"prompt": prompt, "ignore_eos": ignore_eos}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        parsed = self._parse(body, chat=False)
        rid, stream = self._admit("cmpl", parsed)
        try:
            return await self._whole_body(rid, parsed, stream)
        finally:
            self._streams.pop(rid, None)
            self.engine.abort_request(rid)

    async def _whole(self, rid: str, p: ParsedRequest, stream: _Stream) -> web.Response:
        return web.json_response(await self._whole_body(rid, p, stream))

    async def _whole_body(self, rid: str, p: ParsedRequest, stream: _Stream) -> dict:
        sent = 0
        done = False
        while not done:
            for n, finished in await self._next_events(stream):
                sent += n
                done = done or finished
        text = answer_text(text_seed(p.prompt_text), 0, sent)
        return completion_body(rid, p, text, sent, self.model_name)

    async def handle_tokenize(self, request: web.Request) -> web.Response:
        """vLLM's ``/tokenize``: the token ids and count of a prompt, in the sim's word tokens."""
        try:
            text = tokenize_text(await self._read_json(request), self.model_name)
        except ApiError as err:
            return err.response()
        tokens = DEFAULT_TOKENIZER.encode(text)
        return web.json_response({"count": len(tokens), "tokens": tokens,
                                  "max_model_len": self.profile.max_context_tokens})

    async def handle_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "pytest-llmperf-sim",
            "root": self.profile.model, "max_model_len": self.profile.max_context_tokens}]})

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def handle_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"{__version__}+sim", "profile": self.profile.name})

    # -- cache and metrics --------------------------------------------------

    async def handle_reset_prefix_cache(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /reset_prefix_cache``: forget every cached prompt; 200 with an empty body."""
        self.engine.reset_prefix_cache()
        return web.Response(status=200)

    def flush_cache(self) -> bool:
        """SGLang's flush: only when no request is running or waiting; whether the cache was flushed."""
        if self.engine.has_work():
            return False
        return self.engine.reset_prefix_cache()

    async def handle_flush_cache(self, request: web.Request) -> web.Response:
        """SGLang's ``/flush_cache``: 200 once flushed, 400 while requests are pending (clients retry until idle)."""
        if self.flush_cache():
            return web.Response(status=200, text=FLUSHED_TEXT)
        return web.Response(status=400, text=NOT_FLUSHED_TEXT)

    def kv_usage(self) -> float:
        """The fraction (0..1) of the node's KV tokens in use."""
        return self.engine.stats()["kv_used_tokens"] / self.engine.kv_capacity_tokens

    def metric_families(self) -> list[Metric]:
        """vLLM's metrics (names and ``model_name`` label as vLLM exposes them) and the sim's apparatus figures."""
        e, s, t = self.engine, self.engine.stats(), self.tally
        lab = {"model_name": self.model_name}
        return [
            gauge("vllm:num_requests_running", "Number of requests in model execution batches.", lab, s["running"]),
            gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", lab, s["waiting"]),
            gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lab, self.kv_usage()),
            counter("vllm:num_preemptions", "Cumulative number of preemptions from the engine.", lab,
                    s["preemptions"]),
            counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", lab,
                    e.prefix_cache_queries),
            counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", lab,
                    e.prefix_cache_hits),
            counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lab, e.prompt_tokens_total),
            counter("vllm:generation_tokens", "Number of generation tokens processed.", lab,
                    e.generation_tokens_total),
            counter("vllm:request_success", "Count of successfully processed requests.", lab, e.requests_finished),
            counter("llmperf_sim_scheduled_seconds", "Sum of the scheduled durations of committed steps.", lab,
                    t.scheduled_s),
            counter("llmperf_sim_busy_seconds", "Clock time of the busy periods, each from its anchor to its last "
                                                "commit; over scheduled seconds, how far the timeline stretched.",
                    lab, t.actual_s),
            gauge("llmperf_sim_max_late_seconds", "The most a step commit came after its scheduled end.", lab,
                  t.max_late_s),
            counter("llmperf_sim_steps", "Steps committed by the step loop.", lab, t.steps),
            counter("llmperf_sim_chunks_sent", "SSE token chunks written to clients.", lab, self.chunks_sent),
        ]

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics_registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
