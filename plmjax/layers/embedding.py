"""Embedding tables with logical axis names.

Token embeddings are flax's `nn.Embed`; `attend(embedder, x)` (x @ table^T) gives tied output logits. Small tables
(token types, learned positions) are never worth sharding: their row axis carries no logical name (None).
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers import matmul

Initializer = Callable[..., jax.Array]


def token_embedder(vocab_size: int, features: int, *, embedding_init: Initializer, dtype=jnp.float32,
                   param_dtype=jnp.float32, name: str | None = None) -> nn.Embed:
    """The [vocab, embed] token table; `attend(embedder, hidden)` projects back onto the vocabulary."""
    return nn.Embed(vocab_size, features, dtype=dtype, param_dtype=param_dtype,
                    embedding_init=nn.with_logical_partitioning(embedding_init, ('vocab', 'embed')), name=name)


def table_embedder(num_embeddings: int, features: int, *, embedding_init: Initializer, dtype=jnp.float32,
                   param_dtype=jnp.float32, name: str | None = None) -> nn.Embed:
    """A small [rows, embed] table (token types, learned absolute positions, PanGu-α query positions)."""
    return nn.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                    embedding_init=nn.with_logical_partitioning(embedding_init, (None, 'embed')), name=name)


def attend(embedder: nn.Embed, query: jax.Array, matmul_dtype=None, decode: bool = False) -> jax.Array:
    """Tied output logits: query [..., embed] @ table^T -> [..., vocab], as `nn.Embed.attend` but through
    `plmjax.layers.matmul.dot_general`. decode: the few rows of a decoding step (`matmul.dot_general`'s
    weight_as_lhs: the [vocab, embed] table as the left operand)."""
    query, table = nn.dtypes.promote_dtype(query, embedder.embedding, dtype=embedder.dtype)
    return matmul.dot_general(query, table, (((query.ndim - 1,), (1,)), ((), ())), matmul_dtype=matmul_dtype,
                              weight_as_lhs=decode)
