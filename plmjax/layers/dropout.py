"""Dropout with 16-bit decisions: half the random bits of `flax.linen.Dropout`.

On CPU, threefry random bits are a large part of a training step (BERT-base draws ~38M dropout decisions a
step). flax draws one 32-bit word per element (a float32 uniform); here each 32-bit word gives two elements a
16-bit uniform, so the drop probability is rate rounded to a multiple of 2^-16 (0.1 -> 0.100006), and kept
values are scaled by 1 / (1 - that probability), so the layer is unbiased (E[output] = input) exactly.
Words are split along the last axis. That axis can be sharded (the MLP's hidden activations shard 'mlp' over
'tensor'); the masks are still the same on any mesh, because jax.random's bits are a function of the key and the
global shape only, not of the sharding (tests/layers/test_dropout.py; with partitionable threefry, jax's
default, each device draws just its own words).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

_LEVELS = 2 ** 16


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
    """(bool mask, keep probability): True with probability 1 - round(rate * 2^16) / 2^16."""
    threshold = round(rate * _LEVELS)
    last = shape[-1]
    words = jax.random.bits(key, shape[:-1] + ((last + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :last]  # [..., last] in [0, 2^16)
    return halves >= threshold, 1.0 - threshold / _LEVELS


class Dropout(nn.Module):
    """`nn.Dropout(rate)(x, deterministic)` with 16-bit decisions (the 'dropout' rng collection)."""
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep, keep_prob = keep_mask(self.make_rng('dropout'), self.rate, x.shape or (1,))
        return jnp.where(keep.reshape(x.shape), x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
