"""Fill-mask: an encoder's most probable tokens at given positions (BERT's masked-token prediction, as
`transformers`' fill-mask pipeline reports it: softmax over the vocabulary at each [MASK], top k)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class Fills(NamedTuple):
    ids: jax.Array  # [batch, positions, k] int32, most probable first
    probs: jax.Array  # [batch, positions, k] float32


def top_k_fills(module: nn.Module, params, ids: jax.Array, positions: jax.Array, k: int = 5,
                input_mask: Optional[jax.Array] = None, banned_ids: tuple[int, ...] = ()) -> Fills:
    """ids [b, l] (with [MASK] where to predict), positions [b, p] -> the k most probable tokens at each position and
    their probabilities (softmax over the whole vocabulary; banned_ids, e.g. special tokens, are never listed but
    keep their share of the probability mass)."""
    logits = module.apply({'params': params}, ids, input_mask=input_mask, mlm_positions=positions)['logits']
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [b, p, vocab]
    ranked = probs if not banned_ids else probs.at[..., jnp.array(banned_ids)].set(-1.0)
    _, top = jax.lax.top_k(ranked, k)  # [b, p, k]
    return Fills(top.astype(jnp.int32), jnp.take_along_axis(probs, top, axis=-1))
