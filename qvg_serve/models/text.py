"""A small text encoder that ships with the project: hashed word embeddings.

Each lower-cased word maps, through a stable hash (CRC-32, the same on every machine), to a
fixed pseudo-random vector of `text_dim` values; a prompt is its words' vectors, padded with
zeros to `text_len` tokens. No vocabulary file, no download: the tiny model is trained on
exactly these embeddings, so a caption vocabulary (object, colour, motion, background) means
something to it. Real Wan2.1 checkpoints expect umT5-XXL embeddings instead: pass those
precomputed (`qvg-serve generate --text-embeddings FILE`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch


class HashedWordEncoder:
    """`TextEncoder`: prompts -> [B, text_len, text_dim] float32."""

    def __init__(
        self,
        text_len: int,
        text_dim: int,
        seed: int = 0,
        vocabulary: Sequence[str] | None = None,
        examples: Sequence[str] = (),
    ) -> None:
        self.text_len, self.text_dim, self.seed = text_len, text_dim, seed
        self.vocabulary = tuple(vocabulary) if vocabulary is not None else None
        """Words the model was trained on, when known (prompt suggestions); None = any word."""
        self.examples = tuple(examples)
        """A few prompts the model knows (the web page offers them)."""
        self._cache: dict[str, torch.Tensor] = {}

    def word(self, w: str) -> torch.Tensor:
        """The fixed vector of one word (unit RMS)."""
        if w not in self._cache:
            gen = torch.Generator().manual_seed(zlib.crc32(w.encode()) ^ self.seed)
            self._cache[w] = torch.randn(self.text_dim, generator=gen)
        return self._cache[w]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for i, prompt in enumerate(prompts):
            words = re.findall(r"[a-z0-9]+", prompt.lower())
            if not words:
                raise ValueError(f"prompt {i} has no words: {prompt!r}")
            for j, w in enumerate(words[: self.text_len]):
                out[i, j] = self.word(w)
        return out
