"""Multi-head dot-product attention (self and cross), its mask helper and the decoding cache.

One attention serves every family: an optional additive bias (T5's relative bias), optional Shaw-style relative
key/value embeddings (NEZHA), optional rotary positions, score scaling on or off (T5 folds it into the init) and
a key/value cache for autoregressive decoding (flax 'cache' collection, as flax's examples/wmt).

Intermediates (the 'intermediates' collection, when the caller makes it mutable; plmjax.models.intermediates):
'attention_scores' [batch, heads, q, k] in float32 (or wider): the scaled scores plus the bias, with masked keys
set to jnp.finfo(float32).min, as Hugging Face's `attention_scores + extended_attention_mask` (which adds that
minimum: the sum rounds to it), the scores TinyBERT distills; 'attention_probs': their softmax, before dropout.

Decoding: `SelfAttentionContext` owns one `cache_index` per stack. Initialize with a full-length input and
`decode=True` (this creates zero caches of that length); then every call with `decode=True` feeds the next
chunk of n >= 1 tokens (a prompt, then one token a step): positions i..i+n-1 attend to cached keys 0..i+n-1.
"""
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers import dropout, flash, matmul, position
from plmjax.layers.dense import Projection

Initializer = Callable[..., jax.Array]


def make_attention_mask(*, key_mask: jax.Array | None = None, causal: bool = False,
                        query_positions: jax.Array | None = None, key_positions: jax.Array | None = None,
                        query_prefix: jax.Array | None = None, key_prefix: jax.Array | None = None,
                        query_segment_ids: jax.Array | None = None, key_segment_ids: jax.Array | None = None
                        ) -> jax.Array | None:
    """Boolean [batch or 1, 1, query, key], True where the query may attend to the key; None if nothing is masked.

    key_mask: [batch, key], nonzero for real keys (padding mask). causal: a query sees keys at positions <= its own
    (needs query_positions [query] and key_positions [key]). query_prefix [batch, query], key_prefix [batch, key]:
    prefix LM, nonzero on the prefix; prefix positions also see each other bidirectionally.
    query_segment_ids [batch, query], key_segment_ids [batch, key]: packed examples (seqio's `*_segment_ids`, 0 on
    padding); a query sees only keys of its own segment, so no attention crosses from one example to another.
    """
    mask = None

    def combine(new):
        return new if mask is None else jnp.logical_and(mask, new)

    if causal:
        visible = key_positions[None, :] <= query_positions[:, None]  # [query, key]
        visible = visible[None, None]  # [1, 1, query, key]
        if query_prefix is not None:
            both_in_prefix = jnp.logical_and(query_prefix[:, None, :, None] != 0, key_prefix[:, None, None, :] != 0)
            visible = jnp.logical_or(visible, both_in_prefix)  # [batch, 1, query, key]
        mask = combine(visible)
    if key_mask is not None:
        mask = combine((key_mask != 0)[:, None, None, :])  # [batch, 1, 1, key]
    if query_segment_ids is not None:
        mask = combine(query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :])  # [batch, 1, q, k]
    return mask


class AttentionContext(NamedTuple):
    """What the layers of one stack share about self-attention: positions, mask, and the cache write index."""
    positions: jax.Array  # [query] positions of the inputs, or [batch, query] per-row positions (ragged prompts)
    key_positions: jax.Array  # [key]
    mask: jax.Array | None  # [batch or 1, 1, query, key] bool
    cache_index: jax.Array | None  # where this chunk's keys go in the cache (decoding only)
    segment_ids: jax.Array | None = None  # [batch, query] packed examples' segment ids (0: padding); None unpacked
    kernel_mask: flash.KernelMask | None = None  # the mask as the flash kernel takes it; None: it has no such form


class SelfAttentionContext(nn.Module):
    """Positions and the self-attention mask of one stack, and in decoding the cache index and cached masks."""
    causal: bool

    @nn.compact
    def __call__(self, input_ids: jax.Array, *, input_mask: jax.Array | None = None,
                 prefix_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, decode: bool = False) -> AttentionContext:
        """positions: [batch, length] per-row position ids for the position embeddings (a left-padded prompt's
        first real token at 0, as `transformers`' position_ids; a packed row's positions restarting at 0 in each
        segment); the mask still follows the input (cache) order. segment_ids: [batch, length] of a packed batch
        (0: padding): attention stays inside each segment (not with decode)."""
        if segment_ids is not None and decode:
            raise ValueError('Packed inputs (segment_ids) are for training and scoring, not cached decoding.')
        context = self._context(input_ids, input_mask, prefix_mask, decode, segment_ids)
        return context if positions is None else context._replace(positions=positions)

    def _context(self, input_ids, input_mask, prefix_mask, decode, segment_ids=None) -> AttentionContext:
        batch, length = input_ids.shape
        if decode and self.has_variable('cache', 'cache_index'):
            return self._decode_step(batch, length, input_mask, prefix_mask)
        if decode:  # initialization: the input's length is the cache length
            self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
            self.variable('cache', 'key_mask', jnp.zeros, (batch, length), jnp.bool_)
            self.variable('cache', 'key_prefix', jnp.zeros, (batch, length), jnp.bool_)
        positions = jnp.arange(length)
        mask = make_attention_mask(key_mask=input_mask, causal=self.causal, query_positions=positions,
                                   key_positions=positions, query_prefix=prefix_mask, key_prefix=prefix_mask,
                                   query_segment_ids=segment_ids, key_segment_ids=segment_ids)
        kernel_ids = flash.segment_ids_from_mask(input_mask) if segment_ids is None else segment_ids
        # the prefix-LM mask has no kernel form
        kernel_mask = None if prefix_mask is not None else flash.KernelMask(kernel_ids, kernel_ids, self.causal)
        return AttentionContext(positions, positions, mask, None, segment_ids, kernel_mask)

    def _decode_step(self, batch, length, input_mask, prefix_mask) -> AttentionContext:
        index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
        key_mask = self.variable('cache', 'key_mask', jnp.zeros, (batch, length), jnp.bool_)
        key_prefix = self.variable('cache', 'key_prefix', jnp.zeros, (batch, length), jnp.bool_)
        start = index.value
        chunk_mask = jnp.ones((batch, length), jnp.bool_) if input_mask is None else input_mask != 0
        chunk_prefix = jnp.zeros((batch, length), jnp.bool_) if prefix_mask is None else prefix_mask != 0
        key_mask.value = jax.lax.dynamic_update_slice(key_mask.value, chunk_mask, (0, start))
        key_prefix.value = jax.lax.dynamic_update_slice(key_prefix.value, chunk_prefix, (0, start))
        index.value = start + length
        positions = start + jnp.arange(length)
        key_positions = jnp.arange(key_mask.value.shape[1])
        mask = make_attention_mask(key_mask=key_mask.value, causal=self.causal, query_positions=positions,
                                   key_positions=key_positions, query_prefix=chunk_prefix, key_prefix=key_prefix.value)
        return AttentionContext(positions, key_positions, mask, start)


def _prepend_kv(extra_kv, key, value, mask, bias, relative_kv):
    """Keys/values [batch, heads, k, kv] -> [batch, heads, n + k, kv] with `extra_kv` ([batch or 1, n, heads, kv])
    first; the mask, bias and relative embeddings grow by n key columns that every query sees with nothing added
    (True, 0, 0)."""
    extra = [jnp.swapaxes(jnp.broadcast_to(x, (key.shape[0],) + x.shape[1:]).astype(key.dtype), 1, 2)
             for x in extra_kv]  # [batch, heads, n, kv]
    n = extra[0].shape[2]
    key, value = jnp.concatenate([extra[0], key], axis=2), jnp.concatenate([extra[1], value], axis=2)

    def left_pad_keys(x, fill, axis):  # the key axis: k -> n + k
        return None if x is None else jnp.pad(x, [(n, 0) if i == axis % x.ndim else (0, 0) for i in range(x.ndim)],
                                              constant_values=fill)

    mask = left_pad_keys(mask, True, -1)  # [batch or 1, 1, q, n + k]
    bias = left_pad_keys(bias, 0, -1)  # [batch or 1, heads, q, n + k]
    relative_kv = left_pad_keys(relative_kv, 0, 1)  # [q, n + k, kv]
    return key, value, mask, bias, relative_kv


class MultiHeadAttention(nn.Module):
    """Multi-head attention; queries are [batch, length, heads, kv], keys and values (and their decoding cache)
    [batch, heads, length, kv]: the layout of the score and output products, so that decoding never transposes
    the cache."""
    num_heads: int
    head_dim: int
    use_bias: bool = True
    scale_scores: bool = True  # scores / sqrt(head_dim)
    dropout_rate: float = 0.0  # on the attention probabilities
    rotary_base: float = 10000.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None
    kernel_init: Initializer = nn.initializers.normal(0.02)
    query_kernel_init: Initializer | None = None
    out_kernel_init: Initializer | None = None
    kernel: str = 'einsum'  # one of flash.KERNELS (TransformerConfig.attention_kernel; `_use_flash`)

    @nn.compact
    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *, mask: jax.Array | None = None,
                 bias: jax.Array | None = None, relative_kv: jax.Array | None = None,
                 rotary_positions: jax.Array | None = None, cache_index: jax.Array | None = None,
                 decode: bool = False, deterministic: bool = True,
                 extra_kv: tuple[jax.Array, jax.Array] | None = None, fixed_kv: bool = False,
                 kernel_mask: flash.KernelMask | None = None) -> jax.Array:
        """inputs_q [batch, q, emb], inputs_kv [batch, k, emb] (None: self-attention) -> [batch, q, emb].

        mask: bool [batch or 1, 1 or heads, q, k]. bias: float [batch or 1, heads, q, k], added to the scores.
        relative_kv: [q, k, kv] relative embeddings added to the keys and values (NEZHA).
        rotary_positions: [q] positions for rotary embeddings of q and k (self-attention).
        decode: write this chunk's k/v into the cache at cache_index and attend to the whole cache.
        extra_kv: (keys, values) [batch or 1, n, heads, kv] put before the keys/values (after their projection,
          rotary and cache), visible to every query, with no bias or relative embedding: prefix tuning's prefixes.
        fixed_kv: the keys/values do not change across decoding steps (cross-attention over the encoder output).
          With decode=True they live in the cache as 'cross_key'/'cross_value' [batch, heads, k, kv]: computed from
          inputs_kv and stored when inputs_kv is given (the prefill, or `init`), read back without any projection
          when inputs_kv is None (every later step). Without decode, inputs_kv is required and nothing is cached.
        kernel_mask: `mask` as the flash kernel takes it (causal flag, segment ids), for kernel='flash'.
        """
        if fixed_kv and inputs_kv is None and not decode:
            raise ValueError('fixed_kv attention needs inputs_kv, except in cached decoding (decode=True), where '
                             'the keys/values stored in the cache at the prefill are read.')
        if fixed_kv and rotary_positions is not None:
            raise ValueError('fixed_kv (cross-attention) keys/values take no rotary positions.')
        qkv = functools.partial(Projection, features=(self.num_heads, self.head_dim),
                                kernel_axes=('embed', 'heads', 'kv'), use_bias=self.use_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype, matmul_dtype=self.matmul_dtype)
        heads_axes = ('batch', 'length', 'heads', 'kv')
        query = qkv(kernel_init=self.query_kernel_init or self.kernel_init, name='query')(inputs_q)
        query = nn.with_logical_constraint(query, heads_axes)
        if fixed_kv and decode and inputs_kv is None:  # a decoding step: the prefill's keys/values, as they are
            key, value = self._read_fixed_cache()
        else:
            if inputs_kv is None:
                inputs_kv = inputs_q
            key = qkv(kernel_init=self.kernel_init, name='key')(inputs_kv)
            value = qkv(kernel_init=self.kernel_init, name='value')(inputs_kv)
            key, value = (nn.with_logical_constraint(x, heads_axes) for x in (key, value))
            if rotary_positions is not None:
                query = position.apply_rotary(query, rotary_positions, self.rotary_base)
                key = position.apply_rotary(key, rotary_positions, self.rotary_base)
            key, value = (jnp.swapaxes(x, 1, 2) for x in (key, value))  # [batch, heads, k, kv]
            if decode and fixed_kv:
                self._write_fixed_cache(key, value)
            elif decode:
                key, value = self._update_cache(key, value, cache_index)
        if self._use_flash(decode, extra_kv, relative_kv, kernel_mask, deterministic):
            operands = [x.astype(self.matmul_dtype or x.dtype) for x in (query, key, value)]
            out = flash.flash_attention(*operands, kernel_mask, bias=bias,
                                        scale=self.head_dim ** -0.5 if self.scale_scores else 1.0).astype(self.dtype)
        else:
            out = self._einsum_attention(query, key, value, mask, bias, relative_kv, decode and not fixed_kv,
                                         deterministic, extra_kv)
        out = nn.with_logical_constraint(out, heads_axes)
        out = Projection(features=(inputs_q.shape[-1],), kernel_axes=('heads', 'kv', 'embed'), num_input_axes=2,
                         use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                         matmul_dtype=self.matmul_dtype, kernel_init=self.out_kernel_init or self.kernel_init,
                         name='out')(out)
        return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))

    def _use_flash(self, decode, extra_kv, relative_kv, kernel_mask, deterministic) -> bool:
        """Whether this call runs the flash kernel. With kernel='flash', three cases fall back to the einsum path
        on purpose: cached decoding (chunks of one token against the cache), prefix tuning's extra_kv (keys every
        query sees, before the causal diagonal) and a mutable 'intermediates' collection (the caller asks for the
        attention scores/probs, which the kernel never forms). Three raise: NEZHA's relative keys/values, a mask
        without kernel form (prefix LM) and attention dropout in training."""
        if self.kernel not in flash.KERNELS:
            raise ValueError(f'MultiHeadAttention.kernel={self.kernel!r} is not one of {flash.KERNELS}.')
        if self.kernel == 'einsum' or decode or extra_kv is not None or self.is_mutable_collection('intermediates'):
            return False
        fix = 'or set `TransformerConfig.attention_kernel = \'einsum\'` (gin: `<preset>.attention_kernel = "einsum"`).'
        if relative_kv is not None:
            raise ValueError(f'The flash attention kernel cannot add NEZHA\'s relative keys/values: {fix}')
        if kernel_mask is None:
            raise ValueError(f'This attention\'s mask has no flash-kernel form (causal + segment ids): a prefix-LM '
                             f'mask, or a caller that passed only a boolean mask. Drop the prefix mask {fix}')
        if self.dropout_rate > 0 and not deterministic:
            raise ValueError(f'The flash attention kernel has no attention dropout, and this is a training call with '
                             f'attention_dropout_rate={self.dropout_rate}: set `<preset>.attention_dropout_rate = 0.0` '
                             f'(MaxText trains without it), {fix}')
        return True

    def _einsum_attention(self, query, key, value, mask, bias, relative_kv, self_cache, deterministic, extra_kv):
        """The reference path: scores [batch, heads, q, k], mask, softmax, dropout -> context [batch, q, heads, kv]."""
        if extra_kv is not None:
            key, value, mask, bias, relative_kv = _prepend_kv(extra_kv, key, value, mask, bias, relative_kv)

        # Decoding reads the self-attention cache in the compute dtype: rounding the whole cache for each step's
        # small products would cost more than the products (and XLA:CPU updates a bf16 cache through float32, not
        # in place). Cross-attention (fixed_kv) multiplies as without the cache, so its numbers do not change.
        matmul_dtype = None if self_cache else self.matmul_dtype
        scores = self.score_product(query, key, matmul_dtype)  # [batch, heads, q, k]
        if relative_kv is not None:
            # NEZHA's relative products stay in the compute dtype: XLA:CPU folds their transposes into a bf16
            # product layout it has no kernel for (tests/layers/test_matmul.py).
            scores = scores + jnp.einsum('bqhd,qkd->bhqk', query, relative_kv.astype(self.dtype))
        scores = scores.astype(jnp.promote_types(self.dtype, jnp.float32))  # softmax in float32 at least
        if self.scale_scores:
            scores = scores * self.head_dim ** -0.5
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        self.sow('intermediates', 'attention_scores', scores)  # after scaling, bias and mask; before softmax
        probs = jax.nn.softmax(scores, axis=-1)
        self.sow('intermediates', 'attention_probs', probs)  # before dropout
        probs = probs.astype(self.dtype)
        probs = dropout.Dropout(self.dropout_rate)(probs, deterministic=deterministic)

        out = self.context_product(probs, value, matmul_dtype)  # [batch, q, heads, kv]
        if relative_kv is not None:
            out = out + jnp.einsum('bhqk,qkd->bqhd', probs, relative_kv.astype(self.dtype))
        return out

    # The two products of attention are methods so that a flax method interceptor can reach their inputs
    # (TernaryBERT's 8-bit Q, K, V and attention probabilities: compression.quantize.activation_interceptor).
    def score_product(self, query: jax.Array, key: jax.Array, matmul_dtype: Any = None) -> jax.Array:
        """query [batch, q, heads, kv] . key [batch, heads, k, kv] -> raw scores [batch, heads, q, k]."""
        return matmul.einsum('bqhd,bhkd->bhqk', query, key, matmul_dtype=matmul_dtype)

    def context_product(self, probs: jax.Array, value: jax.Array, matmul_dtype: Any = None) -> jax.Array:
        """probs [batch, heads, q, k] . value [batch, heads, k, kv] -> context [batch, q, heads, kv]."""
        return matmul.einsum('bhqk,bhkd->bqhd', probs, value, matmul_dtype=matmul_dtype)

    def _update_cache(self, key: jax.Array, value: jax.Array, cache_index: jax.Array | None):
        """Store this chunk's [batch, heads, n, kv] keys/values; return the whole cache (after initialization)."""
        initialized = self.has_variable('cache', 'cached_key')
        cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
        if not initialized:  # the init pass sets the cache's shape and attends over its own inputs
            return key, value
        start = (0, 0, cache_index, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                                          start)
        return cached_key.value, cached_value.value

    def _write_fixed_cache(self, key: jax.Array, value: jax.Array):
        """Store the fixed [batch, heads, k, kv] keys/values (at `init` this creates the cache leaves)."""
        for name, x in (('cross_key', key), ('cross_value', value)):
            variable = self.variable('cache', name, jnp.zeros, x.shape, x.dtype)
            variable.value = x.astype(variable.value.dtype)

    def _read_fixed_cache(self):
        if not self.has_variable('cache', 'cross_key'):
            raise ValueError('This decoding step has no inputs_kv and the cache holds no cross_key/cross_value: '
                             'make the cache with init(..., decode=True) and run the prefill with the encoder '
                             'output first.')
        return self.get_variable('cache', 'cross_key'), self.get_variable('cache', 'cross_value')
