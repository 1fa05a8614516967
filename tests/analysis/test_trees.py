"""Tree decoders against brute force over every tree, hand-computed MART splits, exact baselines and F1."""
import functools
import itertools
import math

import numpy as np
import pytest

from plmjax.analysis import trees

SEEDS = (0, 1, 2)


def _crossing_free(heads):
    """Projectivity by its other definition: no two arcs cross (ROOT sits at position 0, its arcs count)."""
    arcs = [tuple(sorted((int(heads[m]), m))) for m in range(1, len(heads))]
    return not any(a < c < b < d for (a, b), (c, d) in itertools.permutations(arcs, 2))


@functools.cache
def _all_trees(n):
    """Every dependency tree over n words (int [count, n+1]) and a projective flag, by enumeration."""
    choices = [[h for h in range(n + 1) if h != m] for m in range(1, n + 1)]
    assignments = np.array(list(itertools.product(*choices)), dtype=np.int64).reshape(-1, n)  # [n^n, n]
    parent = np.concatenate([np.zeros((len(assignments), 1), np.int64), assignments], axis=1)  # 0 -> 0
    node = np.tile(np.arange(n + 1), (len(assignments), 1))
    for _ in range(n):  # after n steps up, every word of a tree has reached ROOT; a cycle never does
        node = np.take_along_axis(parent, node, axis=1)
    found = parent[(node == 0).all(axis=1)]
    found[:, 0] = -1
    projective = np.array([_crossing_free(h) for h in found])
    return found, projective


def _scores_of(all_heads, scores):
    n = all_heads.shape[1] - 1
    return scores[all_heads[:, 1:], np.arange(1, n + 1)].sum(axis=1)  # [count]


def _matrices(n):
    for seed in SEEDS:
        rng = np.random.default_rng(100 * n + seed)
        yield rng.random((n + 1, n + 1))
        yield rng.standard_normal((n + 1, n + 1))  # negative arcs too


def test_enumeration_counts_and_helpers():
    # Cayley: (n+1)^(n-1) trees rooted at node 0; is_tree and is_projective agree with the independent checks
    for n in range(1, 6):
        all_heads, projective = _all_trees(n)
        assert len(all_heads) == (n + 1) ** (n - 1)
        assert all(trees.is_tree(h) for h in all_heads)
        assert [trees.is_projective(h) for h in all_heads] == list(projective)
    assert not trees.is_tree([-1, 2, 1])  # a cycle
    assert not trees.is_tree([-1, 0, 3])  # head out of range
    assert not trees.is_tree([0, 0, 1])  # ROOT with a head
    assert not trees.is_projective([-1, 2, 0, 1])  # arcs 1 -> 3 and 0 -> 2 cross
    with pytest.raises(ValueError, match='not a dependency tree'):
        trees.is_projective([-1, 2, 1])


@pytest.mark.parametrize('n', range(1, 8))
def test_eisner_is_the_best_projective_tree(n):
    all_heads, projective = _all_trees(n)
    for scores in _matrices(n):
        heads, value = trees.eisner(scores, return_score=True)
        assert trees.is_tree(heads) and _crossing_free(heads)
        best = _scores_of(all_heads[projective], scores).max()
        assert math.isclose(trees.tree_score(scores, heads), best, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(value, trees.tree_score(scores, heads), rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize('n', range(1, 8))
def test_chu_liu_edmonds_is_the_best_tree(n):
    all_heads, _ = _all_trees(n)
    for scores in _matrices(n):
        heads = trees.chu_liu_edmonds(scores)
        assert trees.is_tree(heads)
        # networkx shifts the weights before Edmonds and back, so the total can differ by float64 rounding
        best = _scores_of(all_heads, scores).max()
        assert math.isclose(trees.tree_score(scores, heads), best, rel_tol=1e-12, abs_tol=1e-12)


def test_non_projective_best_tree_beats_eisner():
    scores = np.zeros((4, 4))
    for h, m in [(0, 2), (2, 1), (1, 3)]:  # 1 -> 3 crosses 0 -> 2
        scores[h, m] = 10.0
    heads = trees.chu_liu_edmonds(scores)
    assert heads.tolist() == [-1, 2, 0, 1] and not trees.is_projective(heads)
    assert trees.tree_score(scores, heads) == 30.0
    assert trees.tree_score(scores, trees.eisner(scores)) == 20.0  # two of the three arcs fit one projective tree


def test_eisner_ties_give_the_left_chain():
    # all-equal scores: the first maximum over split points makes each word the dependent of the previous one
    for n in range(1, 8):
        for value in (0.0, 1.0):
            first = trees.eisner(np.full((n + 1, n + 1), value))
            assert first.tolist() == trees.left_chain(n).tolist() == [-1] + list(range(n))
            assert trees.eisner(np.full((n + 1, n + 1), value)).tolist() == first.tolist()


def test_empty_sentence_and_bad_input():
    assert trees.eisner(np.zeros((1, 1))).tolist() == [-1]
    assert trees.chu_liu_edmonds(np.zeros((1, 1))).tolist() == [-1]
    with pytest.raises(ValueError, match='square'):
        trees.eisner(np.zeros((3, 4)))
    with pytest.raises(ValueError, match='NaN'):
        trees.chu_liu_edmonds(np.full((3, 3), np.nan))


def test_chain_baselines():
    assert trees.right_chain(4).tolist() == [-1, 2, 3, 4, 0]
    assert trees.left_chain(4).tolist() == [-1, 0, 1, 2, 3]
    assert trees.right_chain(4, root=2).tolist() == [-1, 2, 0, 4, 2]
    assert trees.right_chain(4, root=4).tolist() == [-1, 2, 3, 4, 0]
    assert trees.left_chain(4, root=3).tolist() == [-1, 3, 1, 0, 3]
    assert trees.left_chain(4, root=1).tolist() == [-1, 0, 1, 2, 3]
    for root in range(1, 5):
        assert trees.is_projective(trees.right_chain(4, root)) and trees.is_projective(trees.left_chain(4, root))
    with pytest.raises(ValueError, match='root'):
        trees.right_chain(4, root=5)


def test_random_baseline():
    scores = trees.random_scores(5, np.random.default_rng(3))
    assert scores.shape == (6, 6) and ((scores >= 0) & (scores < 1)).all()
    assert np.array_equal(scores, trees.random_scores(5, 3))  # a seed gives the same matrix as its Generator
    assert trees.is_projective(trees.eisner(scores))


def test_mart_hand_example():
    # dissimilarities (symmetric, zero diagonal): a-b 0, a-c 0, a-d 1, b-c 1, b-d 1, c-d 1. Costs:
    # k=1: S[0,0]/2 + sum(S[2:,2:]) / 6 - (sum(S[0,2:]) + sum(S[2:,0])) / 3 = 2/6 - 2/3 = -1/3
    # k=2: sum(S[:2,:2]) / 4 + S[3,3] / 4 - (sum(S[:2,3]) + sum(S[3,:2])) / 4 = 0 - 4/4 = -1
    # k=3: sum(S[:3,:3]) / 6 = 2/6 = 1/3  -> split at c: [mart(a b), [c, mart(d)]]
    scores = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0]], dtype=float)
    tree = trees.mart(scores, ['a', 'b', 'c', 'd'])
    assert tree == [['a', 'b'], ['c', 'd']]
    assert trees.to_brackets(tree) == '((a b) (c d))'
    assert trees.spans(tree) == {(0, 2), (2, 4), (0, 4)}


def test_mart_split_word_joins_the_right():
    # two close pairs {a, b} and {c, d} (0 inside, 1 across): the split word is in neither block, so
    # k=1: 0 + 0 - 4/3;  k=2: 0 + 0 - 4/4;  k=3: 4/6  -> k=1: [a, [b, mart(c d)]]
    scores = np.ones((4, 4))
    scores[:2, :2] = scores[2:, 2:] = 0.0
    assert trees.mart(scores, 'abcd') == ['a', ['b', ['c', 'd']]]
    assert trees.mart(np.zeros((3, 3)), 'xyz') == ['x', ['y', 'z']]  # all costs 0: the first k
    assert trees.mart(np.zeros((1, 1)), ['w']) == 'w'


def test_mart_last_word_split():
    # S[0,1] = 1, S[2,3] = 2, the rest 0:  k=1: 4/6 = 2/3;  k=2: 2/4 = 1/2;  k=3: 2/6 = 1/3  -> [mart(a b c), d]
    # inside a b c: k=1: 0 - 0 = 0;  k=2: 2/4  -> [a, [b, c]]
    scores = np.zeros((4, 4))
    scores[0, 1] = scores[1, 0] = 1.0
    scores[2, 3] = scores[3, 2] = 2.0
    assert trees.mart(scores, 'abcd') == [['a', ['b', 'c']], 'd']


def test_branching_brackets_spans_f1():
    words = ['The', 'cat', 'sat', 'down']
    right, left = trees.right_branching(words), trees.left_branching(words)
    assert right == ['The', ['cat', ['sat', 'down']]]
    assert left == [[['The', 'cat'], 'sat'], 'down']
    assert trees.right_branching(['w']) == trees.left_branching(['w']) == 'w'
    assert trees.to_brackets(right) == '(The (cat (sat down)))'
    assert trees.spans(right) == {(0, 4), (1, 4), (2, 4)}
    assert trees.spans(left) == {(0, 4), (0, 2), (0, 3)}
    assert trees.spans('w') == set()
    # 1 of 3 predicted spans is gold, 1 of 3 gold spans predicted -> P = R = F1 = 1/3
    assert math.isclose(trees.unlabeled_f1(trees.spans(right), trees.spans(left)), 1 / 3)
    # gold [[The cat] [sat down]]: right shares (0,4) and (2,4): P = 2/3, R = 2/3
    gold = trees.spans([['The', 'cat'], ['sat', 'down']])
    assert math.isclose(trees.unlabeled_f1(trees.spans(right), gold), 2 / 3)
    assert trees.unlabeled_f1({(0, 2), (1, 2)}, {(0, 2)}) == 1.0  # one-word spans are ignored
    assert trees.unlabeled_f1(set(), set()) == 1.0
    assert trees.unlabeled_f1({(0, 3)}, {(0, 2), (0, 4)}) == 0.0
