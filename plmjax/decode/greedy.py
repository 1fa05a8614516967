"""Greedy decoding with a KV cache for `DecoderModel` (GPT-2, PanGu-α), on the cache API of docs/interfaces.md.

One jitted function: a prefill pass writes the prompt's keys and values into a zero cache of length
prompt + new tokens, then `lax.scan` feeds one token a step (new_tokens - 1 steps), each attending to the cache.
The prompt's tokens are all real (equal-length prompts, no left padding): positions count from 0 in each row.

Decoding reads its weights in a layout of its own (`prepare`): every projection's kernel as [out..., in...] in
the dtype of its products, and with `config.matmul_dtype` the embedding tables rounded to it. Each step is
bound by reading the weights, and a few rows times a weight stored along its rows run about twice as fast on
XLA:CPU; bf16 weights are half the bytes. `prepare` once and pass its `DecodingWeights` to decode many prompts,
or pass the params and every call prepares them.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util


class DecodingWeights(NamedTuple):
    params: Any  # the model's params, embedding tables in matmul_dtype when it is set
    kernels: Any  # the cache's 'kernel_t' entries: each projection's kernel, [out..., in...] in its product's dtype


def init_cache(module: nn.Module, batch_size: int, max_length: int):
    """Zero caches for `max_length` positions; shapes come from `jax.eval_shape` of the init (nothing runs)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.ones((batch_size, max_length), jnp.int32),
                                                decode=True)['cache'])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def prepare(module: nn.Module, params) -> DecodingWeights:
    """The weights in decoding's layout, for any number of `greedy_decode` calls. The projections make their
    [out..., in...] kernels at the first decoding call (`plmjax.layers.dense.Projection`); here that is a
    one-token call whose outputs are dropped."""
    matmul_dtype = getattr(getattr(module, 'config', None), 'matmul_dtype', None)
    if matmul_dtype is not None:  # embedding tables; projections keep theirs rounded in the cache, norms stay
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: p if p.ndim < 2 or _is_kernel(path) else p.astype(matmul_dtype), params)
    _, variables = module.apply({'params': params, 'cache': init_cache(module, 1, 1)}, jnp.zeros((1, 1), jnp.int32),
                                decode=True, logits_to_keep=1, mutable=['cache'])
    kernels = {path: value for path, value in traverse_util.flatten_dict(variables['cache']).items()
               if path[-1] == 'kernel_t'}
    return DecodingWeights(params, traverse_util.unflatten_dict(kernels))


def greedy_decode(module: nn.Module, params, prompt: jax.Array, max_new_tokens: int, *, eos_id: int | None = None,
                  pad_id: int = 0) -> jax.Array:
    """prompt [batch, prompt_length] int32 -> the greedy continuation [batch, max_new_tokens] int32.

    params: the model's params, or `prepare(module, params)` to keep the decoding layout across calls.
    With `eos_id`, a row that has produced EOS continues with `pad_id` (as `transformers`' generate).
    """
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
    batch_size, prompt_length = prompt.shape
    weights = params if isinstance(params, DecodingWeights) else prepare(module, params)
    params = weights.params
    cache = traverse_util.unflatten_dict({**traverse_util.flatten_dict(init_cache(
        module, batch_size, prompt_length + max_new_tokens)), **traverse_util.flatten_dict(weights.kernels)})

    def forward(cache, ids):  # ids [batch, n] -> (cache, next-token logits [batch, vocab])
        outputs, variables = module.apply({'params': params, 'cache': cache}, ids, decode=True, logits_to_keep=1,
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
