"""Dependency trees from impact matrices, with the conventions of the released Perturbed Masking code as named
options, and their attachment scores.

An arc h -> m is scored by F[m, h] (how much h's presence changes m). Root handling:
- 'gold' (the released code's default `--root gold`, an oracle): the gold root word's row is zeroed and
  F[root, 0] = 1 (Eisner also zeroes F[0, 0]; CLE zeroes the whole [CLS] row first);
- 'cls': the [CLS] row as it is measured (released `--root cls`; CLE still zeroes row 0).
Normalization of F before decoding:
- 'released': as the released code: Eisner gets e = exp(F - max F), then e / e.sum(axis=1) with numpy
  broadcasting, which divides column j by the sum of row j (not a row softmax); CLE gets F unnormalized;
- 'softmax': a proper row softmax (each word's scores over its candidate heads, every other node and ROOT, sum
  to 1; the diagonal takes no mass), for either decoder;
- 'none': F as it is.
The plain conventions are root='cls' with normalization='softmax'. Eisner lets ROOT take several children.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from plmjax.analysis import trees
from plmjax.analysis.treebank import Sentence

DECODERS = ('eisner', 'cle', 'right_chain', 'left_chain', 'random')
ROOTS = ('gold', 'cls')
NORMALIZATIONS = ('released', 'softmax', 'none')


def released_softmax(matrix: np.ndarray) -> np.ndarray:
    """The released code's `softmax`: exp(F - max F) / e.sum(axis=1), broadcast over columns."""
    e = np.exp(matrix - np.max(matrix))
    return e / e.sum(axis=1)


def row_softmax(matrix: np.ndarray) -> np.ndarray:
    """Each row's softmax over its candidate heads: every other node, ROOT included (a word is not its own head:
    the diagonal takes no mass and stays 0)."""
    scores = np.where(np.eye(len(matrix), dtype=bool), -np.inf, matrix)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def arc_scores(impact: np.ndarray, decoder: str, root: str = 'gold', gold_root: Optional[int] = None,
               normalization: str = 'released') -> np.ndarray:
    """The [n + 1, n + 1] scores[h, m] a tree decoder maximizes, from a word-level impact matrix F[m, h]."""
    if root not in ROOTS:
        raise ValueError(f'Unknown root handling {root!r}; choose one of {ROOTS}.')
    if normalization not in NORMALIZATIONS:
        raise ValueError(f'Unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}.')
    if root == 'gold' and gold_root is None:
        raise ValueError("root='gold' needs the gold root word (a treebank sentence); use root='cls' for text.")
    matrix = np.array(impact, np.float64)
    if decoder == 'cle':
        matrix[0] = 0.0
    if root == 'gold':
        matrix[gold_root] = 0.0
        matrix[gold_root, 0] = 1.0
        matrix[0, 0] = 0.0
    if normalization == 'softmax':
        matrix = row_softmax(matrix)
    elif normalization == 'released' and decoder == 'eisner':
        matrix = released_softmax(matrix)
    return matrix.T


def parse(impact: np.ndarray, decoder: str = 'eisner', root: str = 'gold', gold_root: Optional[int] = None,
          normalization: str = 'released', rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Predicted heads [n + 1] (heads[0] = -1) of one sentence."""
    n = impact.shape[0] - 1
    chain_root = gold_root if root == 'gold' else None
    if decoder == 'right_chain':
        return trees.right_chain(n, chain_root)
    if decoder == 'left_chain':
        return trees.left_chain(n, chain_root)
    if decoder == 'random':
        return trees.eisner(trees.random_scores(n, rng if rng is not None else np.random.default_rng(0)))
    if decoder == 'eisner':
        return trees.eisner(arc_scores(impact, decoder, root, gold_root, normalization))
    if decoder == 'cle':
        return trees.chu_liu_edmonds(arc_scores(impact, decoder, root, gold_root, normalization))
    raise ValueError(f'Unknown decoder {decoder!r}; choose one of {DECODERS}.')


def attachment_scores(sentences: Sequence[Sentence], predicted: Sequence[np.ndarray],
                      punctuation: bool = False) -> dict:
    """UAS, UUAS and NED over the dependents whose gold UPOS is not PUNCT (punctuation is parsed, not scored;
    `punctuation=True` scores every word).

    UUAS counts a dependent m when {m, predicted head} is a gold arc in either direction; NED also when the
    predicted head is m's gold grandparent (Schwartz et al. 2011), as the released evaluation does."""
    correct = undirected = ned = total = 0
    for sentence, heads in zip(sentences, predicted):
        gold = sentence.gold_heads
        for m in (np.arange(1, len(gold)) if punctuation else np.flatnonzero(sentence.scored)):
            h = int(heads[m])
            direct = h == gold[m]
            reverse = 0 < h < len(gold) and gold[h] == m
            grandparent = gold[m] > 0 and h == gold[gold[m]]
            correct += direct
            undirected += direct or reverse
            ned += direct or reverse or grandparent
            total += 1
    if not total:
        raise ValueError('no scored dependents (every word is punctuation, or no sentences).')
    return {'uas': 100.0 * correct / total, 'uuas': 100.0 * undirected / total, 'ned': 100.0 * ned / total,
            'dependents': total, 'sentences': len(sentences)}
