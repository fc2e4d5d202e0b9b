"""Compare the sim profiles with the seed study's published figures.

    .venv/bin/python benchmarks/calibrate_sim.py                 # both required profiles, every seed workload
    .venv/bin/python benchmarks/calibrate_sim.py --profile trtllm-tp8 --workload sharegpt
    .venv/bin/python benchmarks/calibrate_sim.py --fit vllm-tp8  # dev aid: search parameters, print the best

Runs the virtual-time simulation (all requests arrive at t=0, as the seed's
runs with an infinite request rate) and prints sim vs seed for total token
throughput, mean TPOT, mean TTFT and duration, with sim/seed ratios. The
sim's figures are the load generator's own metrics (``compute_metrics``
over the simulated requests, as for a measured run). The seed's figures
(DeepSeek-V3.2 on 8x H200, see the seed study) are the reference; the seed
runs include client overheads the sim does not model.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_llmperf.sim.des import SimRequest, simulate, summarize  # noqa: E402
from pytest_llmperf.sim.model import Profile  # noqa: E402
from pytest_llmperf.sim.profiles import list_profiles, load_profile  # noqa: E402
from pytest_llmperf.sim.protocol import NATURAL_STOP_FRACTION  # noqa: E402

REQUIRED = ("vllm-tp8", "sglang-tp8-dp8-dpattn")


@dataclass(frozen=True)
class SeedFigures:
    num_prompts: int
    total_token_throughput: float
    mean_tpot_ms: float
    mean_ttft_ms: float
    duration_s: float


# workload -> (input_len, output_len) for random workloads; "sharegpt" is drawn below.
WORKLOADS = {
    "sharegpt": None,
    "short-128-4": (128, 4),
    "medium-2000-100": (2000, 100),
    "long-4000-200": (4000, 200),
    "very-long-32000-100": (32000, 100),
    "ultra-long-128000-100": (128000, 100),
}

# The seed study's published runs (vllm bench serve, request rate inf).
SEED: dict[str, dict[str, SeedFigures]] = {
    "vllm-tp8": {
        "sharegpt": SeedFigures(1000, 5482.59, 227.45, 17743.08, 76.59),
        "short-128-4": SeedFigures(1000, 10539.36, 747.47, 5621.20, 12.52),
        "medium-2000-100": SeedFigures(500, 10488.24, 375.72, 46255.96, 100.11),
        "long-4000-200": SeedFigures(500, 9313.06, 245.07, 108539.85, 225.49),
        "very-long-32000-100": SeedFigures(100, 9789.64, 463.89, 162297.42, 327.90),
        "ultra-long-128000-100": SeedFigures(100, 6288.25, 619.71, 1018221.01, 2037.13),
    },
    "sglang-tp8-dp8-dpattn": {
        "sharegpt": SeedFigures(1000, 7351.59, 287.86, 7815.00, 56.62),
        "short-128-4": SeedFigures(1000, 19778.53, 753.97, 4099.90, 6.67),
        "medium-2000-100": SeedFigures(500, 27385.86, 200.34, 18352.43, 38.34),
        "long-4000-200": SeedFigures(500, 20094.60, 171.34, 47739.77, 104.51),
        "very-long-32000-100": SeedFigures(100, 20022.76, 245.69, 83622.72, 160.32),
        "ultra-long-128000-100": SeedFigures(50, 16442.29, 51.45, 208784.94, 389.54),
    },
    # ShareGPT only for the other configurations.
    "vllm-dp8-ep": {"sharegpt": SeedFigures(1000, 6343.10, 278.22, 9144.24, 65.62)},
    "vllm-mtp1": {"sharegpt": SeedFigures(1000, 5593.57, 241.34, 12501.74, 74.35)},
    "vllm-tp8-no-deepgemm": {"sharegpt": SeedFigures(1000, 4884.39, 346.54, 13678.64, 85.38)},
    "sglang-tp8": {"sharegpt": SeedFigures(1000, 3012.37, 1103.96, 11470.15, 138.25)},
    "sglang-tp8-dpattn": {"sharegpt": SeedFigures(1000, 4190.17, 608.90, 13679.11, 99.46)},
    "sglang-tp8-dp8-dpattn-ep8": {"sharegpt": SeedFigures(1000, 7293.61, 319.46, 8437.36, 57.14)},
    "sglang-mtp-eagle": {"sharegpt": SeedFigures(1000, 1481.77, 68.88, 139046.94, 278.36)},
    "trtllm-tp8": {"sharegpt": SeedFigures(984, 1732.48, 1391.76, 65710.22, 236.70)},
    "trtllm-tp8-ep8": {"sharegpt": SeedFigures(984, 2882.32, 561.24, 24155.45, 142.99)},
    "trtllm-tp8-ep8-no-deepgemm": {"sharegpt": SeedFigures(984, 3052.33, 541.07, 23229.65, 134.65)},
}

SHAREGPT_MEAN_INPUT = 219.1   # the seed: 219111-219171 input tokens over 1000 prompts
SHAREGPT_MEAN_OUTPUT = 198.0  # the seed: 193k-201k generated tokens over 1000 prompts
SHAREGPT_SHORT_REPLY_FRACTION = 0.08


def sharegpt_like(num_prompts: int, seed: int = 42) -> list[tuple[int, int]]:
    """(input, output) lengths shaped like the reference's filtered ShareGPT, scaled to the seed's means.

    Lognormal lengths, prompt 4..1024 and prompt + output <= 2048 as the
    reference's filters require.
    """
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < num_prompts:
        n_in = int(rng.lognormvariate(math.log(120), 1.0))
        if rng.random() < SHAREGPT_SHORT_REPLY_FRACTION:
            n_out = rng.randint(4, 32)  # one-line replies ("Sure.", "Yes, ...")
        else:
            n_out = int(rng.lognormvariate(math.log(150), 0.9))
        if 4 <= n_in <= 1024 and n_out >= 4 and n_in + n_out <= 2048:
            pairs.append((n_in, n_out))
    k_in = SHAREGPT_MEAN_INPUT * num_prompts / sum(p[0] for p in pairs)
    k_out = SHAREGPT_MEAN_OUTPUT * num_prompts / sum(p[1] for p in pairs)
    out = []
    for i, o in pairs:
        o = max(4, round(o * k_out))
        if rng.random() < NATURAL_STOP_FRACTION:  # the seed ran ShareGPT without ignore_eos, as the sim server would
            o = min(o, 4 + rng.randrange(508))
        out.append((max(4, min(1024, round(i * k_in))), o))
    return out


def workload_requests(workload: str, num_prompts: int) -> list[SimRequest]:
    shape = WORKLOADS[workload]
    if shape is None:
        return [SimRequest(0.0, i, o) for i, o in sharegpt_like(num_prompts)]
    return [SimRequest(0.0, shape[0], shape[1]) for _ in range(num_prompts)]


def run_case(profile: Profile, workload: str, num_prompts: int) -> dict[str, float | int]:
    """The load generator's metrics (``metrics.compute_metrics`` keys) of one workload simulated on ``profile``."""
    results, model = simulate(profile, workload_requests(workload, num_prompts))
    return summarize(results, model).metrics


def table(profiles: list[str], workloads: list[str] | None) -> list[tuple[str, str, float, float]]:
    from tabulate import tabulate

    rows, ratios = [], []
    for name in profiles:
        profile = load_profile(name)
        for workload, seed in SEED.get(name, {}).items():
            if workloads and workload not in workloads:
                continue
            t0 = time.perf_counter()
            m = run_case(profile, workload, seed.num_prompts)
            wall = time.perf_counter() - t0
            r_tps = m["total_token_throughput"] / seed.total_token_throughput
            r_tpot = m["mean_tpot_ms"] / seed.mean_tpot_ms
            ratios.append((name, workload, r_tps, r_tpot))
            rows.append([name, workload, seed.num_prompts,
                         f"{m['total_token_throughput']:.0f}", f"{seed.total_token_throughput:.0f}", f"{r_tps:.2f}",
                         f"{m['mean_tpot_ms']:.0f}", f"{seed.mean_tpot_ms:.0f}", f"{r_tpot:.2f}",
                         f"{m['mean_ttft_ms'] / 1000:.1f}", f"{seed.mean_ttft_ms / 1000:.1f}",
                         f"{m['duration']:.1f}", f"{seed.duration_s:.1f}", f"{wall:.2f}"])
    print(tabulate(rows, headers=["profile", "workload", "n", "tok/s sim", "seed", "ratio", "TPOT ms sim", "seed",
                                  "ratio", "TTFT s sim", "seed", "dur s sim", "seed", "wall s"]))
    return ratios


# -- dev aid: parameter search ------------------------------------------------

FIT_PARAMS = ("step_base_ms", "decode_ms_per_seq", "decode_attn_ms_per_ktoken", "prefill_ms_per_token",
              "prefill_attn_ms_per_token_per_ktoken", "prefill_ms_per_seq", "moe_ms_per_token", "kv_capacity_tokens",
              "chunked_prefill_tokens", "max_running_requests")


def fit_loss(profile: Profile, seeds: dict[str, SeedFigures], ttft_weight: float) -> float:
    loss = 0.0
    for workload, seed in seeds.items():
        m = run_case(profile, workload, seed.num_prompts)
        loss += math.log(m["total_token_throughput"] / seed.total_token_throughput) ** 2
        loss += math.log(max(m["mean_tpot_ms"], 1e-3) / seed.mean_tpot_ms) ** 2
        loss += ttft_weight * math.log(max(m["mean_ttft_ms"], 1e-3) / seed.mean_ttft_ms) ** 2
    return loss


def fit(name: str, rounds: int, ttft_weight: float, params: tuple[str, ...]) -> None:
    profile = load_profile(name)
    seeds = SEED[name]
    best = fit_loss(profile, seeds, ttft_weight)
    print(f"start loss {best:.4f}")
    step = 1.5
    for rnd in range(rounds):
        improved = False
        for param in params:
            for factor in (step, 1 / step):
                value = getattr(profile, param)
                if value == 0:
                    continue
                new = value * factor
                if isinstance(value, int):
                    new = max(1, int(round(new)))
                try:
                    cand = profile.replace(**{param: new})
                except ValueError:
                    continue
                loss = fit_loss(cand, seeds, ttft_weight)
                if loss < best - 1e-6:
                    best, profile, improved = loss, cand, True
                    print(f"round {rnd} {param} -> {new:.6g}  loss {best:.4f}", flush=True)
                    break
        if not improved:
            step = math.sqrt(step)
            if step < 1.01:
                break
    print("best:")
    for param in params:
        print(f"{param} = {getattr(profile, param)!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="append", help=f"profile name (repeatable; default: {', '.join(REQUIRED)}; "
                                                         "'all' for every profile with seed figures)")
    ap.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="limit to workloads (repeatable)")
    ap.add_argument("--fit", metavar="PROFILE", help="dev aid: coordinate search of the profile's parameters")
    ap.add_argument("--fit-rounds", type=int, default=8)
    ap.add_argument("--fit-params", default=",".join(FIT_PARAMS))
    ap.add_argument("--ttft-weight", type=float, default=0.1)
    args = ap.parse_args()
    if args.fit:
        fit(args.fit, args.fit_rounds, args.ttft_weight, tuple(p for p in args.fit_params.split(",") if p))
        return
    names = args.profile or list(REQUIRED)
    if names == ["all"]:
        names = [n for n in list_profiles() if n in SEED]
    ratios = table(names, args.workload)
    inside = sum(1 for _, _, a, b in ratios if 0.75 <= a <= 1.25 and 0.75 <= b <= 1.25)
    print(f"\n{inside}/{len(ratios)} cases with throughput and mean TPOT both within 25% of the seed")


if __name__ == "__main__":
    main()
