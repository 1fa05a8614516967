"""The attention mask helper against hand-written masks; MultiHeadAttention against a numpy reference."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax.layers import attention  # noqa: E402


def test_padding_mask():
    mask = attention.make_attention_mask(key_mask=jnp.array([[1, 1, 0], [1, 0, 0]]))
    assert mask.shape == (2, 1, 1, 3)
    np.testing.assert_array_equal(mask[:, 0, 0], [[True, True, False], [True, False, False]])
    assert attention.make_attention_mask() is None


def test_causal_mask_with_padding():
    positions = jnp.arange(4)
    mask = attention.make_attention_mask(key_mask=jnp.array([[1, 1, 1, 0]]), causal=True, query_positions=positions,
                                         key_positions=positions)
    np.testing.assert_array_equal(mask[0, 0], [[1, 0, 0, 0],
                                               [1, 1, 0, 0],
                                               [1, 1, 1, 0],
                                               [1, 1, 1, 0]])


def test_prefix_lm_mask_is_bidirectional_on_the_prefix_only():
    positions = jnp.arange(5)
    prefix = jnp.array([[1, 1, 1, 0, 0]])
    mask = attention.make_attention_mask(causal=True, query_positions=positions, key_positions=positions,
                                         query_prefix=prefix, key_prefix=prefix)
    np.testing.assert_array_equal(mask[0, 0], [[1, 1, 1, 0, 0],
                                               [1, 1, 1, 0, 0],
                                               [1, 1, 1, 0, 0],
                                               [1, 1, 1, 1, 0],
                                               [1, 1, 1, 1, 1]])


def test_causal_mask_of_a_decoding_chunk():
    """Queries at positions 2, 3 against a cache of 5 keys: each sees the keys up to its own position."""
    mask = attention.make_attention_mask(causal=True, query_positions=jnp.array([2, 3]), key_positions=jnp.arange(5))
    np.testing.assert_array_equal(mask[0, 0], [[1, 1, 1, 0, 0],
                                               [1, 1, 1, 1, 0]])


def _reference_attention(params, xq, xkv, *, mask, bias, relative_kv, scale):
    """Multi-head attention written out in numpy: softmax(q k^T [+ q a^T] * s + bias) (v [+ a])."""
    p = {name: {k: np.asarray(v) for k, v in d.items()} for name, d in params.items()}
    q = np.einsum('bte,ehd->bthd', xq, p['query']['kernel']) + p['query']['bias']
    k = np.einsum('bte,ehd->bthd', xkv, p['key']['kernel']) + p['key']['bias']
    v = np.einsum('bte,ehd->bthd', xkv, p['value']['kernel']) + p['value']['bias']
    scores = np.einsum('bqhd,bkhd->bhqk', q, k)
    if relative_kv is not None:
        scores = scores + np.einsum('bqhd,qkd->bhqk', q, relative_kv)
    scores = scores * (q.shape[-1] ** -0.5 if scale else 1.0)
    if bias is not None:
        scores = scores + bias
    scores = np.where(mask, scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum('bhqk,bkhd->bqhd', probs, v)
    if relative_kv is not None:
        out = out + np.einsum('bhqk,qkd->bqhd', probs, relative_kv)
    return np.einsum('bqhd,hde->bqe', out, p['out']['kernel']) + p['out']['bias']


@pytest.mark.parametrize('variant', ['scaled', 'unscaled_with_bias', 'relative_kv', 'cross'])
def test_attention_matches_numpy(variant):
    rng = np.random.RandomState(0)
    batch, lq, lk, emb, heads, kv = 2, 4, 4 if variant != 'cross' else 6, 12, 3, 5
    xq = rng.randn(batch, lq, emb).astype(np.float32)
    xkv = xq if variant != 'cross' else rng.randn(batch, lk, emb).astype(np.float32)
    key_mask = np.ones((batch, lk), bool)
    key_mask[1, -2:] = False
    mask = np.asarray(attention.make_attention_mask(key_mask=jnp.asarray(key_mask)))
    bias = rng.randn(1, heads, lq, lk).astype(np.float32) if variant == 'unscaled_with_bias' else None
    relative_kv = rng.randn(lq, lk, kv).astype(np.float32) if variant == 'relative_kv' else None
    layer = attention.MultiHeadAttention(num_heads=heads, head_dim=kv, scale_scores=variant != 'unscaled_with_bias',
                                         kernel_init=nn.initializers.normal(0.5))
    inputs_kv = None if variant != 'cross' else jnp.asarray(xkv)
    variables = layer.init(jax.random.key(0), jnp.asarray(xq), inputs_kv)
    params = jax.tree_util.tree_map(lambda x: x + 0.1, nn.meta.unbox(variables['params']))  # nonzero biases
    actual = layer.apply({'params': params}, jnp.asarray(xq), inputs_kv, mask=mask, bias=bias,
                         relative_kv=None if relative_kv is None else jnp.asarray(relative_kv))
    expected = _reference_attention(params, xq, xkv, mask=mask, bias=bias, relative_kv=relative_kv,
                                    scale=variant != 'unscaled_with_bias')
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_attention_parameter_axes():
    variables = attention.MultiHeadAttention(num_heads=2, head_dim=4).init(jax.random.key(0), jnp.ones((1, 3, 8)))
    names = jax.tree_util.tree_map(lambda p: p.names, variables['params'], is_leaf=lambda p: hasattr(p, 'names'))
    assert names['query'] == {'kernel': ('embed', 'heads', 'kv'), 'bias': ('heads', 'kv')}
    assert names['out'] == {'kernel': ('heads', 'kv', 'embed'), 'bias': ('embed',)}


def test_attention_dropout_needs_the_dropout_rng_and_is_off_when_deterministic():
    layer = attention.MultiHeadAttention(num_heads=2, head_dim=4, dropout_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    variables = layer.init(jax.random.key(0), x)
    deterministic = layer.apply(variables, x)
    dropped = layer.apply(variables, x, deterministic=False, rngs={'dropout': jax.random.key(3)})
    assert not np.allclose(deterministic, dropped)
    with pytest.raises(Exception, match='dropout'):
        layer.apply(variables, x, deterministic=False)
