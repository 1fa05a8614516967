"""`plmjax parse` end to end on a tiny encoder checkpoint with a WordPiece tokenizer: the outputs a user gets
(predicted CoNLL-U, scores, MART brackets, plots), the matrix cache, and one clear message per bad input."""
import json

import conllu
import jax
import numpy as np
import pytest
from flax import linen as nn

from plmjax import cli, convert, models
from plmjax.analysis import trees

WORDS = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'dog', 'ran', 'home', 'quick', '##ly', 'un', '##happy', '.']
TREEBANK = """# sent_id = a
1\tThe\t_\tDET\t_\t_\t2\tdet\t_\t_
2\tcat\t_\tNOUN\t_\t_\t3\tnsubj\t_\t_
3\tsat\t_\tVERB\t_\t_\t0\troot\t_\t_
4\ton\t_\tADP\t_\t_\t6\tcase\t_\t_
5\ta\t_\tDET\t_\t_\t6\tdet\t_\t_
6\tmat\t_\tNOUN\t_\t_\t3\tobl\t_\t_
7\t.\t_\tPUNCT\t_\t_\t3\tpunct\t_\t_

# sent_id = b
1\tThe\t_\tDET\t_\t_\t2\tdet\t_\t_
2\tunhappy\t_\tADJ\t_\t_\t3\tamod\t_\t_
3\tdog\t_\tNOUN\t_\t_\t4\tnsubj\t_\t_
4\tran\t_\tVERB\t_\t_\t0\troot\t_\t_
5\tquickly\t_\tADV\t_\t_\t4\tadvmod\t_\t_
6\thome\t_\tADV\t_\t_\t4\tadvmod\t_\t_

"""


def _checkpoint(path, initialized=(), **overrides):
    config = models.tiny_encoder(**overrides)
    module = models.build_model('encoder', config)
    params = jax.device_get(nn.meta.unbox(module.init(jax.random.key(0), np.zeros((1, 8), np.int32))['params']))
    convert.save_checkpoint(str(path), 'encoder', config, params, initialized=initialized)
    (path / 'tokenizer').mkdir()
    (path / 'tokenizer' / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS])
                                                   + '\n', encoding='utf-8')
    return path


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp('tiny') / 'model')


@pytest.fixture
def treebank_file(tmp_path):
    path = tmp_path / 'tb.conllu'
    path.write_text(TREEBANK, encoding='utf-8')
    return path


def _parse(*args):
    return cli.main(['parse', *map(str, args)])


def test_parse_writes_trees_scores_and_plots_and_caches_the_matrices(checkpoint, treebank_file, tmp_path, capsys):
    out = tmp_path / 'out'
    assert _parse('--checkpoint', checkpoint, '--conllu', treebank_file, '--out', out, '--plots', 2) == 0
    predicted = conllu.parse((out / 'predicted.conllu').read_text(encoding='utf-8'))
    assert [len(s) for s in predicted] == [7, 6]
    for sentence in predicted:
        assert trees.is_tree(np.array([-1, *(t['head'] for t in sentence)]))
    results = json.loads((out / 'results.json').read_text())
    assert results['matrices_cached'] is False and results['root'] == 'gold'
    rows = results['results']
    assert set(rows) == {'eisner+dist (root gold, released)', 'right_chain (root gold)', 'left_chain (root gold)',
                         'random (root gold)'}
    assert all(r['dependents'] == 12 for r in rows.values())  # 13 words, 1 of them punctuation
    assert '| right_chain (root gold) |' in (out / 'results.md').read_text()
    assert '| method | UAS | UUAS | NED |' in capsys.readouterr().out
    for name in ('heatmap_0.png', 'tree_0.png', 'heatmap_1.png', 'tree_1.png'):
        assert (out / name).stat().st_size > 5000

    assert _parse('--checkpoint', checkpoint, '--conllu', treebank_file, '--out', out, '--decoder', 'cle') == 0
    again = json.loads((out / 'results.json').read_text())
    assert again['matrices_cached'] is True
    assert _parse('--checkpoint', checkpoint, '--conllu', treebank_file, '--out', out, '--decoder', 'mart') == 0
    brackets = (out / 'trees.txt').read_text().splitlines()
    assert brackets[0].replace('(', ' ').replace(')', ' ').split() == ['The', 'cat', 'sat', 'on', 'a', 'mat', '.']


def test_plain_text_parses_with_the_cls_root(checkpoint, tmp_path):
    text = tmp_path / 'text.txt'
    text.write_text('the cat sat on a mat\nthe dog ran home\n', encoding='utf-8')
    out = tmp_path / 'out'
    assert _parse('--checkpoint', checkpoint, '--text', text, '--out', out, '--normalization', 'softmax') == 0
    assert json.loads((out / 'results.json').read_text())['root'] == 'cls'
    assert len(conllu.parse((out / 'predicted.conllu').read_text())) == 2


def test_each_bad_input_gives_one_clear_message(checkpoint, treebank_file, tmp_path, capsys):
    headless = _checkpoint(tmp_path / 'headless', initialized=['mlm_head/bias'])
    assert _parse('--checkpoint', headless, '--conllu', treebank_file, '--out', tmp_path / 'o1',
                  '--impact', 'prob') == 2
    assert 'use --impact dist' in capsys.readouterr().err

    short = _checkpoint(tmp_path / 'short', max_length=8)
    assert _parse('--checkpoint', short, '--conllu', treebank_file, '--out', tmp_path / 'o2') == 2
    assert 'longer than the model\'s 8 positions; lower --max_words' in capsys.readouterr().err

    broken = tmp_path / 'broken.conllu'
    broken.write_text(TREEBANK.replace('3\tsat\t_\tVERB', '3 sat _ VERB'), encoding='utf-8')
    assert _parse('--checkpoint', checkpoint, '--conllu', broken, '--out', tmp_path / 'o3') == 2
    assert 'broken.conllu:4: a CoNLL-U word line has 10 tab-separated columns' in capsys.readouterr().err

    assert _parse('--checkpoint', checkpoint, '--conllu', treebank_file, '--out', tmp_path / 'o4',
                  '--layer', 7) == 2
    assert 'layers 0 (embeddings) .. 2' in capsys.readouterr().err
