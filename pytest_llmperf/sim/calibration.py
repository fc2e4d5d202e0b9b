"""The twin against the seed: its figures in virtual time, and sim vs seed for every published figure.

Pure and deterministic: the requests of a workload come from the same
presets (``presets/workloads.toml``) and, for ShareGPT, the same committed
sample and the same natural-stop rule as the real-time suite on the sim
server, all sent at time 0 as the seed's runs at an infinite request rate.
The seed's figures live in ``sim/seed.toml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .des import SimRequest, simulate, summarize
from .model import Profile

SEED_PATH: Path = Path(__file__).resolve().parent / "seed.toml"
WORKLOADS_PATH: Path = Path(__file__).resolve().parent.parent / "presets" / "workloads.toml"

METRICS = ("total_token_throughput", "output_throughput", "duration", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
           "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
           "max_output_tokens_per_s")
"""The figures ``predict`` prints and ``calibrate`` compares, in the reference's names."""


@dataclass(frozen=True)
class Gate:
    """A tolerance on one figure: within ``tolerance`` (relative) on at least ``share`` of the seed's figures."""

    metric: str
    tolerance: float
    share: float


GATES = (
    Gate("total_token_throughput", 0.15, 1.0),
    Gate("output_throughput", 0.15, 1.0),
    Gate("duration", 0.15, 1.0),
    Gate("mean_tpot_ms", 0.30, 1.0),
    Gate("mean_ttft_ms", 0.30, 1.0),
    Gate("median_itl_ms", 0.50, 0.75),
    Gate("max_output_tokens_per_s", 0.40, 0.75),
)
"""What the twin must meet against the seed (``calibrate`` checks them)."""

CLAIMS = (
    # (name, configuration, against, workload, seed's change in total tok/s, allowed distance in points)
    ("vLLM MTP", "vllm-mtp1", "vllm-tp8", "sharegpt", 5.0),
    ("SGLang EAGLE", "sglang-mtp-eagle", "sglang-tp8", "sharegpt", 10.0),
    ("vLLM DeepGEMM off", "vllm-tp8-no-deepgemm", "vllm-tp8", "sharegpt", 5.0),
)
"""The seed's claims: a configuration's throughput change against its base, which the twin must reproduce."""


@lru_cache(maxsize=1)
def load_seed() -> dict[str, dict[str, dict[str, float]]]:
    """profile -> workload -> figures (``num_prompts`` included), as ``sim/seed.toml`` has them."""
    with SEED_PATH.open("rb") as f:
        return tomllib.load(f)


def workload_names() -> list[str]:
    """The workload presets (``presets/workloads.toml``), in their order."""
    from ..suite import workload_presets

    return list(workload_presets())


def preset_workload(name: str, num_prompts: int | None = None):
    """A preset as the suite parses it (``suite.Workload``), with ``num_prompts`` changed when given."""
    from ..suite import _parse_workload, workload_presets

    if name not in workload_presets():
        raise ValueError(f"unknown workload {name!r}: expected one of {', '.join(workload_presets())}")
    table = {"preset": name}
    if num_prompts is not None:
        table["num_prompts"] = num_prompts
    return _parse_workload("presets", name, table, WORKLOADS_PATH.parent)


@lru_cache(maxsize=16)
def _lengths(dataset: str, num_prompts: int, input_len: int | None, output_len: int | None, range_ratio: float,
             seed: int, dataset_path: str | None, ignore_eos: bool) -> tuple[tuple[int, int], ...]:
    from ..loadgen import datasets
    from ..tokenizer import DEFAULT_TOKENIZER
    from .protocol import natural_output_tokens

    if dataset == "random" and range_ratio == 0 and ignore_eos:
        assert input_len is not None and output_len is not None
        datasets.random_requests(1, input_len, output_len, seed)  # the same checks as the load generator's
        return ((input_len, output_len),) * num_prompts
    if dataset == "random":
        assert input_len is not None and output_len is not None
        reqs = datasets.random_requests(num_prompts, input_len, output_len, seed, range_ratio)
    else:
        path = dataset_path or datasets.SHAREGPT_SAMPLE_PATH
        reqs = datasets.sharegpt_requests(path, num_prompts, seed, output_len)
    out = []
    for r in reqs:
        n_in = DEFAULT_TOKENIZER.count(r.prompt)  # what the sim server counts
        n_out = r.expected_output_len if ignore_eos else min(r.expected_output_len, natural_output_tokens(r.prompt))
        out.append((max(1, n_in), n_out))
    return tuple(out)


def requests_of(workload) -> list[SimRequest]:
    """A ``suite.Workload``'s requests as the sim server would get them from the load generator.

    The load generator's own datasets (random prompts, or the ShareGPT file; the
    committed sample by default) and schedule (``arrivals.send_offsets_s``);
    outputs end where the simulated model stops on its own unless the workload
    ignores EOS. ValueError for what virtual time cannot replay (a concurrency cap).
    """
    from ..loadgen.arrivals import send_offsets_s

    if workload.max_concurrency is not None:
        raise ValueError(f"workload {workload.name}: max_concurrency is a closed loop the prediction does not "
                         f"replay; predict it without the cap, or measure it on the sim server")
    lengths = _lengths(workload.dataset, workload.num_prompts, workload.input_len, workload.output_len,
                       float(workload.range_ratio), workload.seed, workload.dataset_path, workload.ignore_eos)
    offsets = send_offsets_s(len(lengths), workload.request_rate, workload.burstiness, workload.seed)
    return [SimRequest(t, i, o) for t, (i, o) in zip(offsets, lengths)]


def workload_requests(workload: str, num_prompts: int | None = None) -> list[SimRequest]:
    """A preset workload's requests (``num_prompts``: the preset's unless given)."""
    return requests_of(preset_workload(workload, num_prompts))


def predict(profile: Profile, requests: Iterable[SimRequest]) -> dict[str, float]:
    """The load generator's figures for ``requests`` on ``profile``, in virtual time."""
    results, model = simulate(profile, list(requests))
    summary = summarize(results, model)
    m = dict(summary.metrics)
    m["num_steps"] = summary.num_steps
    m["num_preemptions"] = summary.num_preemptions
    return m


@dataclass(frozen=True)
class Figure:
    profile: str
    workload: str
    metric: str
    sim: float
    seed: float

    @property
    def ratio(self) -> float:
        return self.sim / self.seed if self.seed else math.inf


def compare(profiles: dict[str, Profile], workloads: Iterable[str] | None = None) -> list[Figure]:
    """Sim vs seed on every figure the seed has for these profiles (and workloads)."""
    seed = load_seed()
    wanted = set(workloads) if workloads else None
    out = []
    for name, profile in profiles.items():
        for workload, figures in seed.get(name, {}).items():
            if wanted is not None and workload not in wanted:
                continue
            m = predict(profile, workload_requests(workload, int(figures["num_prompts"])))
            for metric in METRICS:
                if metric in figures:
                    out.append(Figure(name, workload, metric, float(m[metric]), float(figures[metric])))
    return out


def gate_results(figures: list[Figure]) -> list[tuple[Gate, int, int]]:
    """Per gate: (gate, figures within tolerance, figures)."""
    out = []
    for gate in GATES:
        mine = [f for f in figures if f.metric == gate.metric]
        inside = sum(1 for f in mine if abs(f.ratio - 1.0) <= gate.tolerance + 1e-12)
        out.append((gate, inside, len(mine)))
    return out


def gates_met(results: list[tuple[Gate, int, int]]) -> bool:
    return all(n == 0 or inside >= gate.share * n - 1e-9 for gate, inside, n in results)


def throughput(figures: list[Figure], profile: str, workload: str, source: str) -> float | None:
    for f in figures:
        if f.profile == profile and f.workload == workload and f.metric == "total_token_throughput":
            return f.sim if source == "sim" else f.seed
    return None


def ranking(figures: list[Figure], workload: str = "sharegpt") -> tuple[list[str], list[str]]:
    """Profiles by total tok/s on ``workload``, best first: (seed's order, sim's order)."""
    tput = [f for f in figures if f.workload == workload and f.metric == "total_token_throughput"]
    return ([f.profile for f in sorted(tput, key=lambda f: -f.seed)],
            [f.profile for f in sorted(tput, key=lambda f: -f.sim)])


def adjacent_swaps(reference: list[str], other: list[str]) -> int:
    """How many swaps of neighbours turn ``other`` into ``reference`` (the inversions between them)."""
    pos = {name: i for i, name in enumerate(reference)}
    seq = [pos[n] for n in other if n in pos]
    return sum(1 for i in range(len(seq)) for j in range(i + 1, len(seq)) if seq[i] > seq[j])


def claim_results(figures: list[Figure]) -> list[tuple[str, float, float, float, bool]]:
    """The seed's claims: (name, seed's change %, sim's change %, allowed points, held)."""
    out = []
    for name, config, base, workload, points in CLAIMS:
        vals = {src: (throughput(figures, config, workload, src), throughput(figures, base, workload, src))
                for src in ("seed", "sim")}
        if None in vals["seed"] or None in vals["sim"]:
            continue
        seed_pct = (vals["seed"][0] / vals["seed"][1] - 1) * 100
        sim_pct = (vals["sim"][0] / vals["sim"][1] - 1) * 100
        held = abs(sim_pct - seed_pct) <= points and (seed_pct * sim_pct > 0 or abs(seed_pct) < points)
        out.append((name, seed_pct, sim_pct, points, held))
    return out


def dominance(figures: list[Figure], better: str = "sglang-tp8-dp8-dpattn",
              worse: str = "vllm-tp8") -> list[tuple[str, bool, bool]]:
    """Per workload both ran: (workload, seed has ``better`` ahead, sim has it ahead)."""
    out = []
    workloads = sorted({f.workload for f in figures if f.profile == better} & {f.workload for f in figures if f.profile == worse})
    for w in workloads:
        b_seed, b_sim = throughput(figures, better, w, "seed"), throughput(figures, better, w, "sim")
        w_seed, w_sim = throughput(figures, worse, w, "seed"), throughput(figures, worse, w, "sim")
        if None in (b_seed, b_sim, w_seed, w_sim):
            continue
        out.append((w, b_seed > w_seed, b_sim > w_sim))
    return out
