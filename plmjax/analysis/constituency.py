"""Constituency trees from impact matrices: MART (top-down splitting) on the released code's preprocessing."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from plmjax.analysis import trees


def mart_scores(impact: np.ndarray) -> np.ndarray:
    """The released code's MART input: the word block F[1:, 1:] (no [CLS]), e = exp(M - max M) divided by its
    column sums (a column softmax), diagonal 0, then 1 - e with the diagonal 0 again."""
    block = np.array(impact[1:, 1:], np.float64)
    e = np.exp(block - block.max())
    e = e / e.sum(axis=0)
    np.fill_diagonal(e, 0.0)
    e = 1.0 - e
    np.fill_diagonal(e, 0.0)
    return e


def parse(impact: np.ndarray, words: Sequence[str]):
    """The MART tree (nested lists of words) of one sentence."""
    return trees.mart(mart_scores(impact), list(words))
