"""Random and ShareGPT datasets: lengths, determinism, the reference's filters, errors."""

import json
import random
import re
import statistics

import pytest

from pytest_llmperf.loadgen.datasets import (
    SHAREGPT_SAMPLE_PATH,
    SHAREGPT_SHAPE,
    SampleRequest,
    length_range,
    random_requests,
    sharegpt_requests,
)
from pytest_llmperf.tokenizer import DEFAULT_TOKENIZER


def words(n, tag="w"):
    return " ".join(f"{tag}{i}" for i in range(n))


def convo(*turn_lens, tag="w"):
    return {"id": tag, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": words(n, f"{tag}_{i}_")}
                                         for i, n in enumerate(turn_lens)]}


def write(tmp_path, data, name="sg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- random
def test_random_exact_lengths():
    reqs = random_requests(20, input_len=37, output_len=5, seed=42)
    assert len(reqs) == 20
    for r in reqs:
        assert r.prompt_len == 37 and r.expected_output_len == 5
        assert DEFAULT_TOKENIZER.count(r.prompt) == 37
    assert len({r.prompt for r in reqs}) == 20


def test_random_is_seeded():
    assert random_requests(5, 50, 10, seed=1) == random_requests(5, 50, 10, seed=1)
    assert random_requests(5, 50, 10, seed=1) != random_requests(5, 50, 10, seed=2)


def test_random_range_ratio_bounds():
    reqs = random_requests(400, input_len=100, output_len=20, seed=7, range_ratio=0.5)
    ins = [r.prompt_len for r in reqs]
    outs = [r.expected_output_len for r in reqs]
    assert 50 <= min(ins) and max(ins) <= 150 and 10 <= min(outs) and max(outs) <= 30
    assert len(set(ins)) > 30  # really drawn, not fixed
    assert min(ins) < 60 and max(ins) > 140  # spans the range
    assert all(DEFAULT_TOKENIZER.count(r.prompt) == r.prompt_len for r in reqs)


def test_length_range_never_below_one():
    assert length_range(1, 0.9) == (1, 2)
    assert length_range(100, 0.0) == (100, 100)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_prompts=0), "num_prompts must be an integer >= 1, got 0"),
        (dict(input_len=0), "input_len"),
        (dict(output_len=-1), "output_len"),
        (dict(range_ratio=1.0), r"range_ratio must be within \[0, 1\), got 1.0"),
        (dict(range_ratio=-0.1), "range_ratio"),
    ],
)
def test_random_rejects_bad_values(kwargs, match):
    args = dict(num_prompts=2, input_len=8, output_len=4, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        random_requests(**args)


# ---------------------------------------------------------------- ShareGPT
def test_sharegpt_filters_like_the_reference(tmp_path):
    data = [
        convo(10, 20, tag="keep1"),
        convo(10, tag="one_turn"),
        {"id": "no_turns", "conversations": []},
        "not a dict",
        convo(3, 20, tag="short_prompt"),
        convo(10, 3, tag="short_output"),
        convo(1025, 10, tag="long_prompt"),
        convo(1024, 1025, tag="long_pair"),
        convo(1024, 1024, 7, 7, tag="keep2"),  # exactly at both limits; later turns ignored
        convo(4, 4, tag="keep3"),  # exactly at the minimums
    ]
    reqs = sharegpt_requests(write(tmp_path, data), num_prompts=3, seed=0)
    assert sorted((r.prompt_len, r.expected_output_len) for r in reqs) == [(4, 4), (10, 20), (1024, 1024)]
    for r in reqs:
        assert r.prompt.split()[0].split("_")[1] == "0"  # the prompt is turn 0
        assert r.prompt.split()[0].startswith("keep")


def test_sharegpt_fixed_output_len(tmp_path):
    data = [convo(10, 2, tag="a"), convo(10, 20, tag="b"), convo(1000, 20, tag="c")]
    reqs = sharegpt_requests(write(tmp_path, data), num_prompts=3, seed=0, output_len=1100)
    # turn 1's length no longer matters; the pair limit uses the fixed length: 1000 + 1100 > 2048
    assert sorted((r.prompt_len, r.expected_output_len) for r in reqs[:2]) == [(10, 1100), (10, 1100)]
    assert {r.prompt_len for r in reqs} == {10}


def test_sharegpt_seeded_shuffle_takes_first_n(tmp_path):
    path = write(tmp_path, [convo(5 + i, 10, tag=f"c{i}") for i in range(30)])
    a = sharegpt_requests(path, num_prompts=10, seed=42)
    assert a == sharegpt_requests(path, num_prompts=10, seed=42)
    assert a != sharegpt_requests(path, num_prompts=10, seed=43)
    assert len({r.prompt for r in a}) == 10
    assert [r.prompt_len for r in a] != sorted(r.prompt_len for r in a)  # shuffled, not file order
    assert sharegpt_requests(path, num_prompts=30, seed=42)[:10] == a


def test_sharegpt_oversamples_when_short(tmp_path):
    path = write(tmp_path, [convo(5 + i, 10, tag=f"c{i}") for i in range(4)] + [convo(2, 2, tag="drop")])
    reqs = sharegpt_requests(path, num_prompts=11, seed=3)
    assert len(reqs) == 11
    assert len({r.prompt for r in reqs}) == 4
    assert len({r.prompt for r in reqs[:4]}) == 4  # every survivor first, then repeats
    assert reqs == sharegpt_requests(path, num_prompts=11, seed=3)
    assert isinstance(reqs[0], SampleRequest)


def test_sharegpt_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a JSON file at .*missing.json"):
        sharegpt_requests(tmp_path / "missing.json", 1, 0)
    with pytest.raises(ValueError, match="must be a JSON list of conversations, found a dict"):
        sharegpt_requests(write(tmp_path, {"conversations": []}), 1, 0)
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        sharegpt_requests(bad, 1, 0)
    with pytest.raises(ValueError, match="no usable conversation.*2 entries, 1 with two text turns"):
        sharegpt_requests(write(tmp_path, [convo(2, 10), convo(10)]), 1, 0)
    with pytest.raises(ValueError, match="num_prompts must be an integer >= 1"):
        sharegpt_requests(write(tmp_path, [convo(10, 10)]), 0, 0)
    with pytest.raises(ValueError, match="output_len must be an integer >= 1"):
        sharegpt_requests(write(tmp_path, [convo(10, 10)]), 1, 0, output_len=0)


def test_shipped_sample_matches_the_seed_shape():
    data = json.loads(SHAREGPT_SAMPLE_PATH.read_text())
    assert 250 <= len(data) <= 400
    assert SHAREGPT_SAMPLE_PATH.stat().st_size < 700 * 1024
    survivors = sharegpt_requests(SHAREGPT_SAMPLE_PATH, num_prompts=len(data), seed=0)
    unique = list({r.prompt: r for r in survivors}.values())
    assert len(data) - 40 <= len(unique) < len(data)  # the filters drop some, not many
    assert 205 <= statistics.fmean(r.prompt_len for r in unique) <= 235
    assert 185 <= statistics.fmean(r.expected_output_len for r in unique) <= 210
    reqs = sharegpt_requests(SHAREGPT_SAMPLE_PATH, num_prompts=1000, seed=42)  # the seed's case, oversampled
    assert 190_000 <= sum(r.prompt_len for r in reqs) <= 250_000
    assert 170_000 <= sum(r.expected_output_len for r in reqs) <= 225_000


def test_sample_generator_is_deterministic(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_sharegpt_sample.py"
    out = tmp_path / "sample.json"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == SHAREGPT_SAMPLE_PATH.read_bytes()


def reference_sharegpt(data, num_prompts, seed, output_len=None):
    """The reference's procedure, written out plainly from the metrics reference ("Datasets")."""
    pairs = [(e["conversations"][0]["value"], e["conversations"][1]["value"]) for e in data
             if len(e["conversations"]) >= 2]
    random.Random(seed).shuffle(pairs)
    out = []
    for prompt, completion in pairs:
        if len(out) == num_prompts:
            break
        p = len(prompt.split())
        o = output_len if output_len is not None else len(completion.split())
        if p < 4 or (output_len is None and o < 4) or p > 1024 or p + o > 2048:
            continue
        out.append((prompt, p, o))
    return out


@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("output_len", [None, 300])
def test_sharegpt_order_matches_the_reference_procedure(tmp_path, seed, output_len):
    # Filtered-out conversations keep their place in the shuffle: filters apply after it.
    lens = [(10, 20), (3, 20), (10, 3), (1025, 5), (1000, 1049), (4, 4), (50, 60), (1, 1), (700, 900), (8, 2000)]
    data = [convo(p, o, tag=f"c{i}") for i, (p, o) in enumerate(lens)] + [convo(9, tag="single")]
    path = write(tmp_path, data)
    expected = reference_sharegpt(data, 5, seed, output_len)
    got = sharegpt_requests(path, num_prompts=5, seed=seed, output_len=output_len)
    assert [(r.prompt, r.prompt_len, r.expected_output_len) for r in got] == expected
    assert len(expected) == 5


def test_sharegpt_lengths_are_turn_0_and_turn_1_counts(tmp_path):
    data = [{"conversations": [{"from": "human", "value": "how are you doing today"},
                               {"from": "gpt", "value": "fine thanks and you, my friend?"},
                               {"from": "human", "value": "ignored " * 50}]}]
    (req,) = sharegpt_requests(write(tmp_path, data), num_prompts=1, seed=0)
    assert req == SampleRequest("how are you doing today", 5, 6)
    (fixed,) = sharegpt_requests(write(tmp_path, data), num_prompts=1, seed=0, output_len=2)
    assert fixed == SampleRequest("how are you doing today", 5, 2)  # no minimum on a fixed output length


@pytest.mark.parametrize("data, found", [
    ([{"instruction": "x", "input": "", "output": "y"}], r"an object with keys \['input', 'instruction', 'output'\]"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"an object with keys \['messages'\]"),
    ([{"conversations": [{"role": "user", "content": "hi there you all"}]}],
     r"""turns without a text "value" \(found \['content', 'role'\]\)"""),
    ([{"conversations": {"0": "a"}}], r'"conversations" is a dict'),
    ([{"conversations": []}], r'an empty "conversations" list'),
    (["just text", "more text"], r"the first entry is a str"),
])
def test_a_file_in_another_format_says_what_was_expected(tmp_path, data, found):
    path = write(tmp_path, data, name="other.json")
    with pytest.raises(ValueError) as info:
        sharegpt_requests(path, 1, 0)
    message = str(info.value)
    assert f"ShareGPT dataset {path} is not in ShareGPT format: expected a JSON list of entries " in message
    assert SHAREGPT_SHAPE in message
    assert SHAREGPT_SHAPE.startswith('{"conversations": [{"from": "human", "value": <prompt>}, {"from": "gpt"')
    assert re.search(found, message), message


def test_an_empty_or_undecodable_file_names_the_file(tmp_path):
    path = write(tmp_path, [], name="empty.json")
    with pytest.raises(ValueError, match=f"ShareGPT dataset {path} is an empty list: expected entries " + r'\{"conv'):
        sharegpt_requests(path, 1, 0)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe[\x00]")
    with pytest.raises(ValueError, match=f"ShareGPT dataset {binary} is not UTF-8 text .*expected a JSON file"):
        sharegpt_requests(binary, 1, 0)


def test_one_conversation_among_other_entries_is_enough_for_the_format(tmp_path):
    data = [{"instruction": "x"}, "junk", convo(6, 7, tag="ok")]
    (req,) = sharegpt_requests(write(tmp_path, data), 1, 0)
    assert (req.prompt_len, req.expected_output_len) == (6, 7)
