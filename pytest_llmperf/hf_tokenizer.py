"""A model's own tokenizer (a local ``tokenizer.json``), for exact prompt lengths.

Optional: needs the ``tokenizers`` package (``pip install
'pytest-llmperf[tokenizers]'``), imported only when a tokenizer is loaded.
The object has the word tokenizer's interface (``name``, ``count``,
``random_text``), so datasets and the client take either.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

MAX_ALIGN_TRIES = 20


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded or cannot make the asked text; the message says why."""


class ModelTokenizer:
    """Counts and produces text in a model's tokens (special tokens excluded)."""

    def __init__(self, tokenizer: Any, name: str):
        self._tok = tokenizer
        self.name = name
        special = set(tokenizer.get_added_tokens_decoder()) if hasattr(tokenizer, "get_added_tokens_decoder") else set()
        self._ids = [i for i in range(tokenizer.get_vocab_size(with_added_tokens=False)) if i not in special]
        if not self._ids:
            raise TokenizerError(f"tokenizer {name} has no ordinary tokens to build prompts from")
        self._words = self._single_token_words()

    def _single_token_words(self) -> list[str]:
        """Pieces ``" word"`` that encode to one token each, alone and after each other.

        A space before a run of letters starts a new pre-token in the common
        tokenizers (byte-level BPE, SentencePiece), so a text of such pieces
        has exactly as many tokens as pieces: no merges across them.
        """
        pieces = sorted({" " + text.strip() for text in
                         (self._tok.decode([i], skip_special_tokens=True) for i in self._ids)
                         if text.strip().isascii() and text.strip().isalpha()})
        if not pieces:
            return []
        encoded = self._tok.encode_batch(pieces, add_special_tokens=False)
        words = [p for p, enc in zip(pieces, encoded) if len(enc.ids) == 1]
        if len(words) < 16:
            return []
        probe = "".join(words[:64])
        return words if self.count(probe) == min(len(words), 64) else []

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def random_text(self, rng: random.Random, num_tokens: int) -> str:
        """Text that encodes to exactly ``num_tokens`` tokens, drawn from ``rng``.

        Built from single-token words when the tokenizer has them (checked
        once more on the whole text). Otherwise random token ids are decoded,
        re-encoded, and trimmed or topped up until the count holds, since ids
        rarely survive that round trip unchanged.
        """
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        if num_tokens == 0:
            return ""
        if self._words:
            text = "".join(rng.choices(self._words, k=num_tokens))
            if self.count(text) == num_tokens:
                return text
        ids = rng.choices(self._ids, k=num_tokens)
        for _ in range(MAX_ALIGN_TRIES):
            text = self._tok.decode(ids, skip_special_tokens=True)
            got = self._tok.encode(text, add_special_tokens=False).ids
            if len(got) == num_tokens:
                return text
            ids = got[:num_tokens] if len(got) > num_tokens else got + rng.choices(self._ids, k=num_tokens - len(got))
        raise TokenizerError(f"could not build a prompt of exactly {num_tokens} tokens with {self.name} "
                             f"in {MAX_ALIGN_TRIES} tries")

    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._tok.to_str(), "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.__init__(Tokenizer.from_str(state["json"]), state["name"])  # type: ignore[misc]


def load_tokenizer(path: str | Path) -> ModelTokenizer:
    """The tokenizer in ``path``: a ``tokenizer.json`` file or a directory holding one."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        where = f"no tokenizer.json in {path}" if path.is_dir() else f"{path} does not exist"
        raise TokenizerError(f"--tokenizer: {where}; give the model's tokenizer.json or its directory")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TokenizerError("--tokenizer needs the tokenizers package: pip install 'pytest-llmperf[tokenizers]' "
                             "(or pip install tokenizers)") from None
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the library raises its own exception type for bad files
        raise TokenizerError(f"--tokenizer: {file} is not a tokenizer.json the tokenizers library can read: "
                             f"{str(exc).splitlines()[0][:200]}") from None
    return ModelTokenizer(tokenizer, str(file))
