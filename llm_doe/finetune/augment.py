"""Text augmentation of training examples: word deletion, swap and insertion, character noise.

EDA-style operations (Wei & Zou, 2019) without a lexicon: nlpaug and textaugment are not
installed here, and their synonym operations need NLTK's WordNet data (a download), so the four
operations that need no data are written out below, drawn from a numpy ``Generator`` the caller
seeds (a trial's augmented data is a function of its seed). ``augment.p`` is the per-word
probability of each operation:

* ``delete``: each word is dropped with probability p (one word is always kept);
* ``swap``: each word, with probability p, trades places with another word of the text;
* ``insert``: after each word, with probability p, a copy of a random word of the text goes in at
  a random position;
* ``char``: each word, with probability p, gets one character edit (drop, repeat, swap with its
  neighbour, or replace by a random lower-case letter).

Several operations apply in the order given. Words are whitespace-separated tokens; an augmented
text joins them with single spaces.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

_LETTERS = np.array(list(string.ascii_lowercase))


def _delete(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return [w for w, k in zip(words, keep) if k]


def _swap(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    words = list(words)
    if len(words) < 2:
        return words
    for i in np.flatnonzero(rng.random(len(words)) < p):
        j = int(rng.integers(len(words) - 1))
        j += int(j >= i)  # another position
        words[i], words[j] = words[j], words[i]
    return words


def _insert(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    out = list(words)
    for _ in range(int((rng.random(len(words)) < p).sum())):
        out.insert(int(rng.integers(len(out) + 1)), words[int(rng.integers(len(words)))])
    return out


def _char_edit(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(word)))
    edit = int(rng.integers(4))
    if edit == 0 and len(word) > 1:
        return word[:i] + word[i + 1:]  # drop
    if edit == 1:
        return word[:i] + word[i] + word[i:]  # repeat
    if edit == 2 and len(word) > 1:
        j = i + 1 if i + 1 < len(word) else i - 1
        a, b = sorted((i, j))
        return word[:a] + word[b] + word[a] + word[b + 1:]  # swap with the neighbour
    return word[:i] + str(rng.choice(_LETTERS)) + word[i + 1:]  # replace


def _char(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    hit = rng.random(len(words)) < p
    return [_char_edit(w, rng) if h else w for w, h in zip(words, hit)]


OPERATIONS = {"delete": _delete, "swap": _swap, "insert": _insert, "char": _char}


def augment_text(text: str, methods: Sequence[str], p: float, rng: np.random.Generator) -> str:
    """``text`` after each of ``methods`` in turn (a text without words comes back as it is)."""
    words = text.split()
    if not words:
        return text
    for method in methods:
        words = OPERATIONS[method](words, p, rng)
    return " ".join(words)


def augmented_texts(texts: Sequence[str], methods: Sequence[str], p: float, copies: int, seed: int) -> list[str]:
    """The texts followed by ``copies`` augmented copies of all of them (copy 1 of every text,
    then copy 2, ...), drawn from ``seed`` alone: the same seed gives the same copies."""
    rng = np.random.default_rng([seed, 0xA06])  # a stream of its own, apart from the batch order's
    out = list(texts)
    for _ in range(copies):
        out.extend(augment_text(t, methods, p, rng) for t in texts)
    return out
