"""Decoding's weights layout and cache (docs/interfaces.md), for `DecoderModel` and `EncoderDecoderModel`.

Decoding reads its weights in a layout of its own (`prepare`), the 'decoding_weights' collection: every
projection's kernel as [out..., in...] in the dtype of its products, and with `config.matmul_dtype` the
embedding tables rounded to it (why: docs/performance.md, "Decoding"). `prepare` once and pass its
`DecodingWeights` to decode many inputs, or pass the params and every call prepares them. The cache holds
keys, values, masks and indices only.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers.dense import DECODING_WEIGHTS


@jax.tree_util.register_pytree_node_class
class DecodingWeights:
    """The params and the decoding layout made from them, bound together so that they cannot disagree: made by
    `prepare` only (the constructor refuses), and a `greedy_decode` call decodes with exactly these. A pytree
    (jit, device_put and tree maps act on both parts alike).

    params: the model's params, the embedding tables in matmul_dtype when it is set.
    kernels: the 'decoding_weights' collection: each projection's `kernel_t` [out..., in...] in its product's dtype,
      boxed with its logical axis names (nn.LogicallyPartitioned: `nn.get_partition_spec` gives its sharding)."""
    __slots__ = ('params', 'kernels')

    def __init__(self, *unused_args, **unused_kwargs):
        raise TypeError('DecodingWeights are made by plmjax.decode.weights.prepare(module, params), from the params '
                        'they hold.')

    @classmethod
    def _bind(cls, params, kernels) -> DecodingWeights:
        weights = object.__new__(cls)
        object.__setattr__(weights, 'params', params)
        object.__setattr__(weights, 'kernels', kernels)
        return weights

    def __setattr__(self, name, value):
        raise AttributeError('DecodingWeights are immutable: prepare(module, params) again.')

    def tree_flatten(self):
        return (self.params, self.kernels), None

    @classmethod
    def tree_unflatten(cls, unused_aux, children):
        return cls._bind(*children)


def is_encoder_decoder(module: nn.Module) -> bool:
    return hasattr(module, 'encode')


def _dummy_inputs(module: nn.Module, batch_size: int, length: int, encoder_length: int | None = None):
    """The positional inputs of a call: decoder ids, or (encoder ids, decoder ids) for an encoder-decoder."""
    ids = jnp.ones((batch_size, length), jnp.int32)
    if is_encoder_decoder(module):
        return jnp.ones((batch_size, encoder_length or 1), jnp.int32), ids
    return (ids,)


def init_cache(module: nn.Module, batch_size: int, max_length: int, encoder_length: int | None = None):
    """Zero caches for `max_length` decoder positions (an encoder-decoder's for `encoder_length` inputs); shapes
    come from `jax.eval_shape` of the init (nothing runs). Only keys, values, masks and indices: no weights."""
    inputs = _dummy_inputs(module, batch_size, max_length, encoder_length)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, decode=True)['cache'])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def prepare(module: nn.Module, params) -> DecodingWeights:
    """The weights in decoding's layout, a function of `params` only, for any number of `greedy_decode` calls.
    Each `plmjax.layers.dense.Projection` stores its `kernel_t` in the mutable 'decoding_weights' collection
    during a one-token forward pass whose outputs are dropped (under jit nothing of it but the transposes runs).
    With `config.matmul_dtype`, the embedding tables (params of rank >= 2 other than kernels) are rounded to it."""
    matmul_dtype = getattr(getattr(module, 'config', None), 'matmul_dtype', None)
    if matmul_dtype is not None:  # embedding tables; projections keep theirs rounded in kernel_t, norms stay
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: p if p.ndim < 2 or _is_kernel(path) else p.astype(matmul_dtype), params)
    _, variables = module.apply({'params': params}, *_dummy_inputs(module, 1, 1), mutable=[DECODING_WEIGHTS])
    return DecodingWeights._bind(params, variables[DECODING_WEIGHTS])


def check_layout(module: nn.Module, weights: DecodingWeights):
    """Loud, at trace time, if `weights` does not have the layout `prepare(module, weights.params)` makes (e.g.
    prepared for another module or matmul_dtype)."""
    def signature(tree):
        leaves, treedef = jax.tree_util.tree_flatten(nn.meta.unbox(tree))
        return treedef, [(tuple(leaf.shape), jnp.dtype(leaf.dtype)) for leaf in leaves]
    expected = jax.eval_shape(lambda p: prepare(module, p).kernels, weights.params)
    if signature(expected) != signature(weights.kernels):
        raise ValueError('DecodingWeights do not match this module: make them with '
                         'plmjax.decode.weights.prepare(module, params).')


def _is_kernel(path) -> bool:
    return any(getattr(key, 'key', None) == 'kernel' for key in path)
