"""The tiny encoder the fine-tuning trainer tests start from, saved as `plmjax convert` saves a checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plmjax import convert, models

VOCAB = 64


def tiny(**overrides):
    fields = dict(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, max_length=32, dropout_rate=0.0,
                  attention_dropout_rate=0.0)
    return models.tiny_encoder(**{**fields, **overrides})


def save_random_encoder(out_dir: str, seed: int = 0):
    """Saves an 'encoder' with random parameters to `out_dir`; returns (out_dir, its params as numpy)."""
    model = models.build_model("encoder", tiny())
    params = model.init(jax.random.key(seed), jnp.ones((1, 8), jnp.int32))["params"]
    params = jax.tree.map(np.asarray, nn.meta.unbox(params))
    convert.save_checkpoint(str(out_dir), "encoder", tiny(), params, source="test")
    return str(out_dir), params
