"""``predict`` and ``calibrate``: the twin's figures printed (the sim's command line calls these)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import calibration as cal

COLUMNS = (
    ("total_token_throughput", "tok/s", "{:.0f}"),
    ("output_throughput", "out tok/s", "{:.0f}"),
    ("duration", "dur s", "{:.1f}"),
    ("mean_ttft_ms", "TTFT ms", "{:.0f}"),
    ("mean_tpot_ms", "TPOT ms", "{:.1f}"),
    ("median_itl_ms", "med ITL ms", "{:.1f}"),
    ("max_output_tokens_per_s", "peak out/s", "{:.0f}"),
)


def _cases(args: argparse.Namespace) -> list[tuple[str, object, object]]:
    """(label, profile, suite.Workload) to predict."""
    from .profiles import load_profile

    if args.suite:
        from ..suite import SuiteError, load_suite_file

        try:
            suite = load_suite_file(Path(args.suite))
        except SuiteError as exc:
            raise ValueError(str(exc)) from None
        pairs = []
        if args.profile:
            profiles = [(load_profile(p).name, load_profile(p)) for p in args.profile]
            pairs = [(name, prof, w) for name, prof in profiles for w in suite.workloads]
        else:
            for cfg in suite.configs:
                if cfg.engine != "sim":
                    continue
                from ..engines.sim import _profile

                try:
                    prof = load_profile(_profile(cfg))
                except ValueError as exc:
                    raise ValueError(str(exc)) from None
                by_name = {w.name: w for w in suite.workloads}
                names = cfg.workloads or tuple(by_name)
                pairs += [(f"sim/{cfg.name}", prof, by_name[w]) for w in names]
            if not pairs:
                raise ValueError(f"suite {args.suite} has no sim configuration; name one with --profile")
    else:
        if not args.profile:
            raise ValueError("predict needs --profile (a built-in name, or a path to a profile .toml)")
        names = args.workload or cal.workload_names()
        pairs = [(load_profile(p).name, load_profile(p), cal.preset_workload(w)) for p in args.profile for w in names]
    if args.num_prompts:
        import dataclasses

        pairs = [(label, prof, dataclasses.replace(w, num_prompts=args.num_prompts)) for label, prof, w in pairs]
    return pairs


def predict_main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    rows, dump = [], []
    for label, profile, workload in _cases(args):
        m = cal.predict(profile, cal.requests_of(workload))
        if args.json:
            dump.append({"profile": label, "workload": workload.name, "num_prompts": workload.num_prompts,
                         "metrics": m})
        else:
            rows.append([label, workload.name, workload.num_prompts] + [fmt.format(m[k]) for k, _, fmt in COLUMNS])
    if args.json:
        print(json.dumps(dump, indent=1, sort_keys=True))
    else:
        print(tabulate(rows, headers=["profile", "workload", "n"] + [h for _, h, _ in COLUMNS], disable_numparse=True))
        print("\nvirtual time: every figure as the load generator computes it, without client or network overhead")
    return 0


def calibrate_main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .profiles import list_profiles, load_profile

    seed = cal.load_seed()
    names = args.profile or [n for n in list_profiles() if n in seed]
    unknown = [n for n in names if n not in seed]
    if unknown:
        raise ValueError(f"the seed has no figures for {', '.join(unknown)}: expected among {', '.join(sorted(seed))}")
    known = {w for figs in seed.values() for w in figs}
    bad = [w for w in args.workload or () if w not in known]
    if bad:
        raise ValueError(f"the seed has no figures for workload {', '.join(bad)}: expected among "
                         f"{', '.join(sorted(known))}")
    figures = cal.compare({n: load_profile(n) for n in names}, args.workload)
    if not figures:
        raise ValueError(f"the seed has no figures for {', '.join(names)} on {', '.join(args.workload or ())}")
    tol = {g.metric: g.tolerance for g in cal.GATES}
    rows = []
    for f in figures:
        t = tol.get(f.metric)
        mark = "" if t is None else ("ok" if abs(f.ratio - 1) <= t + 1e-12 else f"OUT (±{t:.0%})")
        rows.append([f.profile, f.workload, f.metric, f"{f.sim:.2f}", f"{f.seed:.2f}", f"{f.ratio:.2f}", mark])
    print(tabulate(rows, headers=["profile", "workload", "figure", "sim", "seed", "sim/seed", "gate"],
                   disable_numparse=True))
    ok = True
    print("\ngates (within tolerance / figures, required share):")
    for gate, inside, n in cal.gate_results(figures):
        met = n == 0 or inside >= gate.share * n - 1e-9
        ok &= met
        print(f"  {gate.metric:26s} ±{gate.tolerance:.0%}: {inside}/{n} (need {gate.share:.0%}) "
              f"{'met' if met else 'NOT MET'}")
    seed_order, sim_order = cal.ranking(figures)
    if len(seed_order) > 1:
        swaps = cal.adjacent_swaps(seed_order, sim_order)
        top_ok = sim_order[0] == seed_order[0]
        ok &= top_ok and swaps <= 1
        print(f"\nShareGPT ranking by total tok/s (seed): {' > '.join(seed_order)}")
        print(f"ShareGPT ranking by total tok/s (sim):  {' > '.join(sim_order)}")
        print(f"  top {'the same' if top_ok else 'DIFFERS'}; {swaps} swap(s) of neighbours "
              f"({'met' if top_ok and swaps <= 1 else 'NOT MET'}: at most 1)")
    claims = cal.claim_results(figures)
    if claims:
        print("\nthe seed's claims (total tok/s against the base configuration):")
        for name, seed_pct, sim_pct, points, held in claims:
            ok &= held
            print(f"  {name:20s} seed {seed_pct:+.1f}%  sim {sim_pct:+.1f}%  (within {points:.0f} points: "
                  f"{'held' if held else 'NOT HELD'})")
    dom = cal.dominance(figures)
    if dom:
        held = all(sim for _, seed_ahead, sim in dom if seed_ahead)
        ok &= held
        print(f"\nSGLang dp8 ahead of vLLM tp8 on every workload: "
              f"{', '.join(w + (' yes' if sim else ' NO') for w, _, sim in dom)} ({'held' if held else 'NOT HELD'})")
    print(f"\n{'calibrated: every gate met' if ok else 'NOT calibrated: see the lines marked above'}")
    return 0 if ok else 1
