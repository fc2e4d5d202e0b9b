"""Workload datasets -> SampleRequests (prompt text and token lengths).

Random: prompts of exact token lengths from a seeded generator. ShareGPT:
conversations filtered and sampled as the reference benchmark does (see the
metrics reference, "Datasets").
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..tokenizer import DEFAULT_TOKENIZER

SHAREGPT_SAMPLE_PATH: Path = Path(__file__).resolve().parent.parent / "data" / "sharegpt_sample.json"

# The reference's ShareGPT filters, in tokens.
MIN_PROMPT_TOKENS = 4
MIN_OUTPUT_TOKENS = 4
MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048


@dataclass(frozen=True)
class SampleRequest:
    """One request to send: the prompt and its token counts."""

    prompt: str
    prompt_len: int
    expected_output_len: int


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def length_range(length: int, range_ratio: float) -> tuple[int, int]:
    """Inclusive bounds [len*(1-r), len*(1+r)] (rounded outward, at least 1)."""
    low = max(1, math.floor(length * (1.0 - range_ratio)))
    high = max(low, math.ceil(length * (1.0 + range_ratio)))
    return low, high


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    seed: int,
    range_ratio: float = 0.0,
    tokenizer=DEFAULT_TOKENIZER,
) -> list[SampleRequest]:
    """``num_prompts`` random prompts of exact token lengths.

    With ``range_ratio`` r, each request's input and output lengths are drawn
    uniformly from the integers in [len*(1-r), len*(1+r)]. Same seed, same
    requests.
    """
    _check_positive("num_prompts", num_prompts)
    _check_positive("input_len", input_len)
    _check_positive("output_len", output_len)
    if isinstance(range_ratio, bool) or not isinstance(range_ratio, (int, float)) or not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be within [0, 1), got {range_ratio!r}")
    rng = random.Random(seed)
    in_lo, in_hi = length_range(input_len, range_ratio)
    out_lo, out_hi = length_range(output_len, range_ratio)
    requests = []
    for _ in range(num_prompts):
        n_in = rng.randint(in_lo, in_hi)
        n_out = rng.randint(out_lo, out_hi)
        requests.append(SampleRequest(tokenizer.random_text(rng, n_in), n_in, n_out))
    return requests


SHAREGPT_SHAPE = '{"conversations": [{"from": "human", "value": <prompt>}, {"from": "gpt", "value": <reply>}, ...]}'


def _turn_text(turn: Any) -> str | None:
    if isinstance(turn, dict) and isinstance(turn.get("value"), str):
        return turn["value"]
    return None


def _describe_entry(entry: Any) -> str:
    """What an entry that is not a ShareGPT conversation holds, for the error message."""
    if not isinstance(entry, dict):
        return f"a {type(entry).__name__}"
    if "conversations" not in entry:
        return f"an object with keys {sorted(entry)[:8]}"
    turns = entry["conversations"]
    if not isinstance(turns, list):
        return f'an object whose "conversations" is a {type(turns).__name__}'
    if not turns:
        return 'an object with an empty "conversations" list'
    bad = next((t for t in turns if _turn_text(t) is None), None)
    keys = sorted(bad) if isinstance(bad, dict) else type(bad).__name__
    return f'an object whose "conversations" holds turns without a text "value" (found {keys})'


def _is_conversation(entry: Any) -> bool:
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    return isinstance(turns, list) and bool(turns) and all(_turn_text(t) is not None for t in turns)


def load_sharegpt(path: str | os.PathLike[str]) -> list[Any]:
    """The parsed file: a JSON list of conversations.

    A list in which no entry is a conversation (another dataset format) is
    rejected here, naming the file, the shape expected and what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ShareGPT dataset not found: expected a JSON file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"ShareGPT dataset {path} is not UTF-8 text ({exc}): expected a JSON file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"ShareGPT dataset {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"ShareGPT dataset {path} must be a JSON list of conversations, found a {type(data).__name__}")
    if not data:
        raise ValueError(f"ShareGPT dataset {path} is an empty list: expected entries {SHAREGPT_SHAPE}")
    if not any(_is_conversation(entry) for entry in data):
        raise ValueError(f"ShareGPT dataset {path} is not in ShareGPT format: expected a JSON list of entries "
                         f"{SHAREGPT_SHAPE}; found none (the first entry is {_describe_entry(data[0])})")
    return data


def sharegpt_requests(
    path: str | os.PathLike[str],
    num_prompts: int,
    seed: int,
    output_len: int | None = None,
    tokenizer=DEFAULT_TOKENIZER,
) -> list[SampleRequest]:
    """``num_prompts`` requests from a ShareGPT-format file, filtered like the reference.

    Conversations with at least two turns are shuffled with ``seed``; the
    prompt is turn 0 and the expected output is turn 1's token count (or
    ``output_len`` when given). Prompts under 4 tokens, outputs under 4 (only
    checked without a fixed ``output_len``), prompts over 1024 and pairs over
    2048 tokens are dropped. The first ``num_prompts`` survivors are taken,
    repeated at random (seeded) when there are fewer.
    """
    _check_positive("num_prompts", num_prompts)
    if output_len is not None:
        _check_positive("output_len", output_len)
    data = load_sharegpt(path)

    pairs: list[tuple[str, str]] = []
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        prompt, completion = _turn_text(turns[0]), _turn_text(turns[1])
        if prompt is None or completion is None:
            continue
        pairs.append((prompt, completion))

    rng = random.Random(seed)
    rng.shuffle(pairs)
    chosen: list[SampleRequest] = []
    for prompt, completion in pairs:
        if len(chosen) == num_prompts:
            break
        prompt_len = tokenizer.count(prompt)
        out_len = output_len if output_len is not None else tokenizer.count(completion)
        if prompt_len < MIN_PROMPT_TOKENS or (output_len is None and out_len < MIN_OUTPUT_TOKENS):
            continue
        if prompt_len > MAX_PROMPT_TOKENS or prompt_len + out_len > MAX_TOTAL_TOKENS:
            continue
        chosen.append(SampleRequest(prompt, prompt_len, out_len))

    if not chosen:
        raise ValueError(
            f"no usable conversation in ShareGPT dataset {path}: expected entries "
            f"{SHAREGPT_SHAPE} with a prompt of "
            f"{MIN_PROMPT_TOKENS}-{MAX_PROMPT_TOKENS} tokens and prompt + reply <= {MAX_TOTAL_TOKENS} tokens "
            f"({len(data)} entries, {len(pairs)} with two text turns)"
        )
    if len(chosen) < num_prompts:
        chosen.extend(rng.choices(chosen, k=num_prompts - len(chosen)))
    return chosen
