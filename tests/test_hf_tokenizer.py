"""A model tokenizer from a local tokenizer.json (built here, never downloaded)."""

import pickle
import random

import pytest

from pytest_llmperf.hf_tokenizer import TokenizerError, load_tokenizer
from pytest_llmperf.loadgen.datasets import random_requests, sharegpt_requests

tokenizers = pytest.importorskip("tokenizers", reason="the optional tokenizers package is not installed")

def corpus():
    from pytest_llmperf.tokenizer import VOCAB

    rng = random.Random(0)
    return [" ".join(rng.choices(VOCAB, k=12)) + rng.choice([".", ",", "!", "?"]) for _ in range(400)] + [
        "the quick brown fox jumps over the lazy dog", "how vexingly quick daft zebras jump"]


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    """A small byte-level BPE tokenizer: merges make decode/re-encode round trips inexact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_random_text_has_exactly_the_asked_token_count(bpe_file):
    tok = load_tokenizer(bpe_file)
    rng = random.Random(42)
    for n in (1, 2, 7, 128, 2000):
        text = tok.random_text(rng, n)
        assert tok.count(text) == n
    assert tok.random_text(rng, 0) == ""


def test_a_word_level_tokenizer_works_too(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta",
                                                           "theta", "iota", "kappa", "lam", "mu", "nu", "xi",
                                                           "omi", "pi", "rho"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    model = load_tokenizer(path)
    text = model.random_text(random.Random(1), 33)
    assert model.count(text) == 33 and "[UNK]" not in text


def test_same_seed_same_prompts_and_special_tokens_never_drawn(bpe_file):
    tok = load_tokenizer(bpe_file.parent)  # the directory works too
    a = random_requests(5, 64, 8, seed=42, tokenizer=tok)
    b = random_requests(5, 64, 8, seed=42, tokenizer=tok)
    assert a == b and all(tok.count(r.prompt) == 64 for r in a)
    assert not any("<s>" in r.prompt or "</s>" in r.prompt for r in a)


def test_sharegpt_is_filtered_by_the_model_tokens(bpe_file, tmp_path):
    import json

    tok = load_tokenizer(bpe_file)
    data = [{"conversations": [{"from": "human", "value": "how vexingly quick daft zebras jump"},
                               {"from": "gpt", "value": "the quick brown fox jumps over the lazy dog"}]}]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    (req,) = sharegpt_requests(path, 1, seed=0, tokenizer=tok)
    assert req.prompt_len == tok.count("how vexingly quick daft zebras jump")
    assert req.expected_output_len == tok.count("the quick brown fox jumps over the lazy dog")


def test_the_tokenizer_travels_to_client_processes(bpe_file):
    tok = pickle.loads(pickle.dumps(load_tokenizer(bpe_file)))
    assert tok.count("the quick brown fox") == load_tokenizer(bpe_file).count("the quick brown fox")


def test_bad_paths_say_what_to_give(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match="no tokenizer.json in"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(TokenizerError, match="is not a tokenizer.json the tokenizers library can read"):
        load_tokenizer(bad)


def test_a_missing_package_names_the_install(monkeypatch, bpe_file):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(TokenizerError, match=r"pip install 'pytest-llmperf\[tokenizers\]'"):
        load_tokenizer(bpe_file)
