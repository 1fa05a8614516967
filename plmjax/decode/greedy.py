"""Greedy decoding with a KV cache for `DecoderModel` (GPT-2, PanGu-α), on the cache API of docs/interfaces.md.

One jitted function: a prefill pass writes the prompt's keys and values into a zero cache of length
prompt + new tokens, then `lax.scan` feeds one token a step (new_tokens - 1 steps), each attending to the cache.
The prompt's tokens are all real (equal-length prompts, no left padding): positions count from 0 in each row.
With `config.matmul_dtype` set, the weight matrices are rounded to it once, before the loop: the products round
them anyway, and each step then reads half the bytes (decoding is bound by reading the weights).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def init_cache(module: nn.Module, batch_size: int, max_length: int):
    """Zero caches for `max_length` positions; shapes come from `jax.eval_shape` of the init (nothing runs)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.ones((batch_size, max_length), jnp.int32),
                                                decode=True)['cache'])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def greedy_decode(module: nn.Module, params, prompt: jax.Array, max_new_tokens: int, *, eos_id: int | None = None,
                  pad_id: int = 0) -> jax.Array:
    """prompt [batch, prompt_length] int32 -> the greedy continuation [batch, max_new_tokens] int32.

    With `eos_id`, a row that has produced EOS continues with `pad_id` (as `transformers`' generate).
    """
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
    batch_size, prompt_length = prompt.shape
    cache = init_cache(module, batch_size, prompt_length + max_new_tokens)
    matmul_dtype = getattr(getattr(module, 'config', None), 'matmul_dtype', None)
    if matmul_dtype is not None:  # weight matrices and tables (ndim >= 2); biases and norm scales stay
        params = jax.tree.map(lambda p: p.astype(matmul_dtype) if p.ndim >= 2 else p, params)

    def forward(cache, ids):  # ids [batch, n] -> (cache, next-token logits [batch, vocab])
        outputs, variables = module.apply({'params': params, 'cache': cache}, ids, decode=True, mutable=['cache'])
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


def jit_greedy_decode(module: nn.Module, max_new_tokens: int, *, eos_id: int | None = None, pad_id: int = 0):
    """`greedy_decode` jitted for `module`: (params, prompt) -> tokens [batch, max_new_tokens]."""
    return jax.jit(functools.partial(greedy_decode, module, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                     pad_id=pad_id))
