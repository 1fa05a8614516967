"""The position-wise MLP of every transformer layer: dense (BERT, GPT-2, T5 v1.0, BART) or gated (T5 v1.1)."""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers import dropout
from plmjax.layers.dense import Projection

Initializer = Callable[..., jax.Array]

# Names as in Hugging Face's ACT2FN: 'gelu' is the exact erf GELU, 'gelu_new' the tanh approximation (GPT-2).
ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': functools.partial(nn.gelu, approximate=False),
    'gelu_new': functools.partial(nn.gelu, approximate=True),
    'silu': nn.silu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f'unknown activation {name!r}; choose one of {tuple(ACTIVATIONS)}.')
    return ACTIVATIONS[name]


def logical_dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool, dtype, param_dtype,
                  kernel_init: Initializer, name: str, matmul_dtype: Any = None) -> Projection:
    """A dense layer (params 'kernel' [in, out] and 'bias' [out], as nn.Dense) whose kernel carries `axes` and whose
    bias carries `axes[1]`; its product is `plmjax.layers.matmul.dot_general` with `matmul_dtype`."""
    return Projection((features,), axes, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                      matmul_dtype=matmul_dtype, kernel_init=kernel_init, name=name)


class Mlp(nn.Module):
    """emb -> mlp -> emb. Dense: wo(act(wi x)). Gated (GeGLU/SwiGLU): wo(act(wi_0 x) * wi_1 x)."""
    mlp_dim: int
    activation: str = 'gelu'
    gated: bool = False
    use_bias: bool = True
    dropout_rate: float = 0.0  # on the hidden activation
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None
    kernel_init: Initializer = nn.initializers.normal(0.02)
    out_kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        # Rematerialized: the backward pass recomputes the activation from its input instead of keeping its
        # intermediates (GELU's exp and erf terms: two more [batch, length, mlp] float32 arrays per layer).
        act = jax.checkpoint(get_activation(self.activation))
        dense = functools.partial(logical_dense, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                                  matmul_dtype=self.matmul_dtype)
        wi = functools.partial(dense, self.mlp_dim, ('embed', 'mlp'), kernel_init=self.kernel_init)
        if self.gated:
            h = act(wi(name='wi_0')(x)) * wi(name='wi_1')(x)
        else:
            h = act(wi(name='wi')(x))
        h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
        h = dropout.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        out = dense(x.shape[-1], ('mlp', 'embed'), kernel_init=self.out_kernel_init or self.kernel_init, name='wo')(h)
        return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))
