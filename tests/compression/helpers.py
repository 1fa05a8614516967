"""Tiny teacher/student pairs for the distillation tests (vocabulary 64, length 8, 4 heads)."""
import jax
import jax.numpy as jnp
import numpy as np

from plmjax import models
from plmjax.compression import distill

LENGTH = 8
LENGTHS = {"inputs": LENGTH}


def teacher_config(**overrides):
    return models.tiny_encoder(**{"vocab_size": 64, "max_length": 16, "emb_dim": 32, "head_dim": 8,
                                  "mlp_dim": 64, "num_encoder_layers": 2, "dropout_rate": 0.0,
                                  "attention_dropout_rate": 0.0, **overrides})


def student_config(**overrides):
    return models.tiny_encoder(**{"vocab_size": 64, "max_length": 16, "emb_dim": 16, "head_dim": 4,
                                  "mlp_dim": 32, "num_encoder_layers": 1, "dropout_rate": 0.0,
                                  "attention_dropout_rate": 0.0, **overrides})


def pair(options=distill.DistillOptions(), teacher=None, student=None):
    t = models.build_model("encoder_classifier", teacher or teacher_config(), num_labels=3)
    s = models.build_model("encoder_classifier", student or student_config(), num_labels=3)
    return distill.distillation_model(t, s, options)


def batch(seed=0, size=8):
    """A classification batch with padded tails (the masked attention entries are exercised)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 64, (size, LENGTH)).astype(np.int32)
    lengths = rng.integers(3, LENGTH + 1, size)
    tokens[np.arange(LENGTH)[None, :] >= lengths[:, None]] = 0
    return {"encoder_input_tokens": tokens, "labels": rng.integers(0, 3, (size, 1)).astype(np.int32),
            "encoder_token_types": np.zeros_like(tokens)}


def init(module, seed=0):
    import flax.linen as nn
    def params(key):
        variables = module.init({"params": key, "dropout": key}, jnp.ones((1, LENGTH), jnp.int32), deterministic=True)
        return nn.meta.unbox(variables["params"])
    return jax.jit(params)(jax.random.key(seed))
