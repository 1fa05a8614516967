"""16-bit dropout: the drop rate and unbiasedness it promises, flax's calling convention, determinism per key."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax.layers import dropout


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_rate_and_unbiased_mean(rate):
    x = jnp.full((64, 12, 128, 127), 2.0)  # odd last axis: the halves are trimmed
    y = np.asarray(dropout.Dropout(rate).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)}))
    keep_prob = 1 - round(rate * 2 ** 16) / 2 ** 16
    dropped = np.mean(y == 0)
    n = y.size
    assert abs(dropped - (1 - keep_prob)) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / n)  # 5 sigma
    np.testing.assert_allclose(y[y != 0], 2.0 / keep_prob, rtol=1e-6)
    assert abs(y.mean() - 2.0) < 5 * 2.0 / keep_prob * np.sqrt(keep_prob * (1 - keep_prob) / n)
    # Both 16-bit halves of a word decide independently: neighbours are not correlated.
    kept = (y != 0).reshape(-1, 127)
    assert abs(np.corrcoef(kept[:, :63].ravel(), kept[:, 64:127].ravel())[0, 1]) < 0.01


def test_deterministic_zero_rate_and_keys():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    layer = dropout.Dropout(0.3)
    assert (layer.apply({}, x, deterministic=True) == x).all()
    assert (dropout.Dropout(0.0).apply({}, x, deterministic=False) == x).all()
    assert (dropout.Dropout(1.0).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)}) == 0).all()
    run = lambda seed: layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(seed)})  # noqa: E731
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))
    assert dropout.Dropout(0.5).apply({}, jnp.float32(3.0), deterministic=False,
                                      rngs={'dropout': jax.random.key(0)}).shape == ()


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
def test_the_same_masks_with_the_last_axis_sharded():
    """The MLP's hidden activations shard their last axis ('mlp' over 'tensor'): the masks do not change, since
    jax.random's bits do not depend on the sharding (partitionable threefry)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('data', 'tensor'))
    key = jax.random.key(3)
    shape = (4, 8, 40)  # every axis divisible by the mesh axes that shard it
    mask = lambda k: dropout.keep_mask(k, 0.1, shape)[0]  # noqa: E731
    expected = np.asarray(jax.jit(mask)(key))
    for spec in (PartitionSpec(None, None, 'tensor'), PartitionSpec('data', None, 'tensor'),
                 PartitionSpec('data', 'tensor', None)):
        sharded = jax.jit(mask, out_shardings=NamedSharding(mesh, spec))(key)
        np.testing.assert_array_equal(np.asarray(sharded), expected)
