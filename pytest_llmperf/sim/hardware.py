"""Step costs from the hardware and the model: pure arithmetic, no clock or IO.

An engine step is priced from what it must compute and move on the GPUs of
one node, phase by phase, as a transformer layer runs them:

- **attention**, per attention rank (a TP group of ``attention_tp`` GPUs; with
  DP attention each rank is one GPU with its own batch): the MLA projections
  (GEMMs over the rank's tokens), DeepSeek Sparse Attention's lightweight
  indexer (FP8, linear in each query's context) and the sparse MLA core over
  at most ``top_k`` selected tokens per query, or, for a prefill batch an
  engine runs dense (SGLang up to ``top_k`` tokens), plain MHA in BF16 over
  the causal context with no indexer top-k, a cached prefix's latent expanded
  into every head's K and V again; bytes are the rank's share of
  the attention weights plus, for decodes, the selected latent KV and the
  indexer keys of the whole context. MLA keeps one latent KV head, so every
  GPU of a TP group reads (and holds) the whole KV of its requests;
- **dense FFN, shared and routed experts**, over the tokens of every rank
  together: FLOPs per token, and weight bytes that grow with the experts the
  batch touches, ``E * (1 - (1 - k/E) ** tokens)`` per MoE layer, not with the
  tokens themselves; with expert parallelism the busiest GPU sets the pace;
- **communication** over NVLink: TP all-reduces, DP-attention gathers and
  scatters, expert-parallel all-to-all, each with its bytes and its latency;
- **fixed costs**: kernel launch and synchronisation per layer, and the
  engine's CPU work per step, per request it decodes and per request it
  prefills (scheduling, sampling, bookkeeping), for the busiest rank: with
  DP attention each rank's scheduler is a process of its own.

Each phase takes ``max(FLOPs / (peak * efficiency), bytes / (bandwidth *
efficiency))`` (a roofline) and the phases add up. The few efficiency factors
are what an engine and its kernels make of the hardware; with the per-step,
per-request and per-layer costs they are the fitted numbers (a profile may
set one from a kernel's published figures instead), and configurations of one
engine share them. An MTP / EAGLE draft layer is priced as one more layer of
the step's own kind, dense prefill included (SGLang drafts with MLA).
"""

from __future__ import annotations

from dataclasses import dataclass

# -- the hardware -----------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures."""

    name: str
    memory_bytes: float
    hbm_bytes_per_s: float
    fp8_flops: float  # dense tensor-core FLOP/s
    bf16_flops: float
    nvlink_bytes_per_s: float  # per GPU, one direction
    collective_latency_s: float  # a small NVLink collective (all-reduce, all-gather) among the node's GPUs


H200 = GpuSpec(
    name="NVIDIA H200 SXM",
    memory_bytes=143771 * 2**20,  # what NVML reports as total memory (141 GB marketed)
    hbm_bytes_per_s=4.8e12,
    fp8_flops=1979e12,
    bf16_flops=989e12,
    nvlink_bytes_per_s=450e9,  # NVLink 4: 900 GB/s both directions
    collective_latency_s=12e-6,
)


# -- the model ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A DeepSeek-V3-family architecture: the figures a step's cost follows from."""

    name: str
    layers: int
    dense_layers: int
    hidden: int
    vocab: int
    dense_intermediate: int
    expert_intermediate: int
    routed_experts: int
    experts_per_token: int
    shared_experts: int
    attention_params_per_layer: float  # MLA projections (absorbed for decode) + the indexer's, per layer
    sparse_top_k: int  # DSA: tokens each query attends to
    sparse_flops_per_pair: float  # MLA core over one selected token, all heads (QK over 576 dims + PV over 512)
    dense_flops_per_pair: float  # plain MHA over one context token, all heads (QK over 192 dims + PV over 128)
    dense_kv_up_flops_per_token: float  # plain MHA expands a cached token's latent into every head's K and V
    indexer_flops_per_pair: float  # the indexer over one context token, all its heads
    weight_bytes_per_param: float  # FP8 checkpoint

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def expert_params(self) -> float:
        return 3.0 * self.hidden * self.expert_intermediate  # gate, up, down

    @property
    def dense_ffn_params(self) -> float:
        """Dense-layer FFNs and shared experts: every token goes through them."""
        return (self.dense_layers * 3.0 * self.hidden * self.dense_intermediate
                + self.moe_layers * self.shared_experts * self.expert_params)

    @property
    def lm_head_params(self) -> float:
        return float(self.vocab * self.hidden)

    @property
    def attention_params(self) -> float:
        return self.layers * self.attention_params_per_layer

    @property
    def total_params(self) -> float:
        return (self.attention_params + self.dense_ffn_params + 2 * self.lm_head_params
                + self.moe_layers * self.routed_experts * self.expert_params)

    def experts_touched(self, tokens: float) -> float:
        """Distinct routed experts a batch of ``tokens`` uses in one MoE layer (expected, uniform routing)."""
        if tokens <= 0:
            return 0.0
        return self.routed_experts * (1.0 - (1.0 - self.experts_per_token / self.routed_experts) ** tokens)

    def selected_pairs(self, start: int, count: int) -> float:
        """Sum of ``min(position, top_k)`` over the ``count`` tokens from position ``start`` (sparse attention's keys)."""
        if count <= 0:
            return 0.0
        k = self.sparse_top_k
        end = start + count  # positions start .. end-1 attend to start+1 .. end tokens
        lo, hi = start + 1, end
        if hi <= k:
            return (lo + hi) * count / 2.0
        if lo >= k:
            return float(k * count)
        below = k - lo + 1
        return (lo + k) * below / 2.0 + k * (count - below)


def _mla_attention_params_per_layer(hidden: int = 7168, q_lora: int = 1536, kv_lora: int = 512, rope: int = 64,
                                    nope: int = 128, v_head: int = 128, heads: int = 128, index_heads: int = 64,
                                    index_dim: int = 128) -> float:
    q_a = hidden * q_lora
    q_b = q_lora * heads * (nope + rope)
    kv_a = hidden * (kv_lora + rope)
    absorbed = heads * nope * kv_lora + heads * kv_lora * v_head  # W_UK and W_UV applied to the latent
    o = heads * v_head * hidden
    indexer = q_lora * index_heads * index_dim + hidden * index_dim + hidden * index_heads
    return float(q_a + q_b + kv_a + absorbed + o + indexer)


DEEPSEEK_V32 = ModelSpec(
    name="deepseek-ai/DeepSeek-V3.2",
    layers=61,
    dense_layers=3,
    hidden=7168,
    vocab=129280,
    dense_intermediate=18432,
    expert_intermediate=2048,
    routed_experts=256,
    experts_per_token=8,
    shared_experts=1,
    attention_params_per_layer=_mla_attention_params_per_layer(),
    sparse_top_k=2048,
    sparse_flops_per_pair=2.0 * 128 * (576 + 512),
    dense_flops_per_pair=2.0 * 128 * (192 + 128),
    dense_kv_up_flops_per_token=2.0 * 512 * 128 * (128 + 128),
    indexer_flops_per_pair=2.0 * 64 * 128,
    weight_bytes_per_param=1.0,
)


# -- a configuration on the node -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a configuration spreads the model over the node's GPUs."""

    gpus: int = 8
    attention_tp: int = 8  # GPUs of one attention rank (TP group); gpus // attention_tp ranks
    expert_parallel: bool = False
    kv_bytes_per_token_layer: float = 656 + 132  # latent KV (FP8 with scales) + indexer key, per token per layer
    memory_fraction: float = 0.9  # of each GPU's memory the engine takes for weights, activations and KV
    activation_reserve_bytes: float = 6e9  # per GPU: activations, CUDA graphs, workspaces

    @property
    def attention_ranks(self) -> int:
        return max(1, self.gpus // self.attention_tp)


@dataclass(frozen=True)
class Efficiency:
    """What an engine's kernels make of the hardware: the fitted part of the cost."""

    gemm: float  # of FP8 peak, for the projections, FFNs and experts
    attention: float  # of FP8 peak, for the sparse MLA core (and the indexer unless ``indexer`` is set)
    memory: float  # of HBM bandwidth
    nvlink: float  # of NVLink bandwidth
    layer_latency_us: float  # launch and synchronisation per layer and step (CUDA graphs keep it small)
    cpu_ms_per_step: float  # the scheduler's and the sampler's fixed work per step
    cpu_us_per_seq: float  # per running request and step: scheduling, sampling, bookkeeping
    moe_gemm: float = 0.0  # of FP8 peak, for the routed experts' grouped GEMMs (0: as ``gemm``)
    indexer: float = 0.0  # of FP8 peak, for the lightning indexer's FP8 logits (0: as ``attention``)
    cpu_ms_per_prefill_seq: float = 0.0  # per request prefilled in the step: inputs, KV blocks, first sample
    dense_attention: float = 0.0  # of BF16 peak, for dense (non-absorbed) MHA prefill


@dataclass
class RankLoad:
    """What one attention rank computes in one step."""

    tokens: float = 0.0  # decode tokens (speculative ones included) + prefill tokens
    decode_seqs: int = 0
    prefill_seqs: int = 0
    selected_pairs: float = 0.0  # sparse-attention (query, key) pairs: decodes, and prefills priced sparse
    indexer_pairs: float = 0.0  # indexer (query, key) pairs
    dense_pairs: float = 0.0  # causal (query, key) pairs of a dense MHA prefill (no indexer, no selection)
    dense_prefix_tokens: float = 0.0  # KV tokens before the prefilled ones, which dense MHA expands again
    decode_kv_tokens: float = 0.0  # selected KV tokens decodes read (their top-k, not their context)
    decode_context_tokens: float = 0.0  # context tokens whose indexer keys decodes read
    sampled: int = 0  # sequences that sample a token this step


def weight_bytes_per_gpu(model: ModelSpec, layout: Layout) -> float:
    """Weights each GPU holds: attention replicated across ranks, everything else split over the node."""
    b = model.weight_bytes_per_param
    attention = model.attention_params * b / layout.attention_tp
    rest = (model.dense_ffn_params * b + model.moe_layers * model.routed_experts * model.expert_params * b
            + 2 * model.lm_head_params * 2.0) / layout.gpus  # embedding and LM head in BF16
    return attention + rest


def kv_capacity_tokens(model: ModelSpec, gpu: GpuSpec, layout: Layout) -> int:
    """KV tokens one attention rank holds: its GPUs' memory left after weights and activations."""
    free = gpu.memory_bytes * layout.memory_fraction - weight_bytes_per_gpu(model, layout) - layout.activation_reserve_bytes
    per_token = layout.kv_bytes_per_token_layer * model.layers
    return max(0, int(free // per_token))


def _roofline(flops: float, peak: float, bytes_: float, bandwidth: float) -> float:
    return max(flops / peak, bytes_ / bandwidth)


class StepCoster:
    """Prices a step from its ranks' loads; built once per profile."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, layout: Layout, eff: Efficiency, draft_layers: int = 0):
        self.model, self.gpu, self.layout, self.eff = model, gpu, layout, eff
        m, g = model, layout
        self._gemm_peak = gpu.fp8_flops * eff.gemm
        self._attn_peak = gpu.fp8_flops * eff.attention
        self._index_peak = gpu.fp8_flops * (eff.indexer or eff.attention)
        self._moe_peak = gpu.fp8_flops * (eff.moe_gemm or eff.gemm)
        self._dense_peak = gpu.bf16_flops * eff.dense_attention
        self._bw = gpu.hbm_bytes_per_s * eff.memory
        self._link = gpu.nvlink_bytes_per_s * eff.nvlink
        layers = m.layers + draft_layers  # an MTP / EAGLE draft layer runs like one more layer
        self._layers = layers
        self._layer_scale = layers / m.layers
        self._attn_weight_bytes = m.attention_params * m.weight_bytes_per_param / g.attention_tp
        self._attn_flops_per_token = 2.0 * m.attention_params / g.attention_tp
        self._kv_select_bytes = (layout.kv_bytes_per_token_layer - 132.0) * m.layers
        self._kv_index_bytes = 132.0 * m.layers
        self._fixed_s = (layers * eff.layer_latency_us * 1e-6 + eff.cpu_ms_per_step * 1e-3)
        self._dense_flops_per_token = 2.0 * m.dense_ffn_params / g.gpus
        self._dense_bytes = m.dense_ffn_params * m.weight_bytes_per_param / g.gpus
        self._expert_bytes_per_gpu = m.expert_params * m.weight_bytes_per_param * m.moe_layers / g.gpus
        self._routed_flops_per_token = 2.0 * m.experts_per_token * m.expert_params * m.moe_layers / g.gpus
        self._head_flops = 2.0 * m.lm_head_params / g.gpus
        self._head_bytes = m.lm_head_params * 2.0 / g.gpus
        self._act_bytes_per_token = m.hidden * 2.0  # BF16 hidden state
        ranks = layout.attention_ranks
        # collectives per layer: TP attention all-reduce; then the FFN's own (all-reduce, or gather + scatter
        # around it with DP attention, or dispatch + combine with EP)
        self._collectives_per_layer = (1 if g.attention_tp > 1 else 0) + (1 if ranks == 1 else 2)
        if g.expert_parallel:
            self._collectives_per_layer += 1

    def step_s(self, ranks: list[RankLoad]) -> float:
        """Seconds one step takes on the node."""
        m, g, eff = self.model, self.layout, self.eff
        attn_s = 0.0
        total_tokens = 0.0
        busiest_cpu_s = 0.0  # each rank's scheduler is its own process: the busiest one's CPU work counts
        sampled = 0
        busiest_rank_tokens = 0.0
        for load in ranks:
            if load.tokens <= 0:
                continue
            total_tokens += load.tokens
            busiest_cpu_s = max(busiest_cpu_s, load.decode_seqs * eff.cpu_us_per_seq * 1e-6
                                + load.prefill_seqs * eff.cpu_ms_per_prefill_seq * 1e-3)
            sampled += load.sampled
            busiest_rank_tokens = max(busiest_rank_tokens, load.tokens)
            t = g.attention_tp
            flops_gemm = self._attn_flops_per_token * load.tokens
            core_s = (m.sparse_flops_per_pair * load.selected_pairs / self._attn_peak
                      + m.indexer_flops_per_pair * load.indexer_pairs / self._index_peak) * m.layers / t
            if load.dense_pairs:
                if self._dense_peak <= 0:
                    raise ValueError("a dense MHA prefill needs Efficiency.dense_attention > 0 (of BF16 peak)")
                core_s += ((m.dense_flops_per_pair * load.dense_pairs
                            + m.dense_kv_up_flops_per_token * load.dense_prefix_tokens)
                           / self._dense_peak * m.layers / t)
            bytes_ = (self._attn_weight_bytes + self._kv_select_bytes * load.decode_kv_tokens
                      + self._kv_index_bytes * load.decode_context_tokens)
            s = max(flops_gemm / self._gemm_peak + core_s, bytes_ / self._bw)
            attn_s = max(attn_s, s)
        if total_tokens <= 0:
            return 0.0
        # dense FFN layers, shared experts and the LM head: every token, weights split over the node
        ffn_s = _roofline(self._dense_flops_per_token * total_tokens + self._head_flops * sampled, self._gemm_peak,
                          self._dense_bytes + self._head_bytes, self._bw)
        # routed experts: bytes follow the experts touched; with EP the busiest GPU's share sets the pace
        touched = m.experts_touched(total_tokens)
        routed_flops = self._routed_flops_per_token * total_tokens
        if g.expert_parallel and g.gpus > 1:
            per_gpu_assignments = total_tokens * m.experts_per_token / g.gpus
            imbalance = 1.0 + 1.5 * (per_gpu_assignments ** -0.5) if per_gpu_assignments > 0 else 1.0
            routed_flops *= imbalance
            touched = min(m.routed_experts, touched * imbalance)
        routed_s = _roofline(routed_flops, self._moe_peak,
                             self._expert_bytes_per_gpu * touched, self._bw)
        # NVLink: bytes each GPU sends per layer, and the collectives' latency
        n = g.gpus
        act = self._act_bytes_per_token
        comm_bytes = 0.0
        if g.attention_tp > 1:
            t = g.attention_tp
            comm_bytes += 2.0 * (t - 1) / t * act * busiest_rank_tokens  # attention output all-reduce
        if g.attention_ranks == 1:
            comm_bytes += 2.0 * (n - 1) / n * act * total_tokens  # FFN output all-reduce
        else:
            comm_bytes += 2.0 * (n - 1) / n * act * total_tokens  # gather before, scatter after the FFN
        if g.expert_parallel:
            comm_bytes += (n - 1) / n * total_tokens * m.experts_per_token * m.hidden * 3.0 / n  # FP8 out, BF16 back
        comm_s = m.layers * (comm_bytes / self._link + self._collectives_per_layer * self.gpu.collective_latency_s)
        compute_s = (attn_s + ffn_s + routed_s) * self._layer_scale + comm_s
        return compute_s + self._fixed_s + busiest_cpu_s


GPUS = {"h200": H200}
"""GPU specs a profile's ``hardware`` key names."""
