"""Time the twin's whole calibration, or fit a profile's efficiencies to the seed (a development aid).

    .venv/bin/python benchmarks/calibrate_sim.py                   # every profile, every seed figure: wall time
    .venv/bin/python benchmarks/calibrate_sim.py --fit vllm-tp8 --params gemm_efficiency,memory_efficiency

The figures themselves are printed by ``python -m pytest_llmperf.sim
calibrate``; this script times that work on one core (the target: under 30 s
for every profile and workload) and, with ``--fit``, searches a profile's
parameters (multiplicative coordinate steps) for the smallest log-ratio loss
against the seed, weighted like the gates, keeping the single-request TPOT
at 2k context inside 17-36 ms. It prints the best values; copy them into
the profile by hand.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_llmperf.sim import calibration as cal  # noqa: E402
from pytest_llmperf.sim.des import SimRequest, simulate  # noqa: E402
from pytest_llmperf.sim.model import Profile  # noqa: E402
from pytest_llmperf.sim.profiles import list_profiles, load_profile  # noqa: E402

WEIGHTS = {"total_token_throughput": 3.0, "output_throughput": 1.0, "duration": 1.0, "mean_tpot_ms": 2.0,
           "mean_ttft_ms": 2.0, "median_itl_ms": 0.7, "max_output_tokens_per_s": 0.7}
TOLERANCE = {g.metric: g.tolerance for g in cal.GATES}


def single_request_tpot_ms(profile: Profile) -> float:
    results, _ = simulate(profile, [SimRequest(0.0, 2000, 64)])
    t = results[0].chunk_times_s
    return (t[-1] - t[0]) / sum(results[0].chunk_tokens[1:]) * 1000.0 * profile.tokens_per_decode_step


def loss(profile: Profile, name: str, workloads: list[str] | None) -> float:
    total = 0.0
    for f in cal.compare({name: profile}, workloads):
        if f.metric not in WEIGHTS:
            continue
        lr = abs(math.log(max(f.sim, 1e-9) / f.seed))
        excess = max(0.0, lr - math.log(1 + 0.7 * TOLERANCE[f.metric]))
        total += WEIGHTS[f.metric] * (0.2 * lr ** 2 + 5.0 * excess ** 2)
    tpot = single_request_tpot_ms(profile)
    if not 17.0 <= tpot <= 36.0:
        total += 1.0 + 10.0 * math.log(tpot / (17.0 if tpot < 17.0 else 36.0)) ** 2
    return total


def fit(name: str, params: list[str], rounds: int, workloads: list[str] | None) -> None:
    profile = load_profile(name)
    best = loss(profile, name, workloads)
    print(f"start loss {best:.4f}", flush=True)
    step = 1.6
    for rnd in range(rounds):
        improved = False
        for param in params:
            for factor in (step, 1 / step):
                value = getattr(profile, param)
                if value == 0 or isinstance(value, bool):
                    continue
                new = value * factor
                if isinstance(value, int):
                    new = max(1, int(round(new)))
                if param.endswith("efficiency") or param == "memory_fraction":
                    new = min(new, 0.95)
                try:
                    candidate = profile.replace(**{param: new})
                    trial = loss(candidate, name, workloads)
                except (ValueError, RuntimeError):
                    continue
                if trial < best - 1e-6:
                    best, profile, improved = trial, candidate, True
                    print(f"round {rnd}: {param} = {new:.5g}  loss {best:.4f}", flush=True)
                    break
        if not improved:
            step = math.sqrt(step)
            if step < 1.02:
                break
    print("best:")
    for param in params:
        print(f"{param} = {getattr(profile, param)!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", metavar="PROFILE", help="search this profile's parameters")
    ap.add_argument("--params", default="gemm_efficiency,attention_efficiency,memory_efficiency,layer_latency_us,"
                                        "cpu_ms_per_step,cpu_us_per_seq")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--workload", action="append", help="limit the fit to workloads (repeatable)")
    args = ap.parse_args()
    if args.fit:
        fit(args.fit, [p for p in args.params.split(",") if p], args.rounds, args.workload)
        return
    seed = cal.load_seed()
    names = [n for n in list_profiles() if n in seed]
    t0 = time.process_time()
    w0 = time.perf_counter()
    figures = cal.compare({n: load_profile(n) for n in names})
    cpu_s, wall_s = time.process_time() - t0, time.perf_counter() - w0
    cases = len({(f.profile, f.workload) for f in figures})
    print(f"calibration: {len(names)} profiles, {cases} cases, {len(figures)} figures compared in "
          f"{cpu_s:.1f} s of CPU ({wall_s:.1f} s wall; target: under 30 s on one core)")
    for gate, inside, n in cal.gate_results(figures):
        print(f"  {gate.metric:26s} within ±{gate.tolerance:.0%}: {inside}/{n}")


if __name__ == "__main__":
    main()
