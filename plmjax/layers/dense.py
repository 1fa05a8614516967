"""The dense layer of every model: `Projection`, a product over the input's last axes (BERT's, GPT's and T5's
dense layers, the attention's query/key/value and output projections, the heads), and the decoding layout of its
kernel."""
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers import matmul

Initializer = Callable[..., jax.Array]


def _as_matrix_init(init: Initializer, num_input_axes: int) -> Initializer:
    """Initialize an [in..., out...] kernel as the [prod(in), prod(out)] matrix, so fan-in/fan-out scaling sees
    the same shape as for a Dense layer."""
    def init_fn(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:num_input_axes])
        return init(key, (fan_in, math.prod(shape) // fan_in), dtype).reshape(shape)
    return init_fn


class Projection(nn.Module):
    """Dense layer over the last `num_input_axes` axes to `features` ([emb] -> [heads, kv] or [heads, kv] -> [emb]);
    params 'kernel' [in..., out...] and 'bias' [out...] (as flax's nn.Dense for one input and one output axis).

    In decoding (a mutable 'cache' collection), the first call keeps the kernel in the cache as `kernel_t`
    [out..., in...] and later calls multiply by that (`_keep_decoding_kernel`).

    flax's DenseGeneral would do, but it initializes a flat kernel and unboxes it before reshaping, which fails once
    logical axis rules and a mesh are active; this kernel is created at its real shape with its axis names."""
    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    num_input_axes: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    matmul_dtype: Any = None
    kernel_init: Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = x.shape[x.ndim - self.num_input_axes:] + tuple(self.features)
        kernel = self.param('kernel', nn.with_logical_partitioning(
            _as_matrix_init(self.kernel_init, self.num_input_axes), self.kernel_axes), kernel_shape, self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        n = self.num_input_axes
        x_axes = tuple(range(x.ndim - n, x.ndim))
        if self.has_variable('cache', 'kernel_t'):  # decoding, after the first call (see `_keep_decoding_kernel`)
            kernel_t = self.get_variable('cache', 'kernel_t')  # [out..., in...]
            return self._add_bias(matmul.dot_general(
                x, kernel_t, ((x_axes, tuple(range(kernel.ndim - n, kernel.ndim))), ((), ())),
                matmul_dtype=self.matmul_dtype))
        if self.is_mutable_collection('cache') and not self.is_initializing():
            self._keep_decoding_kernel(kernel)
        return self._add_bias(matmul.dot_general(x, kernel, ((x_axes, tuple(range(n))), ((), ())),
                                                 matmul_dtype=self.matmul_dtype))

    def _keep_decoding_kernel(self, kernel: jax.Array):
        """At the first decoding call (the prompt), keep the kernel in the cache as [out..., in...] in the product's
        dtype; the steps after it multiply by that. A few rows times a weight read along its rows run at about
        twice the speed of [in..., out...] on XLA:CPU (docs/performance.md), and the rounding is done once."""
        n = self.num_input_axes
        self.variable('cache', 'kernel_t', lambda: jnp.transpose(kernel, (*range(n, kernel.ndim), *range(n))).astype(
            self.matmul_dtype or kernel.dtype))

    def _add_bias(self, y: jax.Array) -> jax.Array:
        if self.use_bias:
            bias = self.param('bias', nn.with_logical_partitioning(
                nn.initializers.zeros_init(), self.kernel_axes[self.num_input_axes:]), tuple(self.features),
                self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return y
