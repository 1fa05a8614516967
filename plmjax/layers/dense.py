"""The dense layer of every model: `Projection`, a product over the input's last axes (BERT's, GPT's and T5's
dense layers, the attention's query/key/value and output projections, the heads), and its kernel's decoding
layout. Measurements behind the layout: docs/performance.md."""
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers import matmul

Initializer = Callable[..., jax.Array]
DECODING_WEIGHTS = 'decoding_weights'  # the variable collection of decoding's kernel layout (`plmjax.decode`)


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

    Decoding's layout: when the 'decoding_weights' collection is mutable (`plmjax.decode.weights.prepare`; not in
    `init`), the call stores `kernel_t`, the kernel as [out..., in...] in its product's dtype, its kernel's axis
    names permuted the same way; when that collection holds `kernel_t`, the call multiplies by it instead of the
    kernel (why: docs/performance.md, "Decoding"). Nothing is written to 'cache'.

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
        if (self.is_mutable_collection(DECODING_WEIGHTS) and not self.is_initializing()
                and not self.has_variable(DECODING_WEIGHTS, 'kernel_t')):
            self._make_decoding_kernel(kernel)
        if self.has_variable(DECODING_WEIGHTS, 'kernel_t'):
            kernel_t = nn.meta.unbox(self.get_variable(DECODING_WEIGHTS, 'kernel_t'))  # [out..., in...]
            return self._add_bias(matmul.dot_general(
                x, kernel_t, ((x_axes, tuple(range(kernel.ndim - n, kernel.ndim))), ((), ())),
                matmul_dtype=self.matmul_dtype, weight_as_lhs=True))
        return self._add_bias(matmul.dot_general(x, kernel, ((x_axes, tuple(range(n))), ((), ())),
                                                 matmul_dtype=self.matmul_dtype))

    def _make_decoding_kernel(self, kernel: jax.Array):
        """'decoding_weights'/kernel_t: the kernel as [out..., in...] in the product's dtype (rounded once), named
        and constrained like the kernel (its axis names in the same order), so under a mesh it is split alike."""
        n = self.num_input_axes
        order = (*range(n, kernel.ndim), *range(n))
        names = tuple(self.kernel_axes[i] for i in order)
        kernel_t = jnp.transpose(kernel, order).astype(self.matmul_dtype or kernel.dtype)
        self.variable(DECODING_WEIGHTS, 'kernel_t', nn.with_logical_partitioning(
            lambda: nn.with_logical_constraint(kernel_t, names), names))

    def _add_bias(self, y: jax.Array) -> jax.Array:
        if self.use_bias:
            bias = self.param('bias', nn.with_logical_partitioning(
                nn.initializers.zeros_init(), self.kernel_axes[self.num_input_axes:]), tuple(self.features),
                self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return y
