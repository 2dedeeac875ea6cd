"""A small text encoder that ships with the project: hashed word embeddings.

Each lower-cased word maps, through a stable hash (CRC-32, the same on every machine), to a
fixed pseudo-random vector of `text_dim` values; a prompt is its words' vectors, padded with
zeros to `text_len` tokens. No vocabulary file, no download: the tiny model is trained on
exactly these embeddings, so a caption vocabulary (object, colour, motion, background) means
something to it. Real Wan2.1 checkpoints expect umT5-XXL embeddings instead: pass those
precomputed (`qvg-serve generate --text-embeddings FILE`).
"""

from __future__ import annotations

import difflib
import re
import zlib
from collections.abc import Iterable, Sequence

import torch


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt as the encoder reads them (lower-case letters and digits)."""
    return re.findall(r"[a-z0-9]+", prompt.lower())


class HashedWordEncoder:
    """`TextEncoder`: prompts -> [B, text_len, text_dim] float32.

    With a `vocabulary` (the words the model was trained on) `encode` refuses prompts with
    other words: every word hashes to *some* vector, so an unknown word would be read
    silently as noise. Without one (an open vocabulary) every word is accepted. `examples`:
    a few prompts the model knows (the web page offers them)."""

    def __init__(
        self,
        text_len: int,
        text_dim: int,
        seed: int = 0,
        vocabulary: Iterable[str] | None = None,
        examples: Sequence[str] = (),
    ) -> None:
        self.text_len, self.text_dim, self.seed = text_len, text_dim, seed
        self.vocabulary = None if vocabulary is None else frozenset(vocabulary)
        self.examples = tuple(examples)
        self._cache: dict[str, torch.Tensor] = {}

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of `prompt` outside the vocabulary, in order, once each ([] without one)."""
        if self.vocabulary is None:
            return []
        return list(dict.fromkeys(w for w in prompt_words(prompt) if w not in self.vocabulary))

    def suggestions(self, word: str, n: int = 3) -> list[str]:
        """The known words closest in spelling to `word` (difflib), best first."""
        return difflib.get_close_matches(word, sorted(self.vocabulary or ()), n=n, cutoff=0.5)

    def check(self, prompt: str) -> None:
        """ValueError naming the prompt's unknown words and the nearest known ones."""
        unknown = self.unknown_words(prompt)
        if not unknown:
            return
        hints = []
        for w in unknown:
            near = self.suggestions(w)
            hints.append(
                f"{w!r} (did you mean {' or '.join(map(repr, near))}?)" if near else repr(w)
            )
        raise ValueError(
            f"unknown word{'s' if len(unknown) > 1 else ''} {', '.join(hints)} in prompt "
            f"{prompt!r}; this model knows only: {' '.join(sorted(self.vocabulary or ()))}"
        )

    def word(self, w: str) -> torch.Tensor:
        """The fixed vector of one word (unit RMS)."""
        if w not in self._cache:
            gen = torch.Generator().manual_seed(zlib.crc32(w.encode()) ^ self.seed)
            self._cache[w] = torch.randn(self.text_dim, generator=gen)
        return self._cache[w]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for i, prompt in enumerate(prompts):
            words = prompt_words(prompt)
            if not words:
                raise ValueError(f"prompt {i} has no words: {prompt!r}")
            self.check(prompt)
            for j, w in enumerate(words[: self.text_len]):
                out[i, j] = self.word(w)
        return out
