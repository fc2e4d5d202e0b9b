"""What the engine stand-ins share: the simulated engine served with an engine's personality.

Each stand-in (``vllm_standin``, ``trtllm_standin``, ``sglang.launch_server``)
parses its engine's real command line, maps the configuration to a sim
profile and calls :func:`run`, which plays the engine's life from the
outside: register its GPUs with the fake NVML, load for a moment (listening
or not, as the engine does), fail where the seed failed, answer the engine's
own routes and readiness phases, and stop cleanly on SIGTERM/SIGINT.

Environment (all optional):

- ``LLMPERF_STANDIN_BOOT_S``: seconds of "loading" before the port answers (default 0.3).
- ``LLMPERF_STANDIN_WARMUP_S``: SGLang's warm-up, /health 503 while other routes answer (default 0.5).
- ``LLMPERF_STANDIN_VERSION``: the version the engine reports instead of its own.
- ``LLMPERF_STANDIN_SLOWDOWN``: multiply every simulated step's duration (default 1).
- ``LLMPERF_STANDIN_FIXED=1``: the seed's known failures start normally instead.
- ``LLMPERF_FAKE_NVML_DIR``: write ``procs/<pid>.json`` there (the GPUs this process holds).
- ``LLMPERF_STANDIN_RELEASE_S``: the fake NVML frees those GPUs this long after the process died.
- ``LLMPERF_STANDIN_RESETS_FILE``: append one line per prefix-cache reset call (``POST /reset_prefix_cache``,
  ``/flush_cache``), served or not: ``METHOD PATH STATUS ok|failed``, so a test can count the resets it caused.

Cache and metrics routes, as each engine has them: vLLM serves ``POST /reset_prefix_cache`` only with
``VLLM_SERVER_DEV_MODE=1`` and ``/metrics`` with vLLM's names; SGLang serves ``/flush_cache`` (400 while
requests are pending) and ``/metrics`` with its own names only with ``--enable-metrics``; TensorRT-LLM has no
cache reset, and its ``GET /metrics`` returns the iteration stats gathered since the last read (reading drains
them).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import ClientSession, ClientTimeout, web

from pytest_llmperf.sim.access import server_ssl_context
from pytest_llmperf.sim.model import Profile
from pytest_llmperf.sim.profiles import list_profiles, load_profile
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pytest_llmperf.sim.model import StepPlan, TokenEvent
from pytest_llmperf.sim.server import ApiError, SimServer, counter, gauge, LiveCollector

ENV_BOOT = "LLMPERF_STANDIN_BOOT_S"
ENV_WARMUP = "LLMPERF_STANDIN_WARMUP_S"
ENV_VERSION = "LLMPERF_STANDIN_VERSION"
ENV_SLOWDOWN = "LLMPERF_STANDIN_SLOWDOWN"
ENV_FIXED = "LLMPERF_STANDIN_FIXED"
ENV_NVML_DIR = "LLMPERF_FAKE_NVML_DIR"
ENV_RELEASE = "LLMPERF_STANDIN_RELEASE_S"
ENV_RESETS_FILE = "LLMPERF_STANDIN_RESETS_FILE"

RESET_ROUTES = ("/reset_prefix_cache", "/flush_cache")
TRTLLM_TOKENS_PER_BLOCK = 32
TRTLLM_STATS_KEPT = 1000  # iteration stats kept between two reads of /metrics (the oldest dropped)

DEFAULT_BOOT_S = 0.3
DEFAULT_WARMUP_S = 0.5
USED_MEMORY_MIB = 120000
MODEL_MAX_CONTEXT = 163840  # DeepSeek-V3.2's own context length

_OFF_VALUES = {"0", "false", "no", "off"}


class StandinExit(Exception):
    """Stop the stand-in with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise StandinExit(1, f"{name} must be a number, got {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise StandinExit(1, f"{name} must be a finite number >= 0, got {text!r}")
    return value


def env_off(name: str) -> bool:
    """Whether the environment turns ``name`` off (``0``, ``false``, ``no``, ``off``)."""
    return os.environ.get(name, "").strip().lower() in _OFF_VALUES


def fixed() -> bool:
    """Whether the seed's known failures are to start normally (``LLMPERF_STANDIN_FIXED=1``)."""
    return os.environ.get(ENV_FIXED, "").strip().lower() in {"1", "true", "yes", "on"}


def reported_version(own: str) -> str:
    return os.environ.get(ENV_VERSION, "").strip() or own


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def no_profile(engine: str, what: str) -> StandinExit:
    names = ", ".join(p for p in list_profiles() if p.startswith(engine + "-"))
    return StandinExit(1, f"error: the stand-in has no simulated profile for {engine} with {what} "
                          f"(simulated {engine} configurations: {names})")


def profile_for(name: str, max_context: int | None = None) -> Profile:
    """The built-in sim profile ``name``, with the context length capped at ``max_context``."""
    profile = load_profile(name)
    if max_context is not None and max_context != profile.max_context_tokens:
        try:
            profile = dataclasses.replace(profile, max_context_tokens=max_context)
        except ValueError as exc:
            raise StandinExit(1, f"ValueError: cannot serve a context of {max_context} tokens: {exc}") from None
    return profile


# ----------------------------------------------------------------- fake NVML
def register_gpus() -> Path | None:
    """Tell the fake NVML which GPUs this process holds (no-op without ``LLMPERF_FAKE_NVML_DIR``)."""
    root = os.environ.get(ENV_NVML_DIR, "").strip()
    if not root:
        return None
    procs = Path(root) / "procs"
    procs.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "uuids": [u.strip() for u in visible_devices().split(",") if u.strip()],
        "used_memory_mib": USED_MEMORY_MIB,
        "release_delay_s": env_float(ENV_RELEASE, 0.0),
    }
    target = procs / f"{os.getpid()}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{os.getpid()}.", suffix=".tmp", dir=procs)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


# ----------------------------------------------------------------- logging
class Log:
    """Engine-like log lines: ``fmt(level, message)`` gives the line; errors go to stderr."""

    def __init__(self, fmt: Callable[[str, str], str]):
        self.fmt = fmt

    def _emit(self, level: str, message: str, stream) -> None:
        for line in message.splitlines() or [""]:
            print(self.fmt(level, line), file=stream, flush=True)

    def info(self, message: str) -> None:
        self._emit("INFO", message, sys.stdout)

    def warning(self, message: str) -> None:
        self._emit("WARNING", message, sys.stdout)

    def error(self, message: str) -> None:
        self._emit("ERROR", message, sys.stderr)

    @staticmethod
    def raw(message: str, stream=None) -> None:
        print(message, file=stream or sys.stdout, flush=True)


def uvicorn_started(host: str, port: int, scheme: str = "http") -> None:
    shown = f"[{host}]" if ":" in host else host
    for line in (f"INFO:     Started server process [{os.getpid()}]", "INFO:     Waiting for application startup.",
                 "INFO:     Application startup complete.",
                 f"INFO:     Uvicorn running on {scheme}://{shown}:{port} (Press CTRL+C to quit)"):
        Log.raw(line)


def uvicorn_stopped() -> None:
    for line in ("INFO:     Shutting down", "INFO:     Waiting for application shutdown.",
                 "INFO:     Application shutdown complete.", f"INFO:     Finished server process [{os.getpid()}]"):
        Log.raw(line)


# ----------------------------------------------------------------- personalities
@dataclass
class Personality:
    """How one engine looks from the outside."""

    engine: str  # "vllm" | "sglang" | "trtllm"
    version: str
    owned_by: str
    # top-level request fields per route (None: whatever the sim accepts)
    strict_fields: dict[str, frozenset[str]] | None = None
    required_fields: dict[str, frozenset[str]] = field(default_factory=dict)
    flat_errors: bool = False  # {"object": "error", ...} instead of {"error": {...}}
    version_route: bool = True  # GET /version -> {"version": ...}
    server_info: dict[str, Any] | None = None  # SGLang's /get_server_info (server args)
    metrics: str = "prometheus"  # "prometheus" | "json" | "none"
    metrics_prefix: str = "vllm"
    tokenize_route: bool = True  # POST /tokenize (vLLM and SGLang have it; TRT-LLM's server does not)
    cache_routes: tuple[str, ...] = ()  # prefix-cache resets served: "/reset_prefix_cache", "/flush_cache"


class StandinServer(SimServer):
    """The sim server with an engine's routes, readiness and error shapes."""

    def __init__(self, profile: Profile, served_model_name: str, slowdown: float, personality: Personality,
                 model_path: str, **access: Any):
        super().__init__(profile, served_model_name, slowdown, **access)  # api_keys, ssl_context
        self.personality = personality
        self.tokenize_route = personality.tokenize_route
        self.cache_routes = personality.cache_routes
        self.model_path = model_path
        self.ready = True  # False: /health answers 503 (SGLang's warm-up)
        self.resets_file = os.environ.get(ENV_RESETS_FILE, "").strip() or None
        self.iteration_stats: collections.deque = collections.deque(maxlen=TRTLLM_STATS_KEPT)
        self.last_retracted = 0  # requests preempted by the last step (SGLang's gauge)
        self.sglang_registry = CollectorRegistry(auto_describe=False)
        self.sglang_registry.register(LiveCollector(self.sglang_families))

    # -- app --------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = super().make_app()
        p = self.personality
        if p.engine in ("sglang", "trtllm"):
            app.router.add_get("/health_generate", self.handle_health)
        if p.engine == "sglang":
            app.router.add_get("/get_model_info", self.handle_model_info)
            app.router.add_get("/get_server_info", self.handle_server_info)
            app.router.add_route("POST", "/generate", self.handle_generate)
            app.router.add_route("PUT", "/generate", self.handle_generate)
        if p.engine == "vllm":
            app.router.add_get("/ping", self.handle_health)
        if "/flush_cache" in p.cache_routes:
            app.router.add_get("/flush_cache", self.handle_flush_cache)  # SGLang takes GET and POST
        if self.resets_file:
            app.middlewares.insert(0, self._count_resets)
        if p.flat_errors:
            app.middlewares.append(self._flat_errors)
        if p.strict_fields is not None:
            app.middlewares.append(self._strict_fields)
        return app

    @web.middleware
    async def _count_resets(self, request: web.Request, handler):
        """One line per cache-reset call in ``LLMPERF_STANDIN_RESETS_FILE``, whether the route exists or not."""
        if request.path not in RESET_ROUTES:
            return await handler(request)
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            with open(self.resets_file, "a") as f:
                f.write(f"{request.method} {request.path} {status} {'ok' if status == 200 else 'failed'}\n")

    @web.middleware
    async def _strict_fields(self, request: web.Request, handler):
        allowed = self.personality.strict_fields.get(request.path) if request.method == "POST" else None
        if allowed is None:
            return await handler(request)
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return await handler(request)  # the sim's own JSON error
        if not isinstance(body, dict):
            return await handler(request)
        errors = [{"type": "extra_forbidden", "loc": ("body", k), "msg": "Extra inputs are not permitted",
                   "input": v} for k, v in body.items() if k not in allowed]
        errors += [{"type": "missing", "loc": ("body", k), "msg": "Field required", "input": body}
                   for k in sorted(self.personality.required_fields.get(request.path, ())) if k not in body]
        if not errors and body.get("stream_options") and not body.get("stream"):
            errors.append({"type": "value_error", "loc": ("body",),
                           "msg": "Value error, Stream options can only be defined when stream is true.",
                           "input": body})
        if not errors and request.path == "/v1/completions" and body.get("suffix"):
            errors.append({"type": "value_error", "loc": ("body",), "msg": "Value error, suffix is not supported",
                           "input": body})
        if errors:
            # As FastAPI's RequestValidationError handler of trtllm-serve answers: HTTP 400, {"error": str(exc)}.
            return web.json_response({"error": repr(errors)}, status=400)
        return await handler(request)

    @web.middleware
    async def _flat_errors(self, request: web.Request, handler):
        resp = await handler(request)
        if (resp.status >= 400 and isinstance(resp, web.Response) and resp.content_type == "application/json"
                and resp.body is not None):
            try:
                body = json.loads(resp.body)
            except (ValueError, TypeError):
                return resp
            err = body.get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                flat = {"object": "error", "message": err.get("message", ""),
                        "type": err.get("type", "BadRequestError"), "param": err.get("param"), "code": resp.status}
                return web.json_response(flat, status=resp.status)
        return resp

    # -- routes -----------------------------------------------------------
    async def handle_health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def handle_version(self, request: web.Request) -> web.Response:
        if not self.personality.version_route:
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"version": self.personality.version})

    async def handle_models(self, request: web.Request) -> web.Response:
        p = self.personality
        card: dict[str, Any] = {"id": self.model_name, "object": "model", "created": self.created,
                                "owned_by": p.owned_by}
        if p.engine == "vllm":
            card.update(root=self.model_path, parent=None, max_model_len=self.profile.max_context_tokens)
        elif p.engine == "sglang":
            card.update(root=self.model_name, max_model_len=self.profile.max_context_tokens)
        return web.json_response({"object": "list", "data": [card]})

    async def handle_model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.model_path, "tokenizer_path": self.model_path,
                                  "is_generation": True, "preferred_sampling_params": None,
                                  "weight_version": "default"})

    async def handle_server_info(self, request: web.Request) -> web.Response:
        s = self.engine.stats()
        info = dict(self.personality.server_info or {})
        info.update({
            "max_total_num_tokens": self.profile.kv_capacity_tokens,
            "max_req_input_len": self.profile.max_context_tokens - 1,
            "internal_states": [{"last_gen_throughput": 0.0, "num_running_reqs": s["running"],
                                 "num_waiting_reqs": s["waiting"]}],
            "version": self.personality.version,
        })
        return web.json_response(info)

    async def handle_generate(self, request: web.Request) -> web.Response:
        """SGLang's native ``/generate`` (non-streamed): ``{"text": ..., "sampling_params": {...}}``."""
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            return web.json_response({"object": "error", "message": f"invalid JSON: {exc}",
                                      "type": "Bad Request", "param": None, "code": 400}, status=400)
        if not isinstance(body, dict):
            body = {}
        texts = body.get("text")
        params = body.get("sampling_params") or {}
        if body.get("stream"):
            return web.json_response({"object": "error", "message": "the stand-in serves /generate unstreamed",
                                      "type": "Bad Request", "param": None, "code": 400}, status=400)
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        if not isinstance(batch, list) or not batch or not all(isinstance(t, str) for t in batch):
            return web.json_response({"object": "error", "message": "text must be a string or a list of strings",
                                      "type": "Bad Request", "param": None, "code": 400}, status=400)
        max_new = params.get("max_new_tokens", 128) if isinstance(params, dict) else 128
        ignore_eos = bool(params.get("ignore_eos", False)) if isinstance(params, dict) else False
        started = time.monotonic()
        try:
            outs = await asyncio.gather(*(self.generate(t, max_new, ignore_eos) for t in batch))
        except ApiError as err:
            return web.json_response({"object": "error", "message": err.message, "type": "Bad Request",
                                      "param": err.param, "code": err.status}, status=err.status)
        items = []
        for out in outs:
            choice, usage = out["choices"][0], out["usage"]
            finish = ({"type": "length", "length": usage["completion_tokens"]} if choice["finish_reason"] == "length"
                      else {"type": "stop", "matched": None})
            items.append({"text": choice["text"], "meta_info": {
                "id": out["id"], "finish_reason": finish, "prompt_tokens": usage["prompt_tokens"],
                "completion_tokens": usage["completion_tokens"], "cached_tokens": 0,
                "e2e_latency": time.monotonic() - started}})
        return web.json_response(items[0] if single else items)

    def _deliver(self, end_s: float, plan: StepPlan, events: list[TokenEvent]) -> None:
        super()._deliver(end_s, plan, events)
        self.last_retracted = sum(len(r.preempted) for r in plan.ranks)
        if self.personality.metrics == "json":
            self.iteration_stats.append(self.iteration_stat(plan))

    def iteration_stat(self, plan: StepPlan) -> dict[str, Any]:
        """trtllm-serve's stats of the iteration that just ended (one per step)."""
        s = self.engine.stats()
        per_block = TRTLLM_TOKENS_PER_BLOCK
        max_blocks = self.engine.kv_capacity_tokens // per_block
        used_blocks = min(max_blocks, -(-s["kv_used_tokens"] // per_block))
        context = sum(len(r.prefills) for r in plan.ranks)
        generation = sum(len(r.decodes) for r in plan.ranks)
        return {"iter": self.engine.num_steps, "numQueuedRequests": s["waiting"], "numActiveRequests": s["running"],
                "kvCacheStats": {"maxNumBlocks": max_blocks, "freeNumBlocks": max_blocks - used_blocks,
                                 "usedNumBlocks": used_blocks, "tokensPerBlock": per_block},
                "inflightBatchingStats": {"numContextRequests": context, "numGenRequests": generation,
                                          "numScheduledRequests": context + generation}}

    def sglang_families(self) -> list:
        """SGLang's metric names (``--enable-metrics``); the cache hit rate over the server's life."""
        e, s = self.engine, self.engine.stats()
        lab = {"model_name": self.model_name}
        hit_rate = e.prefix_cache_hits / e.prefix_cache_queries if e.prefix_cache_queries else 0.0
        return [
            gauge("sglang:num_running_reqs", "The number of running requests.", lab, s["running"]),
            gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", lab, s["waiting"]),
            gauge("sglang:token_usage", "The token usage.", lab, self.kv_usage()),
            gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", lab, hit_rate),
            gauge("sglang:num_retracted_reqs", "The number of retracted requests.", lab, self.last_retracted),
            counter("sglang:num_retracted_requests", "Total number of retracted requests.", lab,
                    s["preemptions"]),
            counter("sglang:prompt_tokens", "Number of prefill tokens processed.", lab, e.prompt_tokens_total),
            counter("sglang:generation_tokens", "Number of generation tokens processed.", lab,
                    e.generation_tokens_total),
        ]

    async def handle_metrics(self, request: web.Request) -> web.Response:
        p = self.personality
        if p.metrics == "none":
            return web.json_response({"detail": "Not Found"}, status=404)
        if p.metrics == "json":  # trtllm-serve: the iteration stats since the last read; reading drains them
            stats = list(self.iteration_stats)
            self.iteration_stats.clear()
            return web.json_response(stats)
        if p.engine == "sglang":
            return web.Response(body=generate_latest(self.sglang_registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})
        return await super().handle_metrics(request)


# ----------------------------------------------------------------- the life of an engine
@dataclass
class Launch:
    """One stand-in run: what to serve, where, and how the engine behaves while starting."""

    profile: Profile | None  # None: the configuration fails (``failure`` says how)
    personality: Personality
    log: Log
    model_path: str
    served_model_name: str
    host: str
    port: int
    bind_before_loading: bool  # reserve the port (bound, not listening) while loading: vLLM, TRT-LLM
    warmup: bool = False  # SGLang: 503 on /health, a self generate request, then "ready to roll"
    failure: list[str] | None = None  # log lines of the seed's known failure, after loading for a moment
    ready_lines: Callable[[str, int], None] | None = None
    ready_message: str | None = None  # logged once ready (SGLang: after its warm-up)
    api_keys: tuple[str, ...] = ()  # vLLM: --api-key / VLLM_API_KEY; /v1 routes need one of them
    ssl_certfile: str | None = None  # vLLM: --ssl-certfile / --ssl-keyfile; serve HTTPS
    ssl_keyfile: str | None = None


def _client_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


async def _interruptible_sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True when ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except asyncio.TimeoutError:
        return False


async def _warm_up(server: StandinServer, launch: Launch, stop: asyncio.Event, outcome: list[int]) -> None:
    if await _interruptible_sleep(stop, env_float(ENV_WARMUP, DEFAULT_WARMUP_S)):
        return
    host = _client_host(launch.host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}"
    dp = int((server.personality.server_info or {}).get("dp_size", 1) or 1)
    body = {"text": "The capital city of France is" if dp == 1 else ["The capital city of France is"] * dp,
            "sampling_params": {"temperature": 0, "max_new_tokens": 8}}
    try:
        async with ClientSession(timeout=ClientTimeout(total=600), trust_env=False) as http:
            async with http.get(url + "/get_model_info") as resp:
                assert resp.status == 200, f"/get_model_info answered {resp.status}"
            async with http.post(url + "/generate", json=body) as resp:
                assert resp.status == 200, f"/generate answered {resp.status}: {await resp.text()}"
                await resp.read()
    except Exception as exc:  # noqa: BLE001 - any failure of the warm-up kills the server, as SGLang does
        if stop.is_set():
            return
        launch.log.error(f"Initialization failed. warmup error: {type(exc).__name__}: {exc}")
        outcome[0] = 1
        stop.set()
        return
    server.ready = True
    if launch.ready_message:
        launch.log.info(launch.ready_message)


async def _serve(launch: Launch) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = launch.log

    sock: socket.socket | None = None
    if launch.bind_before_loading:
        try:
            infos = socket.getaddrinfo(launch.host or None, launch.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
        except OSError as exc:
            if sock is not None:
                sock.close()
            log.error(f"OSError: cannot bind {launch.host}:{launch.port}: {exc}")
            return 1

    try:
        if await _interruptible_sleep(stop, env_float(ENV_BOOT, DEFAULT_BOOT_S)):
            log.info("interrupted while loading; exiting")
            return 0
        if launch.failure is not None or launch.profile is None:
            for line in launch.failure or ["engine failed to start"]:
                log.error(line)
            return 1

        ssl_context = None
        if launch.ssl_keyfile is not None and launch.ssl_certfile is None:
            log.error("TypeError: an SSL key file was given without a certificate file (--ssl-certfile)")
            return 1
        if launch.ssl_certfile is not None:
            try:
                ssl_context = server_ssl_context(launch.ssl_certfile, launch.ssl_keyfile)
            except ValueError as exc:
                log.error(f"ssl.SSLError: {exc}")
                return 1
        server = StandinServer(launch.profile, launch.served_model_name, env_slowdown(), launch.personality,
                               launch.model_path, api_keys=launch.api_keys, ssl_context=ssl_context)
        server.ready = not launch.warmup
        try:
            port = await server.start(launch.host, launch.port, sock=sock)
        except OSError as exc:
            log.error(f"OSError: cannot listen on {launch.host}:{launch.port}: {exc}")
            await server.stop()
            return 1
        sock = None  # owned by the server now
        if launch.ready_lines is not None:
            launch.ready_lines(launch.host, port)
        else:
            uvicorn_started(launch.host, port, server.scheme)
        outcome = [0]
        warm = asyncio.create_task(_warm_up(server, launch, stop, outcome)) if launch.warmup else None
        if warm is None and launch.ready_message:
            log.info(launch.ready_message)
        await stop.wait()
        if warm is not None:
            warm.cancel()
            try:
                await warm
            except asyncio.CancelledError:
                pass
        await server.stop()
        uvicorn_stopped()
        return outcome[0]
    finally:
        if sock is not None:
            sock.close()


def env_slowdown() -> float:
    value = env_float(ENV_SLOWDOWN, 1.0)
    if value <= 0:
        raise StandinExit(1, f"{ENV_SLOWDOWN} must be > 0, got {value}")
    return value


def run(launch: Launch) -> int:
    """Register the GPUs, then play the engine's life; returns the exit code."""
    env_slowdown(), env_float(ENV_BOOT, DEFAULT_BOOT_S), env_float(ENV_WARMUP, DEFAULT_WARMUP_S)  # fail early
    register_gpus()
    return asyncio.run(_serve(launch))


def main_wrapper(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a stand-in's ``main``, turning ``StandinExit`` into its message and code."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except StandinExit as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return exc.code
