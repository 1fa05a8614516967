"""plmjax.interactive, the notebooks' API: fill_mask against the model's own softmax, save/load round trip, and
generate = plmjax infer's outputs."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plmjax.interactive as pi
from plmjax import cli, convert, models

WORDS = [f'w{k}' for k in range(5, 64)]  # ids: [PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3, [UNK]=4, then words


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    import tokenizers
    path = tmp_path_factory.mktemp('encoder')
    config = models.tiny_encoder(vocab_size=64, dropout_rate=0.0)
    module = models.build_model('encoder', config)
    params = jax.device_get(nn.meta.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']))
    convert.save_checkpoint(str(path), 'encoder', config, params)
    vocab = {'[PAD]': 0, '[CLS]': 1, '[SEP]': 2, '[MASK]': 3, '[UNK]': 4, **{w: k for k, w in enumerate(WORDS, 5)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(['[PAD]', '[CLS]', '[SEP]', '[MASK]', '[UNK]'])
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix='##')
    (path / 'tokenizer').mkdir()
    tokenizer.save(str(path / 'tokenizer' / 'tokenizer.json'))
    (path / 'tokenizer' / 'special_tokens_map.json').write_text(json.dumps(
        {'pad_token': '[PAD]', 'cls_token': '[CLS]', 'sep_token': '[SEP]', 'mask_token': '[MASK]'}))
    return path


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
    with pytest.raises(ValueError, match='needs decoder or encoder_decoder'):
        pi.generate(copy, ['w5'], strategy='greedy')
