"""Perturbed Masking's masked copies of sentences and the impact matrices computed from a model's outputs on
them, framework-free (numpy): the JAX computation (`plmjax.analysis.impact`) and the PyTorch reference of
`plmjax bench` share them, so both sides do the same work. The definitions are in `plmjax.analysis.impact`.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Optional

import numpy as np

LENGTH_MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A sentence as the model reads it: [CLS] pieces of word 1 .. pieces of word n [SEP]."""
    ids: np.ndarray  # [length] int32
    word_of: np.ndarray  # [length] int: the word (1..n) of each position, 0 for [CLS] and [SEP]
    num_words: int

    @classmethod
    def from_pieces(cls, pieces: Sequence[Sequence[int]], cls_id: int, sep_id: int) -> Encoded:
        empty = [i + 1 for i, p in enumerate(pieces) if not len(p)]
        if empty:
            raise ValueError(f'words {empty} have no word pieces; every word needs at least one token.')
        ids = [cls_id, *itertools.chain.from_iterable(pieces), sep_id]
        word_of = [0, *itertools.chain.from_iterable([i + 1] * len(p) for i, p in enumerate(pieces)), 0]
        return cls(np.asarray(ids, np.int32), np.asarray(word_of, np.int64), len(pieces))

    def masked(self, words: Sequence[int], mask_id: int) -> np.ndarray:
        """[length] ids with every piece of `words` replaced by mask_id."""
        return np.where(np.isin(self.word_of, [w for w in words if w > 0]), mask_id, self.ids).astype(np.int32)


def masked_sets(num_words: int) -> list[tuple[int, ...]]:
    """The maskings of one sentence, in the order its forward passes run: (), (1,) .. (n,), (1, 2) .. (n-1, n)."""
    words = range(1, num_words + 1)
    return [(), *((i,) for i in words), *itertools.combinations(words, 2)]


def impact_matrix(encoded: Encoded, values: dict[tuple[int, ...], np.ndarray], impact: str) -> np.ndarray:
    """The word-level [n + 1, n + 1] matrix of one sentence from the per-masking outputs `values`
    (dist: [length, emb] hidden states; prob: [length] probabilities of each position's own token)."""
    n = encoded.num_words
    matrix = np.zeros((n + 1, n + 1), np.float64)

    def compare(a, b):  # [..., length(, emb)] x2 -> [..., length]
        if impact == 'dist':
            return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
        return np.asarray(a, np.float64) - np.asarray(b, np.float64)

    others = np.arange(1, n + 1)
    singles = np.stack([values[(j,)] for j in others])  # [n, length(, emb)]
    matrix[0, 1:] = compare(values[()][None, 0], singles[:, 0])
    for i in others:
        positions = np.flatnonzero(encoded.word_of == i)
        pairs = np.stack([values[(min(i, j), max(i, j))] if j != i else values[(i,)] for j in others])
        matrix[i, 1:] = compare(values[(i,)][None, positions], pairs[:, positions]).mean(axis=1)
    np.fill_diagonal(matrix, 0.0)
    return matrix


@dataclasses.dataclass(frozen=True)
class Copies:
    """The masked copies of a chunk of sentences, one row each, right-padded to one length."""
    chunk: Sequence[Encoded]
    rows: list[tuple[int, tuple[int, ...]]]  # (sentence in chunk, masked words) of each row
    ids: np.ndarray  # [rows, length] int32, the masked inputs
    mask: np.ndarray  # [rows, length] int32, 1 for real tokens
    targets: np.ndarray  # [rows, length] int32, the unmasked tokens (prob reads their probability)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.ids, self.mask, self.targets

    def matrices(self, outputs: np.ndarray, impact_name: str) -> list[np.ndarray]:
        """Per-row model outputs [rows, length(, emb)] -> one impact matrix per sentence of the chunk."""
        values = [{} for _ in self.chunk]
        for r, (s, words) in enumerate(self.rows):
            values[s][words] = outputs[r]
        return [impact_matrix(encoded, v, impact_name) for encoded, v in zip(self.chunk, values)]


def masked_copies(chunk: Sequence[Encoded], mask_id: int, pad_id: int = 0,
                  max_length: Optional[int] = None) -> Copies:
    """Every masking of every sentence of `chunk` (masked_sets order), padded to the longest rounded up to a
    multiple of LENGTH_MULTIPLE (at most max_length)."""
    rows = [(s, words) for s in range(len(chunk)) for words in masked_sets(chunk[s].num_words)]
    longest = max(len(e.ids) for e in chunk)
    if max_length is not None and longest > max_length:
        raise ValueError(f'a sentence of {longest} tokens is longer than the model ({max_length} positions); '
                         f'parse shorter sentences (--max_words).')
    length = -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    if max_length is not None:
        length = min(length, max_length)
    ids = np.full((len(rows), length), pad_id, np.int32)
    targets = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for r, (s, words) in enumerate(rows):
        encoded = chunk[s]
        ids[r, :len(encoded.ids)] = encoded.masked(words, mask_id)
        targets[r, :len(encoded.ids)] = encoded.ids
        mask[r, :len(encoded.ids)] = 1
    return Copies(chunk, rows, ids, mask, targets)


def chunks(sentences: Sequence[Encoded], copies: int = 1024) -> Iterator[list[Encoded]]:
    """Consecutive sentences with about `copies` masked copies in each group (the unit of padding)."""
    chunk, count = [], 0
    for encoded in sentences:
        chunk.append(encoded)
        count += len(masked_sets(encoded.num_words))
        if count >= copies:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk

