"""The flash-attention kernel path (attention_kernel='flash', Pallas TPU kernel in interpret mode on CPU) against
the einsum reference path, at real (non-padding) positions: BERT-like encoder with padding, GPT-like causal
decoder, T5 with relative bias (encoder self, decoder causal self, cross-attention); forward and gradients.

Tolerance: both paths run in float32; the kernel's online softmax sums exp(s - m) blockwise and normalizes the
accumulated context at each block, the reference sums a whole row then divides, so the two round differently at
float32's ~6e-8 per operation. Over 2 layers (LayerNorm/RMSNorm, MLP) that stays far below 1e-5 relative; an
error in the mask, bias, scale or layout moves the outputs by O(1e-2) or more.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from plmjax import sharding
from plmjax.layers import flash
from plmjax.models import config as config_lib
from plmjax.models.decoder import DecoderModel
from plmjax.models.encoder import EncoderModel
from plmjax.models.encoder_decoder import EncoderDecoderModel

RTOL, ATOL = 1e-5, 1e-5
# pallas_call's interpret=True (the kernel lowered to XLA ops, a loop over its grid): about twice as fast to
# compile as the TPU interpret mode (`force_tpu_interpret_mode()`, which simulates TPU memory), used by the
# mesh test below.
INTERPRET = lambda: pltpu.force_tpu_interpret_mode(True)  # noqa: E731


def _pair(config):
    return tuple(dataclasses.replace(config, attention_kernel=kernel) for kernel in ('einsum', 'flash'))


def _close(actual, expected, real):
    """Compare in float64 at the real positions (`real`: bool [batch, length])."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual[np.asarray(real)], expected[np.asarray(real)], rtol=RTOL, atol=ATOL)


def _ids(rng, batch, length, lengths):
    ids = rng.integers(3, 500, size=(batch, length))
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


def _check(model_cls, config, args, kwargs, real, output='hidden_states'):
    """Forward outputs and the gradients of a loss read at real positions only, einsum vs flash. One layer body
    (scan_layers) and 2 heads keep the interpreted kernel's compile short; the scan also carries the KernelMask
    (static `causal`) through nn.scan."""
    config = dataclasses.replace(config, scan_layers=True, num_heads=2, head_dim=32)
    reference, kernel = (model_cls(c) for c in _pair(config))
    params = jax.jit(lambda key: reference.init(key, *args, **kwargs))(jax.random.key(0))
    shape = jax.eval_shape(lambda p: reference.apply(p, *args, **kwargs)[output], params).shape
    weights = jax.random.normal(jax.random.key(1), shape)

    def loss(p, module):
        out = module.apply(p, *args, **kwargs)[output]
        return jnp.sum(jnp.where(real[..., None], out * weights, 0.0)), out

    with INTERPRET():
        (_, out_k), grads_k = jax.jit(jax.value_and_grad(lambda p: loss(p, kernel), has_aux=True))(params)
    (_, out_r), grads_r = jax.jit(jax.value_and_grad(lambda p: loss(p, reference), has_aux=True))(params)
    _close(out_k, out_r, real)
    assert float(jnp.max(jnp.abs(out_r))) > 0.1  # not a degenerate comparison
    # Gradients: rtol 1e-4 (a backward pass sums over batch and positions); atol from the largest gradient, since
    # some are zero in exact arithmetic (the key bias: softmax ignores a per-row constant) and only rounding remains.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_r))
    for path, g_k in jax.tree_util.tree_leaves_with_path(grads_k):
        g_r = dict(jax.tree_util.tree_leaves_with_path(grads_r))[path]
        np.testing.assert_allclose(np.asarray(g_k, np.float64), np.asarray(g_r, np.float64), rtol=1e-4,
                                   atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path))


def test_padded_encoder_equals_einsum():
    rng = np.random.default_rng(0)
    ids, mask = _ids(rng, 2, 40, [40, 23])  # 40: the glue pads to 128 (kernel block) with invisible keys
    _check(EncoderModel, config_lib.tiny_encoder(), (ids,), dict(input_mask=mask), mask)


def test_causal_decoder_equals_einsum():
    rng = np.random.default_rng(1)
    ids, mask = _ids(rng, 2, 136, [136, 130])  # two key blocks of 128 after padding to 256: the online softmax
    _check(DecoderModel, config_lib.tiny_decoder(max_length=256), (ids,), dict(input_mask=mask), mask,
           output='logits')


def test_packed_decoder_equals_einsum():
    """A packed batch (three segments in a row, then padding; positions restarting per segment): the kernel's
    segment ids are the batch's, so no query sees another example."""
    rng = np.random.default_rng(3)
    segments = np.array([[1] * 15 + [2] * 9 + [3] * 12 + [0] * 4, [1] * 30 + [2] * 10])  # [batch, length]
    positions = np.concatenate([np.arange(n) for n in (15, 9, 12, 4)] + [np.arange(30), np.arange(10)]).reshape(2, 40)
    ids = jnp.asarray(np.where(segments > 0, rng.integers(3, 500, size=(2, 40)), 0))
    real = jnp.asarray(segments > 0)
    _check(DecoderModel, config_lib.tiny_decoder(), (ids,), dict(segment_ids=jnp.asarray(segments),
                                                                positions=jnp.asarray(positions)), real,
           output='logits')


def test_t5_relative_bias_equals_einsum():
    rng = np.random.default_rng(2)
    enc, enc_mask = _ids(rng, 2, 40, [40, 17])
    dec, dec_mask = _ids(rng, 2, 24, [24, 11])
    _check(EncoderDecoderModel, config_lib.tiny_encoder_decoder(), (enc, dec),
           dict(encoder_mask=enc_mask, decoder_mask=dec_mask), dec_mask, output='logits')


def test_flash_attention_scaled_bias_and_mesh():
    """The glue alone, float64 numpy reference: scale with a bias (divided by the scale for the kernel), causal,
    segments, batch x heads split over a (data=2, tensor=2) mesh through shard_map."""
    rng = np.random.default_rng(3)
    b, q, h, d = 4, 20, 2, 8
    query, key, value = (rng.normal(size=s) for s in ((b, q, h, d), (b, h, q, d), (b, h, q, d)))
    bias = rng.normal(size=(1, h, q, q))
    seg = (np.arange(q)[None] < np.array([[20], [15], [9], [20]])).astype(np.int32)
    seg[3, 12:] = 2  # a second segment (packing)
    scores = np.einsum('bqhd,bhkd->bhqk', query, key) * d ** -0.5 + bias
    visible = (seg[:, None, :, None] == seg[:, None, None, :]) & np.tril(np.ones((q, q), bool))
    probs = np.exp(np.where(visible, scores, -np.inf) - np.where(visible, scores, -np.inf).max(-1, keepdims=True))
    expected = np.einsum('bhqk,bhkd->bqhd', probs / probs.sum(-1, keepdims=True), value)
    mesh = sharding.create_mesh(data=2, tensor=2, devices=jax.devices()[:4])
    args = [jnp.asarray(x, jnp.float32) for x in (query, key, value)]
    mask = flash.KernelMask(jnp.asarray(seg), jnp.asarray(seg), causal=True)
    run = jax.jit(lambda q_, k_, v_: flash.flash_attention(q_, k_, v_, mask, bias=jnp.asarray(bias, jnp.float32),
                                                           scale=d ** -0.5))
    with pltpu.force_tpu_interpret_mode():
        plain = run(*args)
        with jax.set_mesh(mesh), sharding.nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
            sharded = run(*args)
    real = seg != 0
    _close(plain, expected, real)
    _close(sharded, expected, real)


def _reference_attention(query, key, value, bias, seg):
    """softmax(q.k + bias, same-segment keys only) . v in float32 jnp: query [b, q, h, d], key/value [b, h, k, d]."""
    scores = jnp.einsum('bqhd,bhkd->bhqk', query, key) + bias
    visible = seg[:, None, :, None] == seg[:, None, None, :]
    probs = jax.nn.softmax(jnp.where(visible, scores, -1e30), axis=-1)
    return jnp.einsum('bhqk,bhkd->bqhd', probs, value)


def test_kernel_gradients_over_several_blocks_and_bfloat16_bias():
    """A 256-token sequence (blocks of 256 keys; the dq pass's 128, plmjax's choice) with padding and a bias:
    outputs and the gradients of queries, keys, values and bias equal autodiff of the float32 reference. A bfloat16
    bias gives the kernel the same values (the same outputs, bit for bit as the float32 bias of those values) and its
    gradient comes back in bfloat16."""
    rng = np.random.default_rng(5)
    b, n, h, d = 2, 256, 1, 8
    query, key, value = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((b, n, h, d), (b, h, n, d),
                                                                               (b, h, n, d)))
    bias = jnp.asarray(rng.normal(size=(1, h, n, n)), jnp.float32)
    seg = jnp.asarray((np.arange(n)[None] < np.array([[n], [200]])).astype(np.int32))
    weights = jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32)
    real = (seg != 0)[..., None, None]

    def loss(attend, q, k, v, bias_):
        return jnp.sum(jnp.where(real, attend(q, k, v, bias_) * weights, 0.0))

    kernel = lambda q, k, v, bias_: flash.flash_attention(q, k, v, flash.KernelMask(seg, seg), bias=bias_)  # noqa
    reference = lambda q, k, v, bias_: _reference_attention(q, k, v, bias_, seg)  # noqa: E731
    grad = lambda attend, bias_: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda *a: loss(attend, *a), argnums=(0, 1, 2, 3)))(query, key, value, bias_)
    half = bias.astype(jnp.bfloat16)
    with INTERPRET():
        out_k, out_half, out_rounded = (jax.jit(kernel)(query, key, value, x) for x in (bias, half,
                                                                                         half.astype(jnp.float32)))
        (_, grads_k), (_, grads_half), (_, grads_rounded) = (grad(kernel, x) for x in (bias, half,
                                                                                       half.astype(jnp.float32)))
    _, grads_r = grad(reference, bias)
    _close(out_k, reference(query, key, value, bias), seg != 0)
    for g_k, g_r in zip(grads_k, grads_r):
        scale = float(jnp.max(jnp.abs(g_r)))
        np.testing.assert_allclose(np.asarray(g_k, np.float64), np.asarray(g_r, np.float64), rtol=1e-4,
                                   atol=1e-6 * scale)
    np.testing.assert_array_equal(np.asarray(out_half), np.asarray(out_rounded))
    assert grads_half[3].dtype == jnp.bfloat16
    # Its gradient is the kernel's per-row bfloat16 ds summed over the batch: the float32 one to bfloat16's precision.
    scale = float(jnp.max(jnp.abs(grads_rounded[3])))
    np.testing.assert_allclose(np.asarray(grads_half[3], np.float64), np.asarray(grads_rounded[3], np.float64),
                               rtol=2 ** -7, atol=2 ** -8 * scale)


def test_errors_and_fallbacks():
    with pytest.raises(ValueError, match='NEZHA'):
        config_lib.nezha_base(attention_kernel='flash')
    with pytest.raises(ValueError, match='attention_kernel'):
        config_lib.tiny_encoder(attention_kernel='splash')
    rng = np.random.default_rng(4)
    ids, _ = _ids(rng, 2, 16, [16, 16])
    reference, kernel = (DecoderModel(c) for c in _pair(config_lib.tiny_decoder()))
    params = jax.jit(reference.init)(jax.random.key(0), ids)
    with pytest.raises(ValueError, match='prefix-LM'):
        kernel.apply(params, ids, prefix_mask=jnp.ones_like(ids).at[:, 8:].set(0))
    with pytest.raises(ValueError, match='attention_dropout_rate'):
        kernel.apply(params, ids, deterministic=False, rngs={'dropout': jax.random.key(2)})
    # Fallbacks to the einsum path (no interpret mode needed: no kernel runs): cached decoding, asking for the
    # attention probabilities.
    cache = kernel.init(jax.random.key(0), ids, decode=True)['cache']
    def step(module):
        return module.apply({**params, 'cache': cache}, ids[:, :5], decode=True, mutable=['cache'])[0]['logits']

    np.testing.assert_array_equal(step(kernel), step(reference))
    probs = lambda m: m.apply(params, ids, mutable=['intermediates'])[1]  # noqa: E731
    assert jax.tree.all(jax.tree.map(np.array_equal, probs(kernel), probs(reference)))
