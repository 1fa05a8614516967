"""Norms, activations and the MLP against their closed forms computed in numpy."""
import math
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax.layers import mlp, norms  # noqa: E402


def _random_params(variables, seed=1):
    """Replace every parameter with a random draw, so that scales and biases are not the trivial 1 and 0."""
    leaves, tree = jax.tree_util.tree_flatten(nn.meta.unbox(variables))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize('epsilon', [1e-12, 0.5])
def test_layer_norm_matches_numpy(epsilon):
    x = np.random.RandomState(0).randn(2, 5, 16).astype(np.float32) * 3 + 1
    layer = norms.make_norm('layernorm', epsilon=epsilon)
    variables = _random_params(layer.init(jax.random.key(0), x))
    y = layer.apply(variables, x)
    scale, bias = (np.asarray(variables['params'][k]) for k in ('scale', 'bias'))
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + epsilon) * scale + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('epsilon', [1e-6, 0.5])
def test_rms_norm_matches_t5_formula(epsilon):
    """T5LayerNorm: weight * x / sqrt(mean(x^2) + eps): no mean subtraction, no bias."""
    x = np.random.RandomState(0).randn(2, 5, 16).astype(np.float32) * 3 + 1
    layer = norms.make_norm('rmsnorm', epsilon=epsilon)
    variables = _random_params(layer.init(jax.random.key(0), x))
    assert set(variables['params']) == {'scale'}
    y = layer.apply(variables, x)
    expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + epsilon) * np.asarray(variables['params']['scale'])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_rms_norm_reduces_in_float32_for_bfloat16_inputs():
    """With bfloat16 compute the variance is still reduced in float32 (T5 casts to float32 for it)."""
    layer = norms.make_norm('rmsnorm', epsilon=1e-6, dtype=jnp.bfloat16)
    x = jnp.ones((1, 3, 8), jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v, x: layer.apply(v, x))(variables, x)
    reductions = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == 'reduce_sum']
    assert reductions and all(eqn.invars[0].aval.dtype == jnp.float32 for eqn in reductions)
    assert layer.apply(variables, x).dtype == jnp.bfloat16


def test_norm_params_have_embed_axis_and_unknown_norm_fails():
    variables = norms.make_norm('layernorm', epsilon=1e-5).init(jax.random.key(0), jnp.ones((1, 4)))
    assert variables['params']['scale'].names == ('embed',) and variables['params']['bias'].names == ('embed',)
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        norms.make_norm('batchnorm', epsilon=1e-5)


def test_activations_match_their_formulas():
    x = np.linspace(-6, 6, 101).astype(np.float64)
    erf = np.vectorize(math.erf)
    expected = {
        'relu': np.maximum(x, 0),
        'gelu': 0.5 * x * (1 + erf(x / math.sqrt(2))),  # exact GELU (BERT, BART, PanGu-α)
        'gelu_new': 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),  # GPT-2, T5 v1.1
        'silu': x / (1 + np.exp(-x)),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(mlp.get_activation(name)(jnp.asarray(x, jnp.float32)), value, atol=2e-6,
                                   err_msg=name)
    # The two GELUs differ by more than the tolerance: the test tells them apart.
    assert np.abs(expected['gelu'] - expected['gelu_new']).max() > 1e-4
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        mlp.get_activation('swish')


@pytest.mark.parametrize('gated', [False, True])
def test_mlp_matches_numpy(gated):
    x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
    layer = mlp.Mlp(mlp_dim=16, activation='gelu_new' if gated else 'relu', gated=gated)
    variables = layer.init(jax.random.key(0), x)
    axes = jax.tree_util.tree_map(lambda p: p.names, variables['params'], is_leaf=lambda p: hasattr(p, 'names'))
    params = _random_params(variables)['params']
    p = {name: {k: np.asarray(v) for k, v in d.items()} for name, d in params.items()}
    if gated:
        assert axes['wi_0']['kernel'] == ('embed', 'mlp') and axes['wo']['kernel'] == ('mlp', 'embed')
        h0 = x @ p['wi_0']['kernel'] + p['wi_0']['bias']
        h1 = x @ p['wi_1']['kernel'] + p['wi_1']['bias']
        h = 0.5 * h0 * (1 + np.tanh(math.sqrt(2 / math.pi) * (h0 + 0.044715 * h0 ** 3))) * h1
    else:
        assert axes['wi']['kernel'] == ('embed', 'mlp') and axes['wi']['bias'] == ('mlp',)
        h = np.maximum(x @ p['wi']['kernel'] + p['wi']['bias'], 0)
    expected = h @ p['wo']['kernel'] + p['wo']['bias']
    np.testing.assert_allclose(layer.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-5)


def test_mlp_dropout_uses_the_dropout_rng_only_when_not_deterministic():
    x = jnp.ones((2, 3, 8))
    layer = mlp.Mlp(mlp_dim=64, dropout_rate=0.5)
    variables = layer.init(jax.random.key(0), x)
    a = layer.apply(variables, x)
    np.testing.assert_array_equal(a, layer.apply(variables, x, deterministic=True))
    b = layer.apply(variables, x, deterministic=False, rngs={'dropout': jax.random.key(1)})
    c = layer.apply(variables, x, deterministic=False, rngs={'dropout': jax.random.key(2)})
    assert not np.allclose(a, b) and not np.allclose(b, c)
