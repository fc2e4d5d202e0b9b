"""The word tokenizer: counts, exact-length random text, token ids, the output token stream."""

import random

import pytest

from pytest_llmperf.tokenizer import DEFAULT_TOKENIZER, VOCAB, WordTokenizer


def test_the_vocabulary_is_fixed_and_space_free():
    assert len(VOCAB) == 280 and len(set(VOCAB)) == 280
    assert VOCAB[:5] == ("ba", "ban", "bar", "bas", "be") and VOCAB[-1] == "zus"
    assert not any(ch.isspace() for word in VOCAB for ch in word)
    assert DEFAULT_TOKENIZER.name == "word" and DEFAULT_TOKENIZER.vocab == VOCAB


@pytest.mark.parametrize("text, n", [("", 0), ("   ", 0), ("one", 1), ("one two", 2), (" a\tb\n c  ", 3),
                                     ("hello, world!", 2)])
def test_count_is_whitespace_words(text, n):
    assert DEFAULT_TOKENIZER.count(text) == n


def test_random_text_has_the_exact_count_and_follows_the_seed():
    for n in (0, 1, 2, 17, 4000):
        text = DEFAULT_TOKENIZER.random_text(random.Random(n), n)
        assert DEFAULT_TOKENIZER.count(text) == n
        assert set(text.split()) <= set(VOCAB)
    assert DEFAULT_TOKENIZER.random_text(random.Random(42), 50) == DEFAULT_TOKENIZER.random_text(random.Random(42), 50)
    assert DEFAULT_TOKENIZER.random_text(random.Random(42), 50) != DEFAULT_TOKENIZER.random_text(random.Random(43), 50)
    assert DEFAULT_TOKENIZER.random_text(random.Random(0), 0) == ""


def test_random_text_rejects_a_negative_count():
    with pytest.raises(ValueError, match="num_tokens must be >= 0, got -1"):
        DEFAULT_TOKENIZER.random_text(random.Random(0), -1)


@pytest.mark.parametrize("vocab", [(), ("ok", ""), ("two words",), ("tab\there",)])
def test_a_bad_vocabulary_is_rejected(vocab):
    with pytest.raises(ValueError, match="non-empty and contain no whitespace"):
        WordTokenizer(vocab)


def test_encode_gives_vocabulary_indexes_and_one_unknown_id():
    tok = WordTokenizer(("x", "y", "z"))
    assert tok.unk_id == 3
    assert tok.encode("x z  y\nx") == [0, 2, 1, 0]
    assert tok.encode("x what y") == [0, 3, 1]
    assert tok.encode("") == []
    assert DEFAULT_TOKENIZER.encode("ba be zus nope") == [0, 4, 279, 280]
    text = DEFAULT_TOKENIZER.random_text(random.Random(5), 300)
    assert len(DEFAULT_TOKENIZER.encode(text)) == DEFAULT_TOKENIZER.count(text) == 300
    assert [VOCAB[i] for i in DEFAULT_TOKENIZER.encode(text)] == text.split()


def test_a_custom_vocabulary_is_used():
    tok = WordTokenizer(("aa", "bb"))
    assert set(tok.random_text(random.Random(1), 40).split()) == {"aa", "bb"}


def test_token_text_streams_count_back_to_their_length():
    tok = DEFAULT_TOKENIZER
    stream = [tok.token_text(seed=7, index=i) for i in range(25)]
    assert not stream[0].startswith(" ") and all(t.startswith(" ") and tok.count(t) == 1 for t in stream[1:])
    assert tok.count("".join(stream)) == 25
    assert stream == [tok.token_text(7, i) for i in range(25)]  # a pure function of (seed, index)
    assert tok.token_text(0, 0) == VOCAB[0] and tok.token_text(0, 1) == " " + VOCAB[7919 % 280]


def test_a_model_tokenizer_has_the_same_interface(tmp_path):
    """``--tokenizer`` swaps the word tokenizer for a model's; datasets rely on the shared methods."""
    pytest.importorskip("tokenizers", reason="the optional tokenizers package is not installed")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from pytest_llmperf.hf_tokenizer import load_tokenizer

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(VOCAB)}}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    model = load_tokenizer(path)
    for attr in ("name", "count", "random_text"):
        assert hasattr(model, attr) and hasattr(DEFAULT_TOKENIZER, attr)
    text = DEFAULT_TOKENIZER.random_text(random.Random(3), 64)
    assert model.count(text) == DEFAULT_TOKENIZER.count(text) == 64  # a word-level model counts words too
    made = model.random_text(random.Random(3), 64)
    assert model.count(made) == 64
