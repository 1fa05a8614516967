"""Dependency decoding conventions (root handling, the released code's normalization, a proper softmax), the
attachment scores, MART's preprocessing, and the treebank reader's errors — on hand-computed cases."""
import conllu
import numpy as np
import pytest

from plmjax.analysis import constituency, dependency, trees, treebank


def test_released_softmax_divides_each_column_by_the_sum_of_the_row_with_its_index():
    rng = np.random.default_rng(0)
    matrix = rng.random((5, 5))
    e = np.exp(matrix - matrix.max())
    expected = np.array([[e[i, j] / e[j].sum() for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(dependency.released_softmax(matrix), expected, rtol=1e-15)
    rows = dependency.row_softmax(matrix)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-15)
    assert np.all(np.diag(rows) == 0)  # a word is not its own head
    off = ~np.eye(5, dtype=bool)
    expected = np.exp(matrix) * off / (np.exp(matrix) * off).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(rows, expected, rtol=1e-14)


def test_gold_root_conventions():
    impact = np.arange(16, dtype=np.float64).reshape(4, 4)
    scores = dependency.arc_scores(impact, 'eisner', 'gold', gold_root=2, normalization='none')
    matrix = scores.T  # F after the root handling
    assert np.all(matrix[2, 1:] == 0) and matrix[2, 0] == 1 and matrix[0, 0] == 0
    np.testing.assert_array_equal(matrix[1], impact[1])
    cle = dependency.arc_scores(impact, 'cle', 'cls', normalization='released').T
    assert np.all(cle[0] == 0)  # CLE zeroes the [CLS] row, and the released code does not normalize for it
    np.testing.assert_array_equal(cle[1:], impact[1:])
    eisner = dependency.arc_scores(impact, 'eisner', 'cls', normalization='released').T
    np.testing.assert_allclose(eisner, dependency.released_softmax(impact), rtol=1e-15)
    with pytest.raises(ValueError, match='gold root'):
        dependency.arc_scores(impact, 'eisner', 'gold')


def test_an_impact_matrix_with_one_clear_tree_is_parsed_to_it():
    # F[m, h]: word 2 ('sat') is the root; words 1 and 3 depend on it.
    impact = np.zeros((4, 4))
    impact[0, 2] = 5.0  # [CLS] changes most when 'sat' is masked
    impact[1, 2] = impact[3, 2] = 5.0
    for decoder in ('eisner', 'cle'):
        heads = dependency.parse(impact, decoder, root='gold', gold_root=2, normalization='none')
        np.testing.assert_array_equal(heads, [-1, 2, 0, 2])


def _sentence(heads, upos):
    return treebank.Sentence('s', tuple(f'w{i}' for i in range(len(heads))), tuple(heads), tuple(upos))


def test_attachment_scores_skip_punctuation_and_count_reversed_and_grandparent_arcs():
    # gold: 1 <- 2 -> 3, 2 is the root, 4 is punctuation attached to 2
    sentence = _sentence([2, 0, 2, 2], ['DET', 'VERB', 'NOUN', 'PUNCT'])
    predicted = np.array([-1, 2, 3, 0, 1])  # 1 right; 2 <- 3 reversed; 3 -> ROOT (grandparent of 3 is ROOT)
    scores = dependency.attachment_scores([sentence], [predicted])
    assert scores['dependents'] == 3
    assert scores['uas'] == pytest.approx(100 / 3)
    assert scores['uuas'] == pytest.approx(200 / 3)  # word 2's predicted head 3 is its gold dependent
    assert scores['ned'] == pytest.approx(100.0)  # word 3's predicted head, ROOT, is its gold grandparent


def test_mart_scores_follow_the_released_preprocessing():
    impact = np.random.default_rng(1).random((5, 5))
    block = impact[1:, 1:]
    e = np.exp(block - block.max())
    e = e / e.sum(axis=0, keepdims=True)
    np.fill_diagonal(e, 0)
    expected = 1 - e
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(constituency.mart_scores(impact), expected, rtol=1e-15)
    tree = constituency.parse(impact, ['a', 'b', 'c', 'd'])
    assert sorted(trees.to_brackets(tree).replace('(', ' ').replace(')', ' ').split()) == ['a', 'b', 'c', 'd']


CONLLU = """# sent_id = one
# text = I don't know.
1\tI\tI\tPRON\t_\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\t_\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\t_\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\t_\t_\t0\troot\t_\t_
4.1\tknown\t_\t_\t_\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t_\t_\t4\tpunct\t_\t_

# sent_id = two
1\tYes\tyes\tINTJ\t_\t_\t0\troot\t_\t_

"""


def test_conllu_reader_keeps_syntactic_words_and_filters_by_length(tmp_path):
    path = tmp_path / 'tb.conllu'
    path.write_text(CONLLU, encoding='utf-8')
    first, second = treebank.read_conllu(str(path))
    assert first.words == ('I', 'do', "n't", 'know', '.')
    assert first.heads == (4, 4, 4, 0, 4) and first.gold_root == 4
    np.testing.assert_array_equal(first.scored, [False, True, True, True, True, False])
    assert second.words == ('Yes',)
    assert [s.sent_id for s in treebank.read_conllu(str(path), max_words=3)] == ['two']
    out = tmp_path / 'out.conllu'
    treebank.write_conllu(str(out), [first], [np.array([-1, 4, 4, 4, 0, 4])])
    written = conllu.parse(out.read_text(encoding='utf-8'))[0]
    assert [t['head'] for t in written] == [4, 4, 4, 0, 4]


def test_bad_treebank_files_give_one_clear_message(tmp_path):
    broken = tmp_path / 'broken.conllu'
    broken.write_text(CONLLU.replace('4\tknow\tknow\tVERB', '4 know know VERB'), encoding='utf-8')
    with pytest.raises(treebank.TreebankError, match=r'broken.conllu:7: a CoNLL-U word line has 10'):
        treebank.read_conllu(str(broken))
    with pytest.raises(treebank.TreebankError, match='no such file'):
        treebank.read_conllu(str(tmp_path / 'missing.conllu'))
    text = tmp_path / 'text.txt'
    text.write_text('a b c\n\nd e\n', encoding='utf-8')
    assert [s.words for s in treebank.read_text(str(text))] == [('a', 'b', 'c'), ('d', 'e')]
    with pytest.raises(ValueError, match='plain text'):
        treebank.read_text(str(text))[0].gold_heads
