"""Generate the shipped ShareGPT-format sample (our own synthetic data, not real ShareGPT).

Turn lengths follow a seeded log-normal (long-tailed) distribution, scaled so
that the conversations the ShareGPT filters keep average about 219 prompt and
197 output tokens, like the seed's ShareGPT run (~219k input and ~197k output
tokens over 1000 requests). A few entries are there for the filters to drop:
single-turn, too short, prompt too long, prompt + reply too long.

    python scripts/make_sharegpt_sample.py [--out PATH] [--check]

The output is deterministic: running it again gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_llmperf.loadgen.datasets import (  # noqa: E402
    MAX_PROMPT_TOKENS,
    MIN_OUTPUT_TOKENS,
    MIN_PROMPT_TOKENS,
    SHAREGPT_SAMPLE_PATH,
    sharegpt_requests,
)
from pytest_llmperf.tokenizer import DEFAULT_TOKENIZER  # noqa: E402

SEED = 20240613
NUM_KEPT = 280  # conversations meant to pass the filters
TARGET_PROMPT_MEAN = 219.0
TARGET_OUTPUT_MEAN = 197.0
SIGMA_PROMPT = 1.0  # log-normal shape: long tail, most prompts short
SIGMA_OUTPUT = 1.5  # ShareGPT replies: many one-liners, a long tail of essays


def _lengths(normals: list[float], sigma: float, target_mean: float, low: int, high: int) -> list[int]:
    """Lengths round(exp(mu + sigma*z)) clipped to [low, high], with mu solved so their mean hits the target."""

    def mean_for(mu: float) -> float:
        return statistics.fmean(min(high, max(low, round(math.exp(mu + sigma * z)))) for z in normals)

    lo_mu, hi_mu = 0.0, math.log(high)
    for _ in range(60):  # bisection: the clipped mean grows with mu
        mid = (lo_mu + hi_mu) / 2
        if mean_for(mid) < target_mean:
            lo_mu = mid
        else:
            hi_mu = mid
    mu = (lo_mu + hi_mu) / 2
    return [min(high, max(low, round(math.exp(mu + sigma * z)))) for z in normals]


def _turns(rng: random.Random, lengths: list[int]) -> list[dict[str, str]]:
    return [
        {"from": "human" if i % 2 == 0 else "gpt", "value": DEFAULT_TOKENIZER.random_text(rng, n)}
        for i, n in enumerate(lengths)
    ]


def build(seed: int = SEED) -> list[dict]:
    """The sample's conversations."""
    rng = random.Random(seed)
    prompt_z = [rng.gauss(0.0, 1.0) for _ in range(NUM_KEPT)]
    output_z = [rng.gauss(0.0, 1.0) for _ in range(NUM_KEPT)]
    prompts = _lengths(prompt_z, SIGMA_PROMPT, TARGET_PROMPT_MEAN, MIN_PROMPT_TOKENS, MAX_PROMPT_TOKENS)
    # Replies are capped at 1024 so that prompt + reply never exceeds 2048.
    outputs = _lengths(output_z, SIGMA_OUTPUT, TARGET_OUTPUT_MEAN, MIN_OUTPUT_TOKENS, 1024)

    shapes: list[list[int]] = []
    for p, o in zip(prompts, outputs):
        extra = rng.choice((0, 0, 0, 1, 2))  # some conversations go on; later turns are short and unused
        shapes.append([p, o] + [rng.randint(4, 40) for _ in range(2 * extra)])
    # Entries the filters must drop.
    shapes += [[rng.randint(5, 200)] for _ in range(8)]  # a single turn
    shapes += [[rng.randint(1, 3), rng.randint(20, 200)] for _ in range(5)]  # prompt under 4 tokens
    shapes += [[rng.randint(20, 200), rng.randint(1, 3)] for _ in range(5)]  # reply under 4 tokens
    shapes += [[rng.randint(1025, 1400), rng.randint(20, 100)] for _ in range(3)]  # prompt over 1024
    shapes += [[rng.randint(900, 1024), rng.randint(1100, 1300)] for _ in range(3)]  # prompt + reply over 2048
    shapes += [[]]  # no turns at all
    rng.shuffle(shapes)
    return [{"id": f"synthetic-{i:04d}", "conversations": _turns(rng, shape)} for i, shape in enumerate(shapes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHAREGPT_SAMPLE_PATH)
    args = parser.parse_args(argv)
    data = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")

    kept = sharegpt_requests(args.out, num_prompts=len(data), seed=0)[:NUM_KEPT]  # survivors come first
    reqs = sharegpt_requests(args.out, num_prompts=1000, seed=42)
    print(f"wrote {args.out}: {len(data)} conversations, {args.out.stat().st_size / 1024:.0f} KiB")
    print(
        f"after filtering: {NUM_KEPT} kept, mean prompt {statistics.fmean(r.prompt_len for r in kept):.1f}, "
        f"mean output {statistics.fmean(r.expected_output_len for r in kept):.1f} tokens"
    )
    print(
        f"1000 prompts, seed 42 (oversampled): {sum(r.prompt_len for r in reqs)} input, "
        f"{sum(r.expected_output_len for r in reqs)} output tokens"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
