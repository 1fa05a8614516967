"""Greedy decoding with a KV cache for `DecoderModel` (GPT-2, PanGu-α), on the cache API of docs/interfaces.md.

One jitted function: a prefill pass writes the prompt's keys and values into a zero cache of length
prompt + new tokens, then `lax.scan` feeds one token a step (new_tokens - 1 steps), each attending to the cache.
The prompt's tokens are all real (equal-length prompts, no left padding): positions count from 0 in each row.

Decoding reads its weights in a layout of its own (`prepare`), the 'decoding_weights' collection: every
projection's kernel as [out..., in...] in the dtype of its products, and with `config.matmul_dtype` the
embedding tables rounded to it (why: docs/performance.md, "Decoding"). `prepare` once and pass its
`DecodingWeights` to decode many prompts, or pass the params and every call prepares them. The cache holds
keys, values, masks and indices only.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

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
        raise TypeError('DecodingWeights are made by plmjax.decode.greedy.prepare(module, params), from the params '
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


def init_cache(module: nn.Module, batch_size: int, max_length: int):
    """Zero caches for `max_length` positions; shapes come from `jax.eval_shape` of the init (nothing runs). Only
    keys, values, masks and indices: no weights."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.ones((batch_size, max_length), jnp.int32),
                                                decode=True)['cache'])
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
    _, variables = module.apply({'params': params}, jnp.zeros((1, 1), jnp.int32), mutable=[DECODING_WEIGHTS])
    return DecodingWeights._bind(params, variables[DECODING_WEIGHTS])


def _check_layout(module: nn.Module, weights: DecodingWeights):
    """Loud, at trace time, if `weights` does not have the layout `prepare(module, weights.params)` makes (e.g.
    prepared for another module or matmul_dtype)."""
    def signature(tree):
        leaves, treedef = jax.tree_util.tree_flatten(nn.meta.unbox(tree))
        return treedef, [(tuple(leaf.shape), jnp.dtype(leaf.dtype)) for leaf in leaves]
    expected = jax.eval_shape(lambda p: prepare(module, p).kernels, weights.params)
    if signature(expected) != signature(weights.kernels):
        raise ValueError('DecodingWeights do not match this module: make them with '
                         'plmjax.decode.greedy.prepare(module, params).')


def greedy_decode(module: nn.Module, params, prompt: jax.Array, max_new_tokens: int, *, eos_id: int | None = None,
                  pad_id: int = 0) -> jax.Array:
    """prompt [batch, prompt_length] int32 -> the greedy continuation [batch, max_new_tokens] int32.

    params: the model's params (prepared in the call), or `prepare(module, params)` to keep the decoding layout
    across calls (its own params are used).
    With `eos_id`, a row that has produced EOS continues with `pad_id` (as `transformers`' generate).
    """
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
    batch_size, prompt_length = prompt.shape
    if isinstance(params, DecodingWeights):
        _check_layout(module, params)
        weights = params
    else:
        weights = prepare(module, params)
    cache = init_cache(module, batch_size, prompt_length + max_new_tokens)
    fixed = {'params': weights.params, DECODING_WEIGHTS: weights.kernels}

    def forward(cache, ids):  # ids [batch, n] -> (cache, next-token logits [batch, vocab])
        outputs, variables = module.apply({**fixed, 'cache': cache}, ids, decode=True, logits_to_keep=1,
                                          mutable=['cache'])
        return variables['cache'], outputs['logits'][:, -1]

    def choose(logits, done):
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [batch]
        if eos_id is None:
            return token, done
        token = jnp.where(done, pad_id, token)
        return token, jnp.logical_or(done, token == eos_id)

    cache, logits = forward(cache, prompt.astype(jnp.int32))
    first, done = choose(logits, jnp.zeros((batch_size,), jnp.bool_))

    def step(carry, _):
        cache, token, done = carry
        cache, logits = forward(cache, token[:, None])
        token, done = choose(logits, done)
        return (cache, token, done), token

    _, rest = jax.lax.scan(step, (cache, first, done), None, length=max_new_tokens - 1)  # rest [new - 1, batch]
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def _is_kernel(path) -> bool:
    return any(getattr(key, 'key', None) == 'kernel' for key in path)


def jit_greedy_decode(module: nn.Module, max_new_tokens: int, *, eos_id: int | None = None, pad_id: int = 0):
    """`greedy_decode` jitted for `module`: (params or `DecodingWeights`, prompt) -> tokens [batch, max_new_tokens]."""
    return jax.jit(functools.partial(greedy_decode, module, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                     pad_id=pad_id))
