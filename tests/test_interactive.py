"""plmjax.interactive, the notebooks' API: fill_mask against the model's own softmax, save/load round trip, and
generate = plmjax infer's outputs."""
import json

import jax
import numpy as np
import pytest

import plmjax.interactive as pi
from plmjax import cli
from tests.evaluation import tiny_encoder_checkpoint

WORDS = tiny_encoder_checkpoint.WORDS


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    return tiny_encoder_checkpoint.save(tmp_path_factory.mktemp('encoder'))[0]


def test_fill_mask_gives_the_softmax_top_k_at_each_mask(encoder_dir):
    model = pi.load(str(encoder_dir))
    fills = pi.fill_mask(model, 'w5 [MASK] w7 [MASK]', k=3)
    ids = np.array([[1, 5, 3, 7, 3, 2]], np.int32)
    logits = np.asarray(model.module.apply({'params': model.params}, ids)['logits'][0], np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for position, got in zip((2, 4), fills):
        p = probs[position].copy()
        p[:5] = -1  # special tokens (and [UNK]'s id 4 is a word here: check it is not first)
        assert [w for w, _ in got] == [WORDS[i - 5] for i in np.argsort(-p)[:3]]
        np.testing.assert_allclose([q for _, q in got], np.sort(p)[::-1][:3], rtol=1e-5)
    with pytest.raises(ValueError, match='no \\[MASK\\]'):
        pi.fill_mask(model, 'w5 w6')


def test_save_and_load_round_trip_and_generate_is_infer(encoder_dir, tmp_path):
    model = pi.load(str(encoder_dir))
    copy = pi.load(pi.save(model, str(tmp_path / 'copy')))
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(copy.params)):
        np.testing.assert_array_equal(a, b)
    outputs = pi.generate(copy, ['w5 w6', {'inputs': 'w9', 'fixed': {'1': 'w40'}}], strategy='pmlm',
                          order='random', max_new_tokens=5, seed=3)
    inputs = tmp_path / 'in.jsonl'
    inputs.write_text(json.dumps({'inputs': 'w5 w6'}) + '\n' + json.dumps({'inputs': 'w9', 'fixed': {'1': 'w40'}})
                      + '\n')
    assert cli.main(['infer', '--checkpoint', str(encoder_dir), '--inputs', str(inputs), '--out',
                     str(tmp_path / 'out.jsonl'), '--strategy', 'pmlm', '--order', 'random', '--max_new_tokens', '5',
                     '--seed', '3', '--batch_size', '2']) == 0
    expected = [json.loads(line) for line in (tmp_path / 'out.jsonl').read_text().splitlines()]
    assert [o['tokens'] for o in outputs] == [e['tokens'] for e in expected]
    assert outputs[1]['tokens'][1] == WORDS.index('w40') + 5 and len(pi.pmlm_steps(copy, outputs[0])) == 5
    picture = pi.plot_pmlm_order(copy, outputs[0], str(tmp_path / 'order.png'))
    assert open(picture, 'rb').read(4) == b'\x89PNG'
    with pytest.raises(ValueError, match='needs decoder or encoder_decoder'):
        pi.generate(copy, ['w5'], strategy='greedy')
