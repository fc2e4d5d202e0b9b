"""Time the twin's whole calibration, or fit a profile's efficiencies to the seed (a development aid).

    .venv/bin/python benchmarks/calibrate_sim.py                   # every profile, every seed figure: CPU time
    .venv/bin/python benchmarks/calibrate_sim.py --fit vllm-tp8 --params gemm_efficiency,memory_efficiency
    .venv/bin/python benchmarks/calibrate_sim.py --fit vllm-mtp1 --params tokens_per_decode_step \
        --workload sharegpt --target 0.95                          # a derived configuration, against its base
    .venv/bin/python benchmarks/calibrate_sim.py --fit vllm-tp8 --also vllm-tp8-no-deepgemm \
        --params max_running_requests,vllm-tp8-no-deepgemm.gemm_efficiency   # a base and what derives from it

The figures themselves are printed by ``python -m pytest_llmperf.sim
calibrate``; this script times that work on one core (the target: under 30 s
for every profile and workload) and, with ``--fit``, searches a profile's
parameters (a (1+4) evolution strategy on log-scale steps, two processes)
for the smallest loss against the seed: squared log-ratios, heavily
penalised past 90% of a gate's tolerance (80% where most figures must be
inside) and by a step past 97% of an every-figure gate's, so that a fit
keeps a margin rather than parking a figure on the edge; the single-request
TPOT at 2k context kept inside 17-36 ms; and with ``--target`` the ShareGPT
throughput's sim/seed ratio pulled to the base configuration's, so that the
seed's gap between them (its claims, its ranking) survives. ``--also`` fits
a base together with configurations derived from it: each takes the base's
trial values (except the keys its own file, or one between it and the base,
sets; ``NAME.param`` fits one of those), its figures join the loss, and its
ShareGPT throughput ratio is pulled to the base's. It prints the best
values; copy them into the profiles by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_llmperf.sim import calibration as cal  # noqa: E402
from pytest_llmperf.sim.des import SimRequest, simulate  # noqa: E402
from pytest_llmperf.sim.model import Profile  # noqa: E402
from pytest_llmperf.sim.profiles import PROFILES_DIR, list_profiles, load_profile  # noqa: E402

GATED = {g.metric: g.tolerance for g in cal.GATES if g.share >= 1.0}  # every figure must be inside
SHARED = {g.metric: g.tolerance for g in cal.GATES if g.share < 1.0}  # most figures must be inside
BOUNDS = {"max_running_requests": (1, 4096), "chunked_prefill_tokens": (256, 65536), "draft_layers": (1, 8),
          "tokens_per_decode_step": (1.0, 5.0), "new_token_ratio": (0.01, 1.0), "new_token_ratio_min": (0.01, 1.0)}


def single_request_tpot_ms(profile: Profile) -> float:
    results, _ = simulate(profile, [SimRequest(0.0, 2000, 64)])
    t = results[0].chunk_times_s
    return (t[-1] - t[0]) / sum(results[0].chunk_tokens[1:]) * 1000.0 * profile.tokens_per_decode_step


MARGIN = 0.97
"""A figure past this share of its every-figure gate's tolerance costs a step: fits keep a margin, not the edge."""


def loss(profile: Profile, name: str, workloads: list[str] | None, target: float | None,
         figures: list[cal.Figure] | None = None) -> float:
    """Squared log-ratios, heavily penalised past 90% of an every-figure gate's tolerance (80% of a
    most-figures one) and more so past ``MARGIN`` of it; with ``target``, the ShareGPT throughput's sim/seed
    ratio pulled to it (so a derived configuration keeps the seed's gap to its base). ``figures``: the
    profile's figures when already computed."""
    total = 0.0
    for f in figures if figures is not None else cal.compare({name: profile}, workloads):
        lr = abs(math.log(max(f.sim, 1e-9) / f.seed))
        if f.metric in GATED:
            off, edge = abs(f.ratio - 1.0), MARGIN * GATED[f.metric]  # what the gate measures, and where we stop
            total += (0.1 * lr ** 2 + 300.0 * max(0.0, lr - math.log(1 + 0.9 * GATED[f.metric])) ** 2
                      + (1.0 + 30000.0 * (off - edge) ** 2 if off > edge else 0.0))
        elif f.metric in SHARED:
            total += 0.15 * lr ** 2 + 2.0 * max(0.0, lr - math.log(1 + 0.8 * SHARED[f.metric])) ** 2
        if target and f.metric == "total_token_throughput" and f.workload == "sharegpt":
            total += 3000.0 * math.log(f.ratio / target) ** 2
    tpot = single_request_tpot_ms(profile)
    if not 17.0 <= tpot <= 36.0:
        total += 1.0 + 10.0 * math.log(tpot / (17.0 if tpot < 17.0 else 36.0)) ** 2
    return total


_JOB: tuple = ()


def _init(job: tuple) -> None:
    global _JOB
    _JOB = job


def _read(name: str) -> dict:
    return tomllib.loads((PROFILES_DIR / f"{name}.toml").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)  # every trial asks again; the files do not change during a fit
def _own_keys(name: str, base: str) -> frozenset[str] | None:
    """The keys built-in profile ``name`` and the profiles between it and ``base`` set over ``base``; None when
    ``name`` does not derive from ``base``."""
    own: set[str] = set()
    seen = {name}
    while name != base:
        data = _read(name)
        parent = data.get("base")
        if not isinstance(parent, str) or parent not in list_profiles() or parent in seen:
            return None
        own |= set(data)
        seen.add(parent)
        name = parent
    return frozenset(own)


def _derived(name: str, base: str, values: dict) -> Profile:
    """Derived profile ``name`` with ``base``'s trial ``values`` (but the keys it sets itself) and its own
    (``name.param``)."""
    own = _own_keys(name, base) or frozenset()
    merged = {k: v for k, v in values.items() if "." not in k and k not in own}
    merged.update({k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")})
    return load_profile(name).replace(**merged)


def _trial(values: dict) -> float:
    name, workloads, target, also = _JOB
    try:
        base = load_profile(name).replace(**{k: v for k, v in values.items() if "." not in k})
        figures = cal.compare({name: base}, workloads)
        total = loss(base, name, workloads, target, figures)
        if also:
            ratios = [f.ratio for f in figures if f.metric == "total_token_throughput" and f.workload == "sharegpt"]
            base_ratio = ratios[0] if ratios else next(
                f.ratio for f in cal.compare({name: base}, ["sharegpt"]) if f.metric == "total_token_throughput")
            for other in also:
                total += loss(_derived(other, name, values), other, workloads, base_ratio)
        return total
    except (ValueError, RuntimeError):
        return math.inf


def check_fit_args(name: str, params: list[str], also: list[str]) -> str | None:
    """What is wrong with a fit's profile names and parameters, in one line, or None."""
    names = list_profiles()
    fields = {f.name for f in dataclasses.fields(Profile)}
    if name not in names:
        return f"--fit {name}: not a built-in profile (one of {', '.join(names)})"
    for other in also:
        if other not in names:
            return f"--also {other}: not a built-in profile (one of {', '.join(names)})"
        if other == name or _own_keys(other, name) is None:
            return f"--also {other}: does not derive from {name} (its profile's base chain never reaches it)"
    if len(set(also)) != len(also):
        return "--also: a profile is named twice"
    if not params:
        return "--params: name at least one parameter"
    for p in params:
        owner, _, key = p.rpartition(".")
        if owner and owner not in also:
            return f"--params {p}: {owner} is not fitted here; add --also {owner}"
        if key not in fields:
            return f"--params {p}: {key} is not a profile key"
    return None


def _clip(param: str, value: float, integer: bool) -> float:
    param = param.split(".", 1)[-1]
    low, high = BOUNDS.get(param, (1e-4, 1.0 if param.endswith("efficiency") or param == "memory_fraction" else 1e6))
    value = min(max(value, low), high)
    return int(round(value)) if integer else value


def fit(name: str, params: list[str], minutes: float, workloads: list[str] | None, target: float | None,
        seed: int, also: list[str] | None = None) -> None:
    """A (1+4) evolution strategy on log-scale steps, two processes, for ``minutes``."""
    import json
    import random
    from multiprocessing import Pool

    profile = load_profile(name)
    x = {p: getattr(load_profile(p.split(".", 1)[0]) if "." in p else profile, p.split(".", 1)[-1]) for p in params}
    integer = {p: isinstance(v, int) and not isinstance(v, bool) for p, v in x.items()}
    rng = random.Random(seed)
    with Pool(2, initializer=_init, initargs=((name, workloads, target, also or []),)) as pool:
        fx = pool.map(_trial, [x])[0]
        print(f"start loss {fx:.4f}", flush=True)
        sigma, deadline = 0.3, time.monotonic() + 60.0 * minutes
        while time.monotonic() < deadline:
            cands = []
            for _ in range(4):
                y = dict(x)
                for p in params:
                    step = sigma * rng.gauss(0.0, 1.0) * (1.0 if rng.random() < 0.5 else 0.3)
                    y[p] = _clip(p, (x[p] or 1e-3) * math.exp(step), integer[p])
                cands.append(y)
            losses = pool.map(_trial, cands)
            i = min(range(4), key=losses.__getitem__)
            if losses[i] < fx:
                x, fx, sigma = cands[i], losses[i], min(1.0, sigma * 1.5)
                print(f"loss {fx:.4f} {json.dumps({p: round(v, 4) for p, v in x.items()})}", flush=True)
            else:
                sigma = max(0.02, sigma * 0.85)
    print("best:")
    for p in params:
        print(f"{p} = {round(x[p], 4) if isinstance(x[p], float) else x[p]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", metavar="PROFILE", help="search this profile's parameters")
    ap.add_argument("--params", default="gemm_efficiency,attention_efficiency,memory_efficiency,layer_latency_us,"
                                        "cpu_ms_per_step,cpu_us_per_seq")
    ap.add_argument("--minutes", type=float, default=5.0, help="how long the search runs")
    ap.add_argument("--workload", action="append", help="limit the fit to workloads (repeatable)")
    ap.add_argument("--target", type=float, help="pull the ShareGPT throughput's sim/seed ratio to this")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--also", action="append", metavar="PROFILE",
                    help="a configuration derived from the fitted one, fitted with it (repeatable)")
    args = ap.parse_args()
    if args.fit:
        params = [p for p in args.params.split(",") if p]
        problem = check_fit_args(args.fit, params, args.also or [])
        if problem:
            ap.error(problem)
        fit(args.fit, params, args.minutes, args.workload, args.target, args.seed, args.also)
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
