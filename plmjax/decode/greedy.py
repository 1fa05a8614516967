"""Greedy decoding of `DecoderModel` prompts: `plmjax.decode.decoding.generate` with strategy 'greedy' (kept as
the short form; the weights layout and cache live in `plmjax.decode.weights`)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from plmjax.decode import decoding
from plmjax.decode.weights import DecodingWeights, check_layout, init_cache, prepare  # noqa: F401  (re-exported)


def greedy_decode(module: nn.Module, params, prompt: jax.Array, max_new_tokens: int, *, eos_id: int | None = None,
                  pad_id: int = 0) -> jax.Array:
    """prompt [batch, prompt_length] int32 -> the greedy continuation [batch, max_new_tokens] int32.

    params: the model's params (prepared in the call), or `prepare(module, params)` to keep the decoding layout
    across calls (its own params are used).
    With `eos_id`, a row that has produced EOS continues with `pad_id` (as `transformers`' generate).
    """
    options = decoding.Options(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
    return decoding.generate(module, params, prompt, options).tokens


def jit_greedy_decode(module: nn.Module, max_new_tokens: int, *, eos_id: int | None = None, pad_id: int = 0):
    """`greedy_decode` jitted for `module`: (params or `DecodingWeights`, prompt) -> tokens [batch, max_new_tokens]."""
    return jax.jit(functools.partial(greedy_decode, module, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                     pad_id=pad_id))
