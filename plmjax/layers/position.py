"""Position information: sinusoidal and rotary (closed forms), T5's bucketed relative attention bias and NEZHA's
functional relative positions. Learned absolute positions are plain tables (`embedding.table_embedder`).

All functions take integer positions, so they serve a full forward pass (positions 0..l-1) and one step of
cached decoding (positions i..i+n-1 against keys 0..L-1) alike.
"""
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoidal_embedding(positions: jax.Array, dim: int, max_timescale: float = 10000.0,
                         dtype=jnp.float32) -> jax.Array:
    """Vaswani et al.'s table: [..., 2i] = sin(p / T^(2i/dim)), [..., 2i+1] = cos(p / T^(2i/dim)).

    Computed in `dtype` (float32, or float64 for numerical checks)."""
    if dim % 2:
        raise ValueError(f'sinusoidal embeddings need an even dimension, got {dim}.')
    div_term = jnp.exp(jnp.arange(0, dim, 2, dtype=dtype) * (-math.log(max_timescale) / dim))  # [dim/2]
    angles = positions[..., None].astype(dtype) * div_term  # [..., dim/2]
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., dim/2, 2]
    return table.reshape(*positions.shape, dim)  # interleaved sin, cos


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al.), rotate-half layout as GPT-NeoX/LLaMA.

    x: [batch, length, heads, kv]; positions: [length] or [batch, length]. Feature pairs (i, i + kv/2) are rotated by the angle
    position * base^(-2i/kv), so q.k after rotation depends only on the positions' difference.
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1])  # [kv/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [(batch,) length, kv/2]
    sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]  # [(batch,) length, 1, kv/2]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def t5_relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool, num_buckets: int,
                                max_distance: int) -> jax.Array:
    """T5's bucket of relative_position = key_position - query_position (Mesh TensorFlow's definition).

    Half the buckets (per direction when bidirectional) hold exact distances 0..max_exact-1, the rest grow
    logarithmically up to max_distance; farther distances share the last bucket. A causal (unidirectional) bias
    only distinguishes distances to earlier keys; later keys fall in bucket 0.
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, if_large)


class T5RelativePositionBias(nn.Module):
    """Learned per-head scalar bias per relative-position bucket, added to the attention scores (T5)."""
    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    embedding_init: Callable[..., jax.Array] = nn.initializers.normal(1.0)
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32  # of the bias: the compute dtype, as t5x's RelativePositionBiases(dtype=...)

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """[query], [key] integer positions -> [1, heads, query, key] bias in `dtype` (the scores it is added to are
        float32 or wider: a bfloat16 bias rounds its values only, and halves what the flash kernel reads and writes
        for it)."""
        relative_position = key_positions[None, :] - query_positions[:, None]  # [query, key]
        buckets = t5_relative_position_bucket(relative_position, bidirectional=self.bidirectional,
                                              num_buckets=self.num_buckets, max_distance=self.max_distance)
        table = self.param('embedding', nn.with_logical_partitioning(self.embedding_init, (None, 'heads')),
                           (self.num_buckets, self.num_heads), self.param_dtype)  # [buckets, heads], as HF stores it
        values = jnp.take(table, buckets, axis=0)  # [query, key, heads]
        return jnp.transpose(values, (2, 0, 1))[None].astype(self.dtype)


def nezha_relative_positions(query_positions: jax.Array, key_positions: jax.Array, *, max_relative_position: int,
                             depth: int, dtype=jnp.float32) -> jax.Array:
    """NEZHA's functional relative positions: [query, key, depth] in `dtype`, fixed (not trained).

    Entry (i, j) is row clip(j - i, -k, k) + k of a sinusoid table with 2k + 1 rows, as Hugging Face's
    NezhaRelativePositionsEncoding builds it. The same tensor is used for the keys (scores += q_i . a_ij) and the
    values (out_i += sum_j p_ij a_ij), Shaw et al.'s relative attention.
    """
    distance = key_positions[None, :] - query_positions[:, None]  # [query, key]
    index = jnp.clip(distance, -max_relative_position, max_relative_position) + max_relative_position
    return sinusoidal_embedding(index, depth, dtype=dtype)
