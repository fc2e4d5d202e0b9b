"""The word tokenizer: one token per whitespace-separated word.

The simulated engine counts prompt and output tokens with it, and the load
generator uses it to build prompts of an exact token length when no model
tokenizer is given. It is deterministic and dependency-free, so the same text
always counts the same on the client and on the sim server.
"""

from __future__ import annotations

import random
from typing import Sequence


def _make_vocab() -> tuple[str, ...]:
    # Pronounceable, space-free words; fixed so that generated text is
    # identical across machines and Python versions.
    onsets = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
    vowels = ("a", "e", "i", "o", "u")
    codas = ("", "n", "r", "s")
    return tuple(o + v + c for o in onsets for v in vowels for c in codas)  # 280 words


VOCAB: tuple[str, ...] = _make_vocab()


class WordTokenizer:
    """Counts and produces text at one token per whitespace-separated word."""

    name = "word"

    def __init__(self, vocab: Sequence[str] = VOCAB):
        if not vocab or any((not w) or any(ch.isspace() for ch in w) for w in vocab):
            raise ValueError("vocabulary words must be non-empty and contain no whitespace")
        self.vocab = tuple(vocab)
        self.unk_id = len(self.vocab)
        self._ids = {word: i for i, word in enumerate(self.vocab)}

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return len(text.split())

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``: each word's vocabulary index, ``unk_id`` for a word outside it."""
        ids, unk = self._ids, self.unk_id
        return [ids.get(word, unk) for word in text.split()]

    def random_text(self, rng: random.Random, num_tokens: int) -> str:
        """Text of exactly ``num_tokens`` tokens drawn from ``rng``."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        return " ".join(rng.choices(self.vocab, k=num_tokens))

    def token_text(self, seed: int, index: int) -> str:
        """The text of output token ``index`` of a stream seeded with ``seed``.

        Every token after the first carries a leading space, so the
        concatenation of a stream's tokens counts back to the same number.
        """
        word = self.vocab[(seed * 1_000_003 + index * 7919) % len(self.vocab)]
        return word if index == 0 else " " + word


DEFAULT_TOKENIZER = WordTokenizer()
