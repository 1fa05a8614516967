"""Normalization layers with logical axis names: LayerNorm (BERT, GPT-2, BART) and RMSNorm (T5).

Both are flax's own layers, configured to match the PyTorch references: LayerNorm computes the variance in two
passes (`use_fast_variance=False`, as torch does) and RMSNorm reduces in float32 whatever the compute dtype,
as T5's `T5LayerNorm` does (`force_float32_reductions`).
"""
import flax.linen as nn
import jax.numpy as jnp

NORMS = ('layernorm', 'rmsnorm')


def make_norm(kind: str, *, epsilon: float, dtype=jnp.float32, param_dtype=jnp.float32,
              name: str | None = None) -> nn.Module:
    """A normalization layer over the last axis; its scale (and bias) carry the logical axis 'embed'."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',))
    if kind == 'layernorm':
        return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                            force_float32_reductions=True, scale_init=scale_init,
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)), name=name)
    if kind == 'rmsnorm':
        return nn.RMSNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                          force_float32_reductions=True, scale_init=scale_init, name=name)
    raise ValueError(f'unknown norm {kind!r}; choose one of {NORMS}.')
