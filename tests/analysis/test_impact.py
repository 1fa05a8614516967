"""Perturbed Masking impact matrices: the batched, padded, chunked computation equals the definition computed
one masked pair at a time (one unpadded forward pass per masking), in float64 so 1e-6 tests the bookkeeping and
not rounding; for dist and prob, the encoder's output and an inner layer, multi-piece words, on 1 and 8 devices."""
import itertools

import jax
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models, sharding
from plmjax.analysis import impact, masking
from plmjax.models import intermediates

MASK, CLS, SEP = 4, 2, 3
# Three sentences of different lengths; words with 1-3 pieces (ids >= 5).
SENTENCES = [[[11], [12, 13], [14], [15, 16, 17]],
             [[21], [22]],
             [[31, 32], [33], [34], [35], [36, 37], [38]]]


def _model(dtype='float64'):
    config = models.tiny_encoder(dtype=dtype, param_dtype=dtype)
    module = models.build_model('encoder', config)
    params = nn.meta.unbox(module.init(jax.random.key(1), np.zeros((1, 8), np.int32))['params'])
    return module, params


def _direct(module, params, pieces, impact_name, layer):
    """F by the definition: every masking run alone, unpadded, batch 1."""
    encoded = masking.Encoded.from_pieces(pieces, CLS, SEP)
    n = len(pieces)

    def run(words):
        ids = encoded.masked(words, MASK)[None]
        outputs, found = intermediates.capture(module, {'params': params}, ids, what=('hidden_states',))
        if impact_name == 'dist':
            hidden = outputs['hidden_states'] if layer is None else found['encoder']['hidden_states'][layer]
            return np.asarray(hidden[0], np.float64)
        probs = jax.nn.softmax(np.asarray(outputs['logits'][0], np.float64))
        return probs[np.arange(len(encoded.ids)), encoded.ids]

    def change(a, b, p):
        return np.linalg.norm(a[p] - b[p]) if impact_name == 'dist' else a[p] - b[p]

    expected = np.zeros((n + 1, n + 1))
    base = run(())
    for j in range(1, n + 1):
        expected[0, j] = change(base, run((j,)), 0)
    for i, j in itertools.permutations(range(1, n + 1), 2):
        single, pair = run((i,)), run((i, j))
        expected[i, j] = np.mean([change(single, pair, p) for p in np.flatnonzero(encoded.word_of == i)])
    return expected


@pytest.mark.parametrize('impact_name,layer', [('dist', None), ('dist', 1), ('prob', None)])
def test_batched_impact_equals_one_pair_at_a_time(impact_name, layer):
    with jax.enable_x64(True):
        module, params = _model()
        encoded = [masking.Encoded.from_pieces(p, CLS, SEP) for p in SENTENCES]
        # batch 8 and chunks of ~16 copies: sentences share batches and split across them
        computer = impact.PerturbedMasking(module, params, mask_id=MASK, impact=impact_name, layer=layer,
                                           batch_size=8)
        got = list(computer.matrices(encoded, chunk_copies=16))
        for pieces, matrix in zip(SENTENCES, got):
            expected = _direct(module, params, pieces, impact_name, layer)
            assert matrix.shape == (len(pieces) + 1,) * 2
            assert np.all(matrix[:, 0] == 0) and np.all(np.diag(matrix) == 0)
            scale = np.abs(expected).max()
            assert scale > 0
            assert np.abs(matrix - expected).max() <= 1e-6 * scale


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
def test_sharded_on_the_data_axis_equals_one_device():
    with jax.enable_x64(True):
        module, params = _model()
        encoded = [masking.Encoded.from_pieces(p, CLS, SEP) for p in SENTENCES]
        one = impact.PerturbedMasking(module, params, mask_id=MASK, batch_size=16)
        mesh = sharding.create_mesh(data=8, devices=jax.devices()[:8])
        eight = impact.PerturbedMasking(module, params, mask_id=MASK, batch_size=16, mesh=mesh)
        for a, b in zip(one.matrices(encoded), eight.matrices(encoded)):
            assert np.abs(a - b).max() <= 1e-9 * np.abs(a).max()


def test_forward_passes_per_sentence():
    assert masking.masked_sets(3) == [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3)]
    assert len(masking.masked_sets(20)) == 1 + 20 + 190
    encoded = masking.Encoded.from_pieces([[7], [8, 9]], CLS, SEP)
    np.testing.assert_array_equal(encoded.ids, [CLS, 7, 8, 9, SEP])
    np.testing.assert_array_equal(encoded.word_of, [0, 1, 2, 2, 0])
    np.testing.assert_array_equal(encoded.masked((2,), MASK), [CLS, 7, MASK, MASK, SEP])


def test_a_word_without_pieces_and_a_sentence_too_long_are_refused():
    with pytest.raises(ValueError, match='no word pieces'):
        masking.Encoded.from_pieces([[7], []], CLS, SEP)
    module, params = _model('float32')
    computer = impact.PerturbedMasking(module, params, mask_id=MASK, batch_size=8, max_length=6)
    with pytest.raises(ValueError, match='longer than the model'):
        list(computer.matrices([masking.Encoded.from_pieces([[7], [8], [9], [10], [11]], CLS, SEP)]))
