"""A continuous-batching engine model: pure, deterministic, no clock or IO.

The caller adds requests, then loops ``plan_step`` -> ``step_duration_s`` ->
(wait that long, or advance virtual time) -> ``commit_step``, which returns
the tokens each request produced in that step.

What is modelled, per attention rank (``dp_size`` ranks, each with its own
waiting queue, running batch and KV cache; TP-only configs have one rank):
admission limited by a running-request cap and KV tokens (a request holds
prompt + generated tokens until it ends; when decode growth does not fit, the
most recently admitted request is preempted and recomputed later), chunked
prefill under a per-step token budget, batched decode, and step time growing
with sequences, tokens and attended context. Ranks step together: a step
lasts as long as the slowest rank plus a shared cost (MoE, communication)
proportional to all tokens in the step.

Prefix cache: a request may carry a ``prefix_key`` naming its prompt (the
server passes a hash of the prompt text). A node-wide LRU cache maps keys to
cached prompt tokens, bounded by the node's KV capacity
(``kv_capacity_tokens * dp_size`` tokens). On its first admission, a request
whose key is cached prefills only the uncached part of its prompt, always
computing at least its last token (as vLLM does); a key enters the cache once
its prompt has been fully prefilled. Counters are in tokens, as vLLM counts
them: ``prefix_cache_queries`` (prompt tokens of every admitted request) and
``prefix_cache_hits`` (of those, tokens served from cache). A recompute after
preemption does not consult the cache, so a run without repeated prompts is
exactly what it was without the cache.

Schedulers: ``mixed`` (vLLM style: decodes first, then prefill chunks fill
the token budget, all in one step) and ``prefill_first`` (SGLang style: a
rank with admissible prefill work runs a prefill-only step, otherwise it
decodes). SGLang admits a request when its prompt and its whole output (at
most 4096 tokens of it) fit beside the running requests' reservations (the
new-token ratio of what each has still to produce); when a decode no longer
fits it retracts the requests with the fewest output tokens (longest prompt
first) until the rest have room for 20 more decodes each, sets the ratio from
the rest's progress, and queues the retracted ones at the back, to be
prefilled again with the output they had.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .hardware import RankLoad

SCHEDULERS = ("mixed", "prefill_first")
SGLANG_CLIP_MAX_NEW_TOKENS = 4096  # SGLang reserves at most this much of one request's output at admission
SGLANG_RETRACT_DECODE_STEPS = 20  # a retraction frees room for this many decodes of every request kept


@dataclass(frozen=True)
class Profile:
    """All parameters of one simulated engine configuration.

    Per-rank figures (``*_per_rank`` or documented so) apply to each of the
    ``dp_size`` attention ranks; ``moe_ms_per_token`` and ``step_base_ms`` are
    shared by the whole node.
    """

    name: str
    max_running_requests: int
    chunked_prefill_tokens: int
    kv_capacity_tokens: int = 0  # per rank; 0 with ``hardware``: from memory (see ``kv_tokens_per_rank``)
    step_base_ms: float = 0.0
    decode_ms_per_seq: float = 0.0
    prefill_ms_per_token: float = 0.0
    description: str = ""
    engine: str = "sim"
    stands_in_for: str = ""
    seed_engine_version: str = ""
    model: str = "deepseek-ai/DeepSeek-V3.2"
    max_context_tokens: int = 163840
    dp_size: int = 1
    scheduler: str = "mixed"
    decode_attn_ms_per_ktoken: float = 0.0
    prefill_attn_ms_per_token_per_ktoken: float = 0.0
    prefill_ms_per_seq: float = 0.0
    moe_ms_per_token: float = 0.0
    tokens_per_decode_step: float = 1.0
    spec_draft_tokens: int = 0
    gpus: int = 8  # GPUs of the configuration it stands in for (what the run gives the engine)
    # -- admission: SGLang reserves part of each running request's remaining output ("new token ratio"),
    # starting at new_token_ratio and decaying per decode step to new_token_ratio_min; a retraction sets it from
    # what the requests kept have produced (``EngineModel._retract``).
    # TensorRT-LLM's default (guaranteed no eviction) reserves all of it: 1.0 without decay.
    new_token_ratio: float = 0.0
    new_token_ratio_min: float = 0.0
    new_token_ratio_decay: float = 0.0
    # -- step costs from the hardware (``sim/hardware.py``): set ``hardware`` and the fields below; the linear
    # coefficients above are then unused. Without ``hardware`` the step cost is their linear sum.
    hardware: str = ""
    attention_tp: int = 0  # GPUs per attention rank; 0: gpus // dp_size
    expert_parallel: bool = False
    kv_bytes_per_token_layer: float = 788.0
    memory_fraction: float = 0.9
    activation_reserve_gb: float = 6.0
    gemm_efficiency: float = 0.0
    moe_gemm_efficiency: float = 0.0  # the routed experts' grouped GEMMs; 0: as gemm_efficiency
    attention_efficiency: float = 0.0
    indexer_efficiency: float = 0.0  # the lightning indexer's FP8 logits; 0: as attention_efficiency
    # -- SGLang's dense prefill: a prefill-only step whose longest sequence holds at most this many KV tokens
    # (prefix included) runs plain (non-absorbed) MHA over the whole causal context in BF16 and skips the
    # indexer's top-k, as SGLang's NSA backend does up to the model's top-k (2048) on Hopper; 0: every
    # prefill is sparse MLA. Both are for hardware profiles (a linear profile ignores them, as it does the
    # other efficiencies).
    dense_prefill_max_kv_tokens: int = 0
    dense_attention_efficiency: float = 0.0  # of BF16 peak, for that dense MHA
    memory_efficiency: float = 0.0
    nvlink_efficiency: float = 0.0
    layer_latency_us: float = 0.0
    cpu_ms_per_step: float = 0.0
    cpu_us_per_seq: float = 0.0
    cpu_ms_per_prefill_seq: float = 0.0  # per request in a step's prefill (inputs, KV blocks, first sample)
    draft_layers: int = 0  # layers the speculative drafter runs per step (MTP, EAGLE)
    # -- the API front (``Frontend``): its one input worker's cost per request (parse, chat template,
    # tokenize, hand to the scheduler) and its one output worker's cost per chunk (detokenize, stream)
    frontend_ms_per_request: float = 0.0
    frontend_us_per_prompt_token: float = 0.0  # tokenizing the prompt, on the same input worker
    frontend_us_per_chunk: float = 0.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid sim profile {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []

        def need_int(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                out.append(f"{name} must be an integer >= {low}, got {v!r}")

        def need_float(name: str, low: float, strict: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low or (strict and v == low):
                out.append(f"{name} must be a number {'>' if strict else '>='} {low}, got {v!r}")

        if not isinstance(self.name, str) or not self.name:
            out.append(f"name must be a non-empty string, got {self.name!r}")
        for name in ("max_running_requests", "chunked_prefill_tokens", "max_context_tokens", "dp_size", "gpus"):
            need_int(name, 1)
        need_int("kv_capacity_tokens", 0 if self.hardware else 1)
        need_int("spec_draft_tokens", 0)
        need_int("draft_layers", 0)
        need_int("attention_tp", 0)
        need_int("dense_prefill_max_kv_tokens", 0)
        for name in ("step_base_ms", "decode_ms_per_seq", "prefill_ms_per_token", "decode_attn_ms_per_ktoken",
                     "prefill_attn_ms_per_token_per_ktoken", "prefill_ms_per_seq", "moe_ms_per_token",
                     "new_token_ratio", "new_token_ratio_min", "new_token_ratio_decay", "layer_latency_us",
                     "cpu_ms_per_step", "cpu_us_per_seq", "activation_reserve_gb", "frontend_ms_per_request",
                     "frontend_us_per_prompt_token", "frontend_us_per_chunk", "cpu_ms_per_prefill_seq"):
            need_float(name, 0.0)
        v = self.dense_attention_efficiency
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            out.append(f"dense_attention_efficiency must be a number in [0, 1], got {v!r}")
        elif self.dense_prefill_max_kv_tokens and self.hardware and not v:
            out.append(f"dense_prefill_max_kv_tokens ({self.dense_prefill_max_kv_tokens}) needs "
                       f"dense_attention_efficiency > 0 (of BF16 peak)")
        for name, fallback in (("moe_gemm_efficiency", "gemm_efficiency"), ("indexer_efficiency", "attention_efficiency")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                out.append(f"{name} must be a number in [0, 1] (0: as {fallback}), got {v!r}")
        for name in ("new_token_ratio", "new_token_ratio_min"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1:
                out.append(f"{name} is a share of the remaining output, at most 1, got {v!r}")
        lo, hi = self.new_token_ratio_min, self.new_token_ratio
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) and lo > hi:
            out.append(f"new_token_ratio_min ({lo}) cannot exceed new_token_ratio ({hi}): the ratio decays to it")
        need_float("tokens_per_decode_step", 1.0)
        if not isinstance(self.expert_parallel, bool):
            out.append(f"expert_parallel must be true or false, got {self.expert_parallel!r}")
        if self.scheduler not in SCHEDULERS:
            out.append(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.hardware:
            from .hardware import GPUS

            if self.hardware not in GPUS:
                out.append(f"hardware must be one of {', '.join(sorted(GPUS))}, got {self.hardware!r}")
            for name in ("gemm_efficiency", "attention_efficiency", "memory_efficiency", "nvlink_efficiency",
                         "memory_fraction"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    out.append(f"{name} must be a number in (0, 1], got {v!r}")
            need_float("kv_bytes_per_token_layer", 0.0, strict=True)
            if not out:
                ranks = self.gpus // (self.attention_tp or max(1, self.gpus // self.dp_size))
                if self.gpus % (self.attention_tp or 1) or ranks != self.dp_size:
                    out.append(f"attention_tp ({self.attention_tp}) x dp_size ({self.dp_size}) must equal gpus "
                               f"({self.gpus}): each attention rank is one TP group of the node")
        if not out and self.kv_tokens_per_rank < self.max_context_tokens:
            out.append(f"KV capacity per rank ({self.kv_tokens_per_rank} tokens) must be >= max_context_tokens "
                       f"({self.max_context_tokens}) so that any accepted request fits alone")
        if not out and isinstance(self.tokens_per_decode_step, (int, float)) and self.tokens_per_decode_step > 1 + self.spec_draft_tokens:
            out.append(f"tokens_per_decode_step ({self.tokens_per_decode_step}) cannot exceed 1 + spec_draft_tokens "
                       f"({1 + self.spec_draft_tokens})")
        return out

    def replace(self, **changes: Any) -> "Profile":
        return dataclasses.replace(self, **changes)

    @property
    def layout(self):
        """How the configuration spreads the model over the node (hardware profiles)."""
        from .hardware import Layout

        return Layout(gpus=self.gpus, attention_tp=self.attention_tp or max(1, self.gpus // self.dp_size),
                      expert_parallel=self.expert_parallel, kv_bytes_per_token_layer=self.kv_bytes_per_token_layer,
                      memory_fraction=self.memory_fraction, activation_reserve_bytes=self.activation_reserve_gb * 1e9)

    @property
    def kv_tokens_per_rank(self) -> int:
        """KV tokens one attention rank holds: ``kv_capacity_tokens``, or with ``hardware`` and 0 there, what the
        GPUs' memory leaves after weights and activations."""
        if self.kv_capacity_tokens or not self.hardware:
            return self.kv_capacity_tokens
        from .hardware import DEEPSEEK_V32, GPUS, kv_capacity_tokens

        return kv_capacity_tokens(DEEPSEEK_V32, GPUS[self.hardware], self.layout)

    def step_coster(self):
        """The hardware step coster of this profile (None for a linear profile)."""
        if not self.hardware:
            return None
        from .hardware import DEEPSEEK_V32, GPUS, Efficiency, StepCoster

        eff = Efficiency(self.gemm_efficiency, self.attention_efficiency, self.memory_efficiency,
                         self.nvlink_efficiency, self.layer_latency_us, self.cpu_ms_per_step, self.cpu_us_per_seq,
                         self.moe_gemm_efficiency, self.indexer_efficiency, self.cpu_ms_per_prefill_seq,
                         self.dense_attention_efficiency)
        return StepCoster(DEEPSEEK_V32, GPUS[self.hardware], self.layout, eff, self.draft_layers)


class Frontend:
    """The engine's API front, between the client and the scheduler: pure, times in seconds on any clock.

    One input worker takes requests in arrival order (parse, chat template,
    tokenize) and hands each to the scheduler when done; one output worker
    takes every chunk a step produced in order (detokenize, stream it out).
    Each serves one thing at a time, so under load requests reach the
    scheduler late and chunks reach the client late, and the client sees no
    more chunks per second than the output worker sends: the engine's
    steps do not wait for either. With zero costs both pass things through.
    """

    def __init__(self, s_per_request: float = 0.0, s_per_chunk: float = 0.0, s_per_prompt_token: float = 0.0):
        self.s_per_request = s_per_request
        self.s_per_prompt_token = s_per_prompt_token
        self.s_per_chunk = s_per_chunk
        self._in_free_s = -math.inf
        self._out_free_s = -math.inf

    def request_ready_s(self, arrival_s: float, prompt_tokens: int = 0) -> float:
        """When a request of ``prompt_tokens`` arriving at ``arrival_s`` (calls in arrival order) reaches the
        scheduler."""
        cost_s = self.s_per_request + self.s_per_prompt_token * prompt_tokens
        if cost_s <= 0:
            return arrival_s
        self._in_free_s = max(self._in_free_s, arrival_s) + cost_s
        return self._in_free_s

    def chunk_sent_s(self, produced_s: float) -> float:
        """When a chunk a step produced at ``produced_s`` (calls in production order) reaches the client."""
        if self.s_per_chunk <= 0:
            return produced_s
        self._out_free_s = max(self._out_free_s, produced_s) + self.s_per_chunk
        return self._out_free_s


@dataclass(frozen=True)
class TokenEvent:
    """What one request got from one step."""

    request_id: str
    new_tokens: int
    first: bool
    finished: bool


@dataclass(frozen=True)
class RankPlan:
    """One rank's share of a step: decoding requests and prefill chunks (request, tokens)."""

    decodes: tuple = ()
    prefills: tuple = ()
    preempted: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepPlan:
    """A planned step: one ``RankPlan`` per rank and its modelled cost (before slowdown)."""

    ranks: tuple[RankPlan, ...]
    cost_ms: float
    num_decode_seqs: int
    num_prefill_tokens: int

    @property
    def empty(self) -> bool:
        return self.num_decode_seqs == 0 and self.num_prefill_tokens == 0


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_tokens: int
    max_output_tokens: int
    rank: int
    generated: int = 0
    prefill_target: int = 0  # tokens to prefill before decoding (prompt, or prompt + generated after preemption)
    prefilled: int = 0
    kv_held: int = 0
    spec_credit: float = 0.0
    state: str = "waiting"  # waiting | prefill | decode | done
    prefix_key: str | None = None
    admitted: bool = False  # admitted at least once (a recompute after preemption does not consult the cache)


@dataclass(eq=False)
class _Rank:
    index: int
    waiting: deque = field(default_factory=deque)
    running: dict = field(default_factory=dict)  # admission order: request_id -> _Request
    decoding: dict = field(default_factory=dict)
    kv_used: int = 0
    decode_ctx_tokens: int = 0  # sum of kv_held over decoding requests
    queued_tokens: int = 0
    remaining_out: int = 0  # output tokens the running requests have still to produce
    new_token_ratio: float = 0.0  # share of remaining_out reserved at admission (SGLang, TensorRT-LLM)

    @property
    def load(self) -> tuple[int, int, int]:
        return (len(self.running) + len(self.waiting), self.queued_tokens, self.index)


class EngineModel:
    """The engine: add requests, then plan -> duration -> commit, step after step."""

    def __init__(self, profile: Profile, slowdown: float = 1.0):
        if isinstance(slowdown, bool) or not isinstance(slowdown, (int, float)) or not slowdown > 0:
            raise ValueError(f"slowdown must be a number > 0, got {slowdown!r}")
        self.profile = profile
        self.slowdown = float(slowdown)
        self._kv_cap = profile.kv_tokens_per_rank
        self.frontend = Frontend(profile.frontend_ms_per_request / 1000.0 * self.slowdown,
                                 profile.frontend_us_per_chunk / 1e6 * self.slowdown,
                                 profile.frontend_us_per_prompt_token / 1e6 * self.slowdown)
        self._coster = profile.step_coster()
        self._top_k = self._coster.model.sparse_top_k if self._coster is not None else 0
        self._ranks = [_Rank(i, new_token_ratio=profile.new_token_ratio) for i in range(profile.dp_size)]
        self._requests: dict[str, _Request] = {}
        self._inflight: StepPlan | None = None
        self.num_preemptions = 0
        self.num_steps = 0
        self._prefix_cache: OrderedDict[str, int] = OrderedDict()  # key -> cached prompt tokens, LRU first
        self.prefix_cache_tokens = 0
        self.prefix_cache_capacity_tokens = self._kv_cap * profile.dp_size
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.prompt_tokens_total = 0  # prompt tokens of requests whose first token came out
        self.generation_tokens_total = 0
        self.requests_finished = 0  # requests that produced all their tokens (aborted ones excluded)

    # -- requests ---------------------------------------------------------

    def check_request(self, prompt_tokens: int, max_output_tokens: int) -> None:
        """Raise ValueError when the profile cannot serve this request."""
        for name, v, low in (("prompt_tokens", prompt_tokens, 1), ("max_output_tokens", max_output_tokens, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        limit = self.profile.max_context_tokens
        if prompt_tokens + max_output_tokens > limit:
            raise ValueError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_output_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_output_tokens} in the completion). Please reduce the length of the messages or completion.")

    def add_request(self, request_id: str, prompt_tokens: int, max_output_tokens: int,
                    prefix_key: str | None = None) -> None:
        """Queue a request on the least-loaded rank; it will produce exactly ``max_output_tokens`` tokens.

        ``prefix_key``: names the prompt for the prefix cache (None: the request never hits)."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        self.check_request(prompt_tokens, max_output_tokens)
        rank = min(self._ranks, key=lambda r: r.load)
        req = _Request(request_id, prompt_tokens, max_output_tokens, rank.index, prefill_target=prompt_tokens,
                       prefix_key=prefix_key)
        self._requests[request_id] = req
        rank.waiting.append(req)
        rank.queued_tokens += prompt_tokens

    def abort_request(self, request_id: str) -> None:
        """Drop a request (client went away); unknown or finished ids are ignored."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        rank = self._ranks[req.rank]
        if req.state == "waiting":
            rank.waiting.remove(req)
            rank.queued_tokens -= req.prefill_target
        else:
            self._release(rank, req)
        req.state = "done"

    def has_work(self) -> bool:
        return bool(self._requests)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def stats(self) -> dict[str, int]:
        """Counts for logs and tests: running, waiting, kv tokens used (all ranks)."""
        return {
            "running": sum(len(r.running) for r in self._ranks),
            "waiting": sum(len(r.waiting) for r in self._ranks),
            "kv_used_tokens": sum(r.kv_used for r in self._ranks),
            "preemptions": self.num_preemptions,
        }

    def rank_of(self, request_id: str) -> int:
        return self._requests[request_id].rank

    @property
    def kv_capacity_tokens(self) -> int:
        """KV tokens of the whole node (all ranks)."""
        return self._kv_cap * self.profile.dp_size

    # -- prefix cache -------------------------------------------------------

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prompt (running requests keep what they hold); True, as the reset always succeeds."""
        self._prefix_cache.clear()
        self.prefix_cache_tokens = 0
        return True

    def cached_prefix_tokens(self, prefix_key: str) -> int:
        """Tokens cached under ``prefix_key`` (0 when absent); does not count as a use."""
        return self._prefix_cache.get(prefix_key, 0)

    def _lookup_prefix(self, req: _Request) -> int:
        """On first admission: count the query, and return the prompt tokens the cache serves (at most all but one)."""
        hit = self._peek_prefix(req)
        req.admitted = True
        self.prefix_cache_queries += req.prefill_target
        if req.prefix_key in self._prefix_cache:
            self._prefix_cache.move_to_end(req.prefix_key)
            self.prefix_cache_hits += hit
        return hit

    def _peek_prefix(self, req: _Request) -> int:
        """What ``_lookup_prefix`` would serve, without counting it."""
        if req.admitted or req.prefix_key is None:
            return 0
        return min(self._prefix_cache.get(req.prefix_key, 0), req.prefill_target - 1)

    def _insert_prefix(self, req: _Request) -> None:
        key = req.prefix_key
        if key is None:
            return
        old = self._prefix_cache.pop(key, 0)
        self.prefix_cache_tokens -= old
        tokens = max(old, req.prompt_tokens)
        if tokens > self.prefix_cache_capacity_tokens:
            return
        self._prefix_cache[key] = tokens
        self.prefix_cache_tokens += tokens
        while self.prefix_cache_tokens > self.prefix_cache_capacity_tokens:
            _, evicted = self._prefix_cache.popitem(last=False)
            self.prefix_cache_tokens -= evicted

    # -- internals --------------------------------------------------------

    def _release(self, rank: _Rank, req: _Request) -> None:
        if rank.running.pop(req.request_id, None) is not None:
            rank.remaining_out -= req.max_output_tokens - req.generated
        if rank.decoding.pop(req.request_id, None) is not None:
            rank.decode_ctx_tokens -= req.kv_held
        rank.kv_used -= req.kv_held
        req.kv_held = 0

    def _requeue(self, rank: _Rank, req: _Request, front: bool) -> str:
        """Free a running request's KV and queue it to be prefilled again, prompt and output so far."""
        self._release(rank, req)
        req.state = "waiting"
        req.prefill_target = req.prompt_tokens + req.generated
        req.prefilled = 0
        if front:
            rank.waiting.appendleft(req)
        else:
            rank.waiting.append(req)
        rank.queued_tokens += req.prefill_target
        self.num_preemptions += 1
        return req.request_id

    def _preempt_last(self, rank: _Rank) -> str:
        _, req = rank.running.popitem()
        rank.running[req.request_id] = req  # _release pops it again
        if self.profile.new_token_ratio > 0:
            rank.new_token_ratio = self.profile.new_token_ratio  # a preemption: reserve as much as at the start
        return self._requeue(rank, req, front=True)

    def _retract(self, rank: _Rank, growth: int) -> list[str]:
        """SGLang's retraction: when the next decode does not fit, retract the requests with the fewest output
        tokens (the longest prompt first among equals) until the rest have room for
        SGLANG_RETRACT_DECODE_STEPS more decodes each, then set the new-token ratio from what the rest have
        produced; the retracted requests go to the back of the waiting queue and are prefilled again (prompt
        and output so far)."""
        cap = self._kv_cap
        order = sorted(rank.decoding.values(), key=lambda r: (r.generated, -r.prompt_tokens), reverse=True)
        out: list[str] = []
        while len(order) > 1 and (not out or cap - rank.kv_used < SGLANG_RETRACT_DECODE_STEPS * growth * len(order)):
            out.append(self._requeue(rank, order.pop(), front=False))
        if self.profile.new_token_ratio > 0:  # a profile without reservations keeps none
            produced = sum(r.generated for r in order)
            promised = sum(r.max_output_tokens for r in order)
            rank.new_token_ratio = min(1.0, (produced + SGLANG_RETRACT_DECODE_STEPS * len(order)) / (promised + 1))
        return out

    def _plan_rank(self, rank: _Rank):
        """One rank's share of the next step: (plan, linear cost in ms, decodes, prefill tokens, load)."""
        p = self.profile
        cap = self._kv_cap
        budget = p.chunked_prefill_tokens
        per_seq = 1 + p.spec_draft_tokens
        growth = int(-(-p.tokens_per_decode_step // 1))  # ceil: KV slots a decode may need this step
        preempted: list[str] = []

        # vLLM allocates KV block by block for the tokens a step computes, so a long prompt is admitted as soon as
        # its next chunk fits; SGLang and TensorRT-LLM admit a request only when its whole prompt (and the
        # reserved share of its output) fits.
        incremental = p.scheduler == "mixed" and p.new_token_ratio <= 0
        room = cap - min(rank.remaining_out, cap // 8) if incremental else cap

        sglang = p.scheduler == "prefill_first"
        reserved = None  # SGLang: the running requests' reservation, then each admitted request's whole output

        def can_admit() -> bool:
            nonlocal reserved
            if not rank.waiting or len(rank.running) >= p.max_running_requests:
                return False
            req = rank.waiting[0]
            if incremental:  # its cached prefix is held from the start, then its first chunk
                cached = self._peek_prefix(req)
                return rank.kv_used + cached + min(req.prefill_target - cached, max(budget, 1)) <= room
            if sglang:
                # PrefillAdder: the whole prompt plus the whole (clipped) output of this request must fit in what
                # is left once each running request keeps new_token_ratio of its (clipped) remaining output
                if reserved is None:
                    reserved = rank.new_token_ratio * sum(
                        min(r.max_output_tokens - r.generated, SGLANG_CLIP_MAX_NEW_TOKENS) for r in rank.running.values())
                out = min(req.max_output_tokens - req.generated, SGLANG_CLIP_MAX_NEW_TOKENS)
                if not rank.running:  # alone it always fits (SGLang clips its output to what the pool holds)
                    return rank.kv_used + req.prefill_target + out <= cap
                return rank.kv_used + reserved + req.prefill_target + out < cap
            need = rank.kv_used + req.prefill_target
            ratio = rank.new_token_ratio
            if ratio > 0:  # reserve part of the output still to come, of the running requests and this one
                need += ratio * (rank.remaining_out + req.max_output_tokens - req.generated)
            return need <= cap

        in_progress = [r for r in rank.running.values() if r.state == "prefill"] if len(rank.decoding) != len(rank.running) else []
        do_decode = True
        if p.scheduler == "prefill_first" and (in_progress or can_admit()):
            do_decode = False

        decodes: tuple = ()
        if do_decode and rank.decoding:
            if sglang:
                if rank.kv_used + growth * len(rank.decoding) > cap and len(rank.decoding) > 1:
                    preempted.extend(self._retract(rank, growth))
            else:
                while rank.kv_used + growth * len(rank.decoding) > cap and len(rank.running) > 1:
                    preempted.append(self._preempt_last(rank))
            in_progress = [r for r in in_progress if r.state == "prefill"]
            max_decodes = budget // per_seq
            decodes = tuple(rank.decoding.values())
            if len(decodes) > max_decodes:
                decodes = decodes[:max_decodes]
                ctx = sum(r.kv_held for r in decodes)
            else:
                ctx = rank.decode_ctx_tokens
            budget -= len(decodes) * per_seq
            if p.new_token_ratio_decay > 0 and not (sglang and preempted):  # a retraction set the ratio
                rank.new_token_ratio = max(p.new_token_ratio_min, rank.new_token_ratio - p.new_token_ratio_decay)
        else:
            ctx = 0

        prefills: list[tuple[_Request, int]] = []
        attn_pairs = 0.0
        if incremental and in_progress and budget > 0:
            while rank.kv_used >= cap and len(rank.running) > 1:  # no block left for the next chunk: recompute later
                preempted.append(self._preempt_last(rank))
            in_progress = [r for r in in_progress if r.state == "prefill"]
        for req in in_progress:
            if budget <= 0:
                break
            n = min(req.prefill_target - req.prefilled, budget)
            if incremental:
                n = min(n, room - rank.kv_used)
                if n <= 0:
                    continue
                req.kv_held += n
                rank.kv_used += n
            prefills.append((req, n))
            attn_pairs += n * (req.prefilled + n / 2)
            budget -= n
        while budget > 0 and not (sglang and decodes) and can_admit():  # SGLang: a step prefills or decodes
            req = rank.waiting.popleft()
            rank.queued_tokens -= req.prefill_target
            req.state = "prefill"
            rank.running[req.request_id] = req
            rank.remaining_out += req.max_output_tokens - req.generated
            if reserved is not None:  # admitted this round: its whole output stays reserved until the next
                reserved += min(req.max_output_tokens - req.generated, SGLANG_CLIP_MAX_NEW_TOKENS)
            if not req.admitted:
                req.prefilled = self._lookup_prefix(req)
            n = min(req.prefill_target - req.prefilled, budget)
            if incremental:
                n = min(n, room - rank.kv_used - req.prefilled)
                req.kv_held = req.prefilled + max(n, 0)
            else:
                req.kv_held = req.prefill_target
            rank.kv_used += req.kv_held
            if n <= 0:
                continue
            prefills.append((req, n))
            attn_pairs += n * (req.prefilled + n / 2)
            budget -= n

        n_prefill = sum(n for _, n in prefills)
        plan = RankPlan(decodes, tuple(prefills), tuple(preempted))
        if self._coster is None:
            cost = 0.0
            if decodes or prefills:
                cost = (p.decode_ms_per_seq * len(decodes) + p.decode_attn_ms_per_ktoken * ctx / 1000.0
                        + p.prefill_ms_per_token * n_prefill
                        + p.prefill_attn_ms_per_token_per_ktoken * attn_pairs / 1000.0
                        + p.prefill_ms_per_seq * len(prefills))
            return plan, cost, len(decodes), n_prefill, None
        load = RankLoad()
        if decodes or prefills:
            k = self._top_k
            selected = sum(r.kv_held if r.kv_held < k else k for r in decodes)
            load.tokens = len(decodes) * per_seq + n_prefill
            load.decode_seqs = len(decodes)
            load.prefill_seqs = len(prefills)
            load.decode_kv_tokens = selected
            load.decode_context_tokens = ctx
            load.selected_pairs = selected * per_seq
            load.indexer_pairs = ctx * per_seq
            sampled = len(decodes)
            model = self._coster.model
            # SGLang's dense prefill: a prefill-only step whose every sequence ends within the threshold
            dense = (p.dense_prefill_max_kv_tokens > 0 and not decodes
                     and all(req.prefilled + n <= p.dense_prefill_max_kv_tokens for req, n in prefills))
            for req, n in prefills:
                start = req.prefilled
                causal_pairs = n * (start + (n + 1) / 2.0)  # each new token over its whole context
                if dense:
                    load.dense_pairs += causal_pairs
                    load.dense_prefix_tokens += start
                else:
                    load.indexer_pairs += causal_pairs
                    load.selected_pairs += model.selected_pairs(start, n)
                if start + n >= req.prefill_target:
                    sampled += 1
            load.sampled = sampled
        return plan, 0.0, len(decodes), n_prefill, load

    # -- stepping -----------------------------------------------------------

    def plan_step(self) -> StepPlan:
        """Decide the next step (admissions and preemptions happen here); commit it before planning again."""
        if self._inflight is not None:
            raise RuntimeError("plan_step called twice: commit_step the previous plan first")
        p = self.profile
        plans, loads, slowest_ms, n_dec, n_pref = [], [], 0.0, 0, 0
        for rank in self._ranks:
            plan, cost, d, n, load = self._plan_rank(rank)
            plans.append(plan)
            loads.append(load)
            slowest_ms = max(slowest_ms, cost)
            n_dec += d
            n_pref += n
        total_ms = 0.0
        if n_dec or n_pref:
            if self._coster is not None:
                total_ms = self._coster.step_s(loads) * 1000.0
            else:
                total_ms = slowest_ms + p.step_base_ms + p.moe_ms_per_token * (n_dec * (1 + p.spec_draft_tokens) + n_pref)
        step = StepPlan(tuple(plans), total_ms, n_dec, n_pref)
        self._inflight = step
        return step

    def step_duration_s(self, plan: StepPlan) -> float:
        """How long the step takes, slowdown included."""
        return plan.cost_ms * self.slowdown / 1000.0

    def commit_step(self, plan: StepPlan) -> list[TokenEvent]:
        """Apply the step: tokens produced, prefills advanced, finished requests released."""
        if plan is not self._inflight:
            raise RuntimeError("commit_step expects the plan returned by the last plan_step")
        self._inflight = None
        self.num_steps += 1
        p = self.profile
        rate = p.tokens_per_decode_step
        events: list[TokenEvent] = []
        for rank_plan, rank in zip(plan.ranks, self._ranks):
            for req in rank_plan.decodes:
                if req.state != "decode":
                    continue  # aborted (or preempted) meanwhile
                if rate == 1.0:
                    n = 1
                else:
                    req.spec_credit += rate
                    n = int(req.spec_credit + 1e-9)
                    req.spec_credit -= n
                n = max(1, min(n, req.max_output_tokens - req.generated))
                req.generated += n
                rank.remaining_out -= n
                self.generation_tokens_total += n
                req.kv_held += n
                rank.kv_used += n
                rank.decode_ctx_tokens += n
                done = req.generated >= req.max_output_tokens
                events.append(TokenEvent(req.request_id, n, False, done))
                if done:
                    self._finish(rank, req)
            for req, n in rank_plan.prefills:
                if req.state != "prefill":
                    continue
                req.prefilled += n
                if req.prefilled < req.prefill_target:
                    continue
                first = req.generated == 0
                if first:
                    self.prompt_tokens_total += req.prompt_tokens
                    self._insert_prefix(req)
                req.generated += 1
                rank.remaining_out -= 1
                self.generation_tokens_total += 1
                req.kv_held += 1
                rank.kv_used += 1
                done = req.generated >= req.max_output_tokens
                events.append(TokenEvent(req.request_id, 1, first, done))
                if done:
                    self._finish(rank, req)
                else:
                    req.state = "decode"
                    rank.decoding[req.request_id] = req
                    rank.decode_ctx_tokens += req.kv_held
        return events

    def _finish(self, rank: _Rank, req: _Request) -> None:
        self.requests_finished += 1
        self._release(rank, req)
        req.state = "done"
        self._requests.pop(req.request_id, None)
