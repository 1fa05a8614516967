"""Sequence packing in the models: a packed batch (seqio's converters with pack=True) gives every example the
loss it has alone (the same examples through the unpacked converters), and no attention crosses a segment.

Models run in float64 (jax x64), so the only differences are rounding-order noise far below the 1e-6 tolerance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from plmjax import models
from plmjax.data import feature_converters
from plmjax.layers import attention
from plmjax.models import intermediates
from plmjax.objectives import CAUSAL_LM, DENOISING, PREFIX_LM, SPAN_CORRUPTION
from plmjax.objectives.base import softmax_cross_entropy

RTOL = 1e-6
_F64 = dict(dtype='float64', param_dtype='float64', dropout_rate=0.0, attention_dropout_rate=0.0,
            activation_dropout_rate=0.0)


def _examples(seed, count, features):
    """`count` examples {name: int32 ids in [2, 500)} with lengths drawn from features[name] = (low, high)."""
    rng = np.random.RandomState(seed)
    return [{name: rng.randint(2, 500, size=rng.randint(low, high + 1)).astype(np.int32)
             for name, (low, high) in features.items()} for _ in range(count)]


def _convert(family, examples, lengths, pack):
    """The examples through `make_feature_converter(family, pack=pack)` -> {feature: [rows, length]} numpy."""
    names = list(examples[0])
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32) for k in names})
    ds = feature_converters.make_feature_converter(family, pack=pack)(ds, lengths)
    rows = list(ds.as_numpy_iterator())
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def _token_nll(objective, module, params, batch):
    """[rows, length] float64 per-token nll of the objective's model inputs on `batch`."""
    inputs = objective.model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    logits = module.apply({'params': params}, **inputs)['logits']
    return np.asarray(softmax_cross_entropy(logits, jnp.asarray(batch['decoder_target_tokens'])), np.float64)


def _per_example_losses(objective, module, params, batch):
    """Each example's summed weighted nll, in example order: per packed segment, or per row unpacked."""
    nll = _token_nll(objective, module, params, batch) * batch['decoder_loss_weights']
    segments = batch.get('decoder_segment_ids', (batch['decoder_target_tokens'] != 0).astype(np.int32))
    losses, tokens = [], []
    for row in range(nll.shape[0]):
        for segment in range(1, segments[row].max() + 1):
            where = segments[row] == segment
            losses.append(nll[row][where].sum())
            tokens.append(batch['decoder_target_tokens'][row][where])
    return np.array(losses), tokens


def _model(architecture, config):
    return {'decoder': models.DecoderModel, 'encoder_decoder': models.EncoderDecoderModel}[architecture](config)


def _init(module, batch, objective):
    inputs = objective.model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    return module.init(jax.random.key(0), **inputs)['params']


def _check_packed_equals_unpacked(family, objective, architecture, config, examples, lengths):
    packed = _convert(family, examples, lengths, pack=True)
    unpacked = _convert(family, examples, lengths, pack=False)
    assert packed['decoder_target_tokens'].shape[0] < len(examples)  # several examples share a row
    module = _model(architecture, config)
    params = _init(module, unpacked, objective)
    want, want_tokens = _per_example_losses(objective, module, params, unpacked)
    got, got_tokens = _per_example_losses(objective, module, params, packed)
    assert len(got) == len(want) == len(examples)
    for a, b in zip(got_tokens, want_tokens):  # the same example in the same place of both lists
        np.testing.assert_array_equal(a, b)
    assert np.all(want > 0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


DECODER_POSITIONS = ('learned', 'sinusoidal', 'rotary', 't5_relative', 'nezha_relative')


@pytest.mark.parametrize('position', DECODER_POSITIONS)
def test_causal_lm_packed_equals_unpacked(position):
    with jax.enable_x64(True):
        config = models.tiny_decoder(position=position, **_F64)
        examples = _examples(0, 7, {'targets': (3, 11)})
        _check_packed_equals_unpacked('decoder', CAUSAL_LM, 'decoder', config, examples, {'targets': 24})


@pytest.mark.parametrize('query_layer', [False, True])
def test_prefix_lm_packed_equals_unpacked(query_layer):
    """seqio's prefix LM: inputs + targets in one decoder row, bidirectional over each segment's own prefix (and
    PanGu-α's query layer, whose queries are the per-segment position embeddings)."""
    with jax.enable_x64(True):
        config = models.tiny_decoder(query_layer=query_layer, num_decoder_layers=3 if query_layer else 2, **_F64)
        examples = _examples(1, 6, {'inputs': (2, 6), 'targets': (2, 6)})
        _check_packed_equals_unpacked('prefix_lm', PREFIX_LM, 'decoder', config, examples,
                                      {'inputs': 12, 'targets': 12})


@pytest.mark.parametrize('variant', ['t5', 'learned'])
def test_span_corruption_packed_equals_unpacked(variant):
    """Encoder-decoder (T5 relative bias, or learned absolute positions as BART): encoder self-attention, decoder
    self-attention and the decoder's cross-attention each stay inside the example."""
    with jax.enable_x64(True):
        overrides = {} if variant == 't5' else dict(position='learned', position_offset=2)
        config = models.tiny_encoder_decoder(**overrides, **_F64)
        examples = _examples(2, 6, {'inputs': (4, 12), 'targets': (2, 6)})
        objective = SPAN_CORRUPTION if variant == 't5' else DENOISING  # one model_inputs, one loss
        _check_packed_equals_unpacked('encoder_decoder', objective, 'encoder_decoder', config, examples,
                                      {'inputs': 24, 'targets': 12})


# ------------------------------------------------------------------------------------------------ the mask

SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0],
                     [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]], np.int32)


def _positions(segments):
    """Per-segment positions 0, 1, ... (0 on padding), seqio's *_positions."""
    out = np.zeros_like(segments)
    for row in range(segments.shape[0]):
        for segment in range(1, segments[row].max() + 1):
            where = segments[row] == segment
            out[row][where] = np.arange(where.sum())
    return out


def _check_probs(probs, query_segments, key_segments, causal=False):
    """probs [layers, batch, heads, q, k]: zero across segments and on padded keys of real queries; each real
    query's probabilities sum to 1 over its own segment's (earlier, if causal) keys."""
    probs = np.asarray(probs, np.float64)
    same = query_segments[:, :, None] == key_segments[:, None, :]  # [batch, q, k]
    real_query = query_segments[:, :, None] != 0
    allowed = same & real_query
    if causal:
        allowed &= np.tril(np.ones(same.shape[1:], bool))[None]
    allowed = np.broadcast_to(allowed[None, :, None], probs.shape)
    real = np.broadcast_to(real_query[None, :, None], probs.shape)
    assert np.all(probs[real & ~allowed] == 0.0)  # exactly 0: exp(finfo.min - max) underflows
    np.testing.assert_allclose(np.where(allowed, probs, 0).sum(-1)[real[..., 0]], 1.0, rtol=1e-12)


def test_encoder_self_attention_stays_in_segment():
    with jax.enable_x64(True):
        module = models.EncoderModel(models.tiny_encoder(**_F64))
        ids = np.where(SEGMENTS > 0, 7 + np.arange(12), 0).astype(np.int32)
        params = module.init(jax.random.key(0), jnp.asarray(ids))['params']
        _, stacks = intermediates.capture(module, {'params': params}, jnp.asarray(ids), what=('attention_probs',),
                                          segment_ids=jnp.asarray(SEGMENTS),
                                          positions=jnp.asarray(_positions(SEGMENTS)))
        _check_probs(stacks['encoder']['attention_probs'], SEGMENTS, SEGMENTS)


def test_decoder_self_attention_stays_in_segment():
    with jax.enable_x64(True):
        module = models.DecoderModel(models.tiny_decoder(position='rotary', **_F64))
        ids = np.where(SEGMENTS > 0, 7 + np.arange(12), 0).astype(np.int32)
        params = module.init(jax.random.key(0), jnp.asarray(ids))['params']
        _, stacks = intermediates.capture(module, {'params': params}, jnp.asarray(ids), what=('attention_probs',),
                                          input_mask=jnp.asarray(SEGMENTS > 0), segment_ids=jnp.asarray(SEGMENTS),
                                          positions=jnp.asarray(_positions(SEGMENTS)))
        _check_probs(stacks['decoder']['attention_probs'], SEGMENTS, SEGMENTS, causal=True)


def test_cross_attention_stays_in_segment():
    decoder_segments = np.array([[1, 1, 2, 2, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2, 2, 0]], np.int32)
    with jax.enable_x64(True):
        module = models.EncoderDecoderModel(models.tiny_encoder_decoder(**_F64))
        enc = np.where(SEGMENTS > 0, 7 + np.arange(12), 0).astype(np.int32)
        dec = np.where(decoder_segments > 0, 9 + np.arange(8), 0).astype(np.int32)
        params = module.init(jax.random.key(0), jnp.asarray(enc), jnp.asarray(dec))['params']
        _, stacks = intermediates.capture(
            module, {'params': params}, jnp.asarray(enc), jnp.asarray(dec),
            what=('attention_probs', 'cross_attention_probs'), encoder_segment_ids=jnp.asarray(SEGMENTS),
            decoder_segment_ids=jnp.asarray(decoder_segments), encoder_positions=jnp.asarray(_positions(SEGMENTS)),
            decoder_positions=jnp.asarray(_positions(decoder_segments)))
        _check_probs(stacks['encoder']['attention_probs'], SEGMENTS, SEGMENTS)
        _check_probs(stacks['decoder']['attention_probs'], decoder_segments, decoder_segments, causal=True)
        _check_probs(stacks['decoder']['cross_attention_probs'], decoder_segments, SEGMENTS)


def test_packed_decoding_is_refused():
    context = attention.SelfAttentionContext(causal=True)
    with pytest.raises(ValueError, match='not cached decoding'):
        context.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32), segment_ids=jnp.ones((1, 4), jnp.int32),
                     decode=True)
