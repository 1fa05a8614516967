"""Tree decoders for Perturbed Masking (Wu et al., ACL 2020): dependency trees from arc scores, constituency
trees from a word-level matrix, the uninformed baselines, and unlabeled span F1.

Conventions: a sentence of n words has nodes 0..n, node 0 is ROOT. `scores[h, m]` scores the arc h -> m
([n+1, n+1]). A dependency tree is an int array `heads` of length n+1, heads[0] = -1, heads[m] in 0..n.
A constituency tree is nested Python lists whose leaves are the words (a one-word tree is the word itself).
"""
import networkx as nx
import numpy as np

LEFT, RIGHT = 0, 1  # span directions: LEFT = the head is the span's right end, RIGHT = its left end


def _check_scores(scores, finite=False):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 1:
        raise ValueError(f'scores must be a square [n+1, n+1] matrix with n >= 0, got shape {scores.shape}')
    if np.isnan(scores).any() or (finite and not np.isfinite(scores).all()):
        raise ValueError('scores contain NaN' + (' or inf' if finite else ''))
    return scores


def eisner(scores, return_score=False):
    """Eisner's O(n^3) maximum projective dependency tree; ROOT may take several children.

    Ties go to the first maximum over split points in ascending order (np.argmax) in the recurrence order of
    the first-order algorithm, so the tree is deterministic. With `return_score`, returns (heads, DP value).
    """
    scores = _check_scores(scores)
    size = scores.shape[0]  # n + 1
    complete = np.full((size, size, 2), -np.inf)
    incomplete = np.full((size, size, 2), -np.inf)
    complete[np.arange(size), np.arange(size)] = 0.0
    complete_split = np.zeros((size, size, 2), dtype=np.int64)
    incomplete_split = np.zeros((size, size, 2), dtype=np.int64)
    for k in range(1, size):
        for s in range(size - k):
            t = s + k
            # r = s..t-1: a right-complete span (s, r) meets a left-complete span (r+1, t)
            joined = complete[s, s:t, RIGHT] + complete[s + 1:t + 1, t, LEFT]
            r = int(np.argmax(joined))
            incomplete_split[s, t] = s + r
            if s > 0:  # nothing heads ROOT
                incomplete[s, t, LEFT] = joined[r] + scores[t, s]
            incomplete[s, t, RIGHT] = joined[r] + scores[s, t]
            left = complete[s, s:t, LEFT] + incomplete[s:t, t, LEFT]  # r = s..t-1
            r = int(np.argmax(left))
            complete[s, t, LEFT], complete_split[s, t, LEFT] = left[r], s + r
            right = incomplete[s, s + 1:t + 1, RIGHT] + complete[s + 1:t + 1, t, RIGHT]  # r = s+1..t
            r = int(np.argmax(right))
            complete[s, t, RIGHT], complete_split[s, t, RIGHT] = right[r], s + 1 + r

    heads = np.full(size, -1, dtype=np.int64)
    stack = [(0, size - 1, RIGHT, True)]  # (start, end, direction, complete?)
    while stack:
        s, t, direction, is_complete = stack.pop()
        if s == t:
            continue
        if is_complete:
            r = complete_split[s, t, direction]
            if direction == RIGHT:
                stack += [(s, r, RIGHT, False), (r, t, RIGHT, True)]
            else:
                stack += [(s, r, LEFT, True), (r, t, LEFT, False)]
        else:
            r = incomplete_split[s, t, direction]
            if direction == LEFT:
                heads[s] = t
            else:
                heads[t] = s
            stack += [(s, r, RIGHT, True), (r + 1, t, LEFT, True)]
    if return_score:
        return heads, float(complete[0, size - 1, RIGHT])
    return heads


def tree_score(scores, heads):
    """Sum of scores[heads[m], m] over the words m >= 1."""
    heads = np.asarray(heads)
    words = np.arange(1, len(heads))
    return float(np.asarray(scores, dtype=np.float64)[heads[1:], words].sum())


def chu_liu_edmonds(scores):
    """Maximum spanning arborescence rooted at ROOT (non-projective), by networkx's Edmonds algorithm."""
    scores = _check_scores(scores, finite=True)
    size = scores.shape[0]
    heads = np.full(size, -1, dtype=np.int64)
    if size == 1:
        return heads
    graph = nx.DiGraph()
    graph.add_nodes_from(range(size))
    graph.add_weighted_edges_from((h, m, scores[h, m]) for h in range(size) for m in range(1, size) if h != m)
    try:
        tree = nx.maximum_spanning_arborescence(graph, attr='weight')
    except nx.NetworkXException as error:
        raise ValueError(f'no spanning arborescence rooted at node 0 for scores of shape {scores.shape}: '
                         f'{error}') from error
    for h, m in tree.edges():
        heads[m] = h
    return heads


def _check_root(n, root):
    if root is not None and not 1 <= root <= n:
        raise ValueError(f'root must be a word index in 1..{n}, got {root}')


def right_chain(n, root=None):
    """Each word m attaches to m+1 and the last word to ROOT.

    With a gold `root` word: heads[root] = 0, the last word (if it is not root) attaches to root, and every
    other word keeps its chain head.
    """
    _check_root(n, root)
    heads = np.concatenate([[-1], np.arange(2, n + 1), [0]])[:n + 1].astype(np.int64)
    if root is not None:
        if root != n:
            heads[n] = root
        heads[root] = 0
    return heads


def left_chain(n, root=None):
    """Word 1 attaches to ROOT and each other word m to m-1.

    With a gold `root` word: heads[root] = 0, word 1 (if it is not root) attaches to root, and every other
    word keeps its chain head.
    """
    _check_root(n, root)
    heads = np.arange(-1, n, dtype=np.int64)
    if root is not None:
        if root != 1:
            heads[1] = root
        heads[root] = 0
    return heads


def random_scores(n, rng):
    """Uniform [0, 1) arc scores [n+1, n+1] (decode them with `eisner` for the random baseline).

    `rng` is a numpy Generator or a seed.
    """
    return np.random.default_rng(rng).random((n + 1, n + 1))


def is_tree(heads):
    """True if heads[0] = -1 and every word reaches ROOT through its heads (no cycles, no out-of-range head)."""
    heads = np.asarray(heads)
    size = len(heads)
    if heads.ndim != 1 or size < 1 or heads[0] != -1:
        return False
    if ((heads[1:] < 0) | (heads[1:] >= size)).any():
        return False
    for m in range(1, size):
        node, steps = m, 0
        while node != 0:
            node, steps = heads[node], steps + 1
            if steps > size:
                return False
    return True


def is_projective(heads):
    """True if the tree is projective: every node's yield (itself and its descendants) is a contiguous span."""
    if not is_tree(heads):
        raise ValueError(f'not a dependency tree: {list(heads)}')
    heads = np.asarray(heads)
    size = len(heads)
    low, high, count = np.arange(size), np.arange(size), np.ones(size, dtype=np.int64)
    for m in range(1, size):
        node = heads[m]
        while node != -1:  # m is in the yield of each of its ancestors
            low[node], high[node], count[node] = min(low[node], m), max(high[node], m), count[node] + 1
            node = heads[node]
    return bool((high - low + 1 == count).all())


def _best_cut(scores):
    """The authors' split point k in 1..len-1 (first minimum); word k is left out of both blocks."""
    length = len(scores)
    best, best_k = np.inf, 1
    for k in range(1, length):
        left = scores[:k, :k].sum() / (2 * k)
        right = scores[k + 1:, k + 1:].sum() / (2 * (length - k))
        between = (scores[:k, k + 1:].sum() + scores[k + 1:, :k].sum()) / (k * (length - k))
        cost = left + right - between
        if cost < best:
            best, best_k = cost, k
    return best_k


def mart(scores, words):
    """MART top-down constituency parsing (Wu et al. 2020) of `words` with a word-level matrix [len, len].

    `scores` is a dissimilarity (the authors pass 1 - softmax(impact) with a zero diagonal): each span is split
    at the word k minimizing sum(S[:k,:k])/2k + sum(S[k+1:,k+1:])/2(len-k) - (sum(S[:k,k+1:]) +
    sum(S[k+1:,:k]))/k(len-k), and becomes [mart(words[:k]), [word k, mart(words[k+1:])]] (just
    [mart(words[:k]), word k] when k is the last word).
    """
    scores = np.asarray(scores, dtype=np.float64)
    words = list(words)
    if not words or scores.shape != (len(words), len(words)):
        raise ValueError(f'mart needs >= 1 word and a [len, len] matrix, got {len(words)} words and '
                         f'scores of shape {scores.shape}')
    if len(words) == 1:
        return words[0]
    k = _best_cut(scores)
    head = words[k]
    if k + 1 < len(words):
        head = [head, mart(scores[k + 1:, k + 1:], words[k + 1:])]
    return [mart(scores[:k, :k], words[:k]), head]


def right_branching(words):
    """[w0, [w1, [w2, ...]]]; one word is the word itself."""
    words = list(words)
    if not words:
        raise ValueError('right_branching needs at least one word')
    tree = words[-1]
    for word in reversed(words[:-1]):
        tree = [word, tree]
    return tree


def left_branching(words):
    """[[[w0, w1], w2], ...]; one word is the word itself."""
    words = list(words)
    if not words:
        raise ValueError('left_branching needs at least one word')
    tree = words[0]
    for word in words[1:]:
        tree = [tree, word]
    return tree


def to_brackets(tree):
    """'(The (cat sat))' for ['The', ['cat', 'sat']]: each constituent in parentheses, leaves as the words."""
    if isinstance(tree, list):
        return '(' + ' '.join(to_brackets(child) for child in tree) + ')'
    return str(tree)


def spans(tree):
    """Word-index spans (start, end exclusive) of every constituent of >= 2 words, the whole sentence included."""
    found = set()

    def walk(node, start):  # returns the end of node's span
        if not isinstance(node, list):
            return start + 1
        end = start
        for child in node:
            end = walk(child, end)
        if end - start >= 2:
            found.add((start, end))
        return end

    walk(tree, 0)
    return found


def unlabeled_f1(pred_spans, gold_spans):
    """Sentence-level unlabeled bracketing F1; spans of one word are ignored, the whole-sentence span counts.

    Two empty sets (a one-word sentence) score 1.0.
    """
    pred = {span for span in pred_spans if span[1] - span[0] >= 2}
    gold = {span for span in gold_spans if span[1] - span[0] >= 2}
    if not pred and not gold:
        return 1.0
    overlap = len(pred & gold)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)
