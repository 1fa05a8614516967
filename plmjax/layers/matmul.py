"""Every matrix product of the models goes through `dot_general` here, so one config field sets its precision.

`matmul_dtype=None` is an ordinary `lax.dot_general` in the compute dtype. `matmul_dtype='bfloat16'` rounds both
operands to bfloat16 and accumulates in float32 (TPU's default for float32 matmuls; `torch.autocast`'s bfloat16
matmul with a float32 result), in the forward pass and, through a custom VJP that rounds the cotangent too, in
both gradient products. Parameters, norms, softmax, the loss and the optimizer stay in float32. Products are
issued in the operand layouts XLA:CPU runs fastest; the measurements behind each choice: docs/performance.md.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

DimensionNumbers = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]
MATMUL_DTYPES = (None, 'bfloat16')


# Decoding's products with this many rows or fewer (and more than one) multiply a weight stored [n, k] as the
# left operand (`_matrix_product`, weight_as_lhs): docs/performance.md, "T5-small float32 decoding".
FEW_ROWS = 64


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: DimensionNumbers, precision=None,
                preferred_element_type=None, *, matmul_dtype: Any = None, weight_as_lhs: bool = False,
                **kwargs) -> jax.Array:
    """`lax.dot_general` (same signature, so it plugs into `nn.Dense(dot_general=...)` and `jnp.einsum`), whose
    operands are rounded to `matmul_dtype` when it is set. The result has the operands' dtype (or
    `preferred_element_type`), as without `matmul_dtype`: the setting changes the precision, not the types.

    weight_as_lhs (decoding only): a float32 product without batch axes whose rhs is a weight stored [n..., k...]
    ([out..., in...]) and whose lhs has 2..FEW_ROWS rows is issued as weight @ lhs^T ([n, m]), then transposed
    (`_matrix_product`); bf16 products (matmul_dtype) ignore it."""
    dims = _hashable(dimension_numbers)
    if matmul_dtype is None:
        if not dims[1][0]:  # no batch axes: a matrix product (see `_matrix_product`)
            return _matrix_product(lhs, rhs, dims, functools.partial(
                lax.dot_general, precision=precision, preferred_element_type=preferred_element_type, **kwargs),
                weight_as_lhs=weight_as_lhs)
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
    out = _rounded_dot(lhs, rhs, dims, jnp.dtype(matmul_dtype).name)  # float32
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def for_dtype(matmul_dtype: Any = None):
    """The `dot_general` to give flax layers and `jnp.einsum(_dot_general=...)`."""
    return functools.partial(dot_general, matmul_dtype=matmul_dtype)


def einsum(subscripts: str, *operands: jax.Array, matmul_dtype: Any = None) -> jax.Array:
    """`jnp.einsum` whose products go through `dot_general` (two operands: one product)."""
    if matmul_dtype is None:
        return jnp.einsum(subscripts, *operands)
    return jnp.einsum(subscripts, *operands, _dot_general=for_dtype(matmul_dtype))


def _hashable(dimension_numbers) -> tuple:
    (lc, rc), (lb, rb) = dimension_numbers
    return (tuple(map(int, lc)), tuple(map(int, rc))), (tuple(map(int, lb)), tuple(map(int, rb)))


def _matrix_product(lhs, rhs, dims, dot, weight_as_lhs: bool = False):
    """A product without batch axes as one 2-D product: lhs [kept..., contracted...] -> [m, k], the rhs a bitcast to
    [k, n] or [n, k] in its own axis order (else transposed to [k, n]); the result reshaped to [lhs kept...,
    rhs kept...].

    XLA:CPU leaves a 2-D product's operands as they are, but it rewrote 3-D products into [m, k] x [k, n] with a
    transposed rhs of its choosing (for decoding's tied head, a hoisted [k, n] copy of the [n, k] table, which is
    slower for a few rows: docs/performance.md, "Decoding").

    weight_as_lhs, with an [n, k] rhs and 1 < m <= FEW_ROWS: the product is [n, k] x [m, k]^T -> [n, m], transposed
    to [m, n] after an optimization barrier (without it XLA folds the transpose back into [m, k] x [n, k]^T).
    XLA:CPU's kernels (YNNPACK) multiply a few rows by an [n, k] right operand at a fraction of the memory rate
    (T5-small's tied head, [8, 512] x [32128, 512]: best of 40 10.5 ms, as the left operand 7.1 ms on a shared
    Zen 4; docs/performance.md);
    a single row is a matrix-vector product either way and stays as it is. The sums are the same products of the
    same k terms, summed in the kernel's order (float32 results may differ in the last bits)."""
    (lc, rc), _ = dims
    lhs_kept, rhs_kept = _remaining(lhs.ndim, lc), _remaining(rhs.ndim, rc)
    if lhs_kept + list(lc) != list(range(lhs.ndim)):
        lhs = lax.transpose(lhs, (*lhs_kept, *lc))
    contracted_order = list(rc)  # the rhs's contracted axes in the order of the lhs's (now its last axes)
    kept_shape = [lhs.shape[i] for i in range(len(lhs_kept))]
    out_kept = [rhs.shape[a] for a in rhs_kept]
    k = math.prod(lhs.shape[len(lhs_kept):])
    lhs = lhs.reshape(math.prod(kept_shape), k)  # [m, k]
    if contracted_order + rhs_kept == list(range(rhs.ndim)):  # [contracted..., kept...] -> [k, n]
        out = dot(lhs, rhs.reshape(k, -1), (((1,), (0,)), ((), ())))
    elif rhs_kept + contracted_order == list(range(rhs.ndim)):  # [kept..., contracted...] -> [n, k]
        if weight_as_lhs and 1 < lhs.shape[0] <= FEW_ROWS:
            out_t = dot(rhs.reshape(-1, k), lhs, (((1,), (1,)), ((), ())))  # [n, m]
            out = lax.optimization_barrier(out_t).T
        else:
            out = dot(lhs, rhs.reshape(-1, k), (((1,), (1,)), ((), ())))
    else:
        out = dot(lhs, lax.transpose(rhs, (*contracted_order, *rhs_kept)).reshape(k, -1), (((1,), (0,)), ((), ())))
    return out.reshape(*kept_shape, *out_kept)


def _f32_dot(lhs, rhs, dims):
    """dot_general(lhs, rhs) -> float32 with the lhs as [batch..., kept..., contracted...] and the rhs's batch axes
    leading: XLA:CPU's library kernels (YNNPACK) take these bf16 x bf16 -> f32 products, and its fallback has
    no bf16 x bf16 -> f32 kernel at all (an UNIMPLEMENTED error at run time), e.g. for a batched product that
    contracts the lhs's middle axis."""
    (lc, rc), (lb, rb) = dims
    if not lb:
        return _matrix_product(lhs, rhs, dims, functools.partial(lax.dot_general, preferred_element_type=jnp.float32))
    lhs_order = [*lb, *_remaining(lhs.ndim, lc, lb), *lc]
    rhs_order = [*rb, *_remaining(rhs.ndim, rb)]
    if lhs_order != list(range(lhs.ndim)):
        lhs = lax.transpose(lhs, tuple(lhs_order))
    if rhs_order != list(range(rhs.ndim)):
        rhs = lax.transpose(rhs, tuple(rhs_order))
    nb, nc = len(lb), len(lc)
    dims = ((tuple(range(lhs.ndim - nc, lhs.ndim)), tuple(rhs_order.index(a) for a in rc)),
            (tuple(range(nb)), tuple(range(nb))))
    return lax.dot_general(lhs, rhs, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _rounded_dot(lhs, rhs, dims, dtype):
    return _f32_dot(lhs.astype(dtype), rhs.astype(dtype), dims)


def _rounded_dot_fwd(lhs, rhs, dims, dtype):
    lhs_r, rhs_r = lhs.astype(dtype), rhs.astype(dtype)
    out = _f32_dot(lhs_r, rhs_r, dims)
    # The rounded operands are the residuals (half the memory of float32 ones); zero-size arrays carry the
    # primal dtypes, which the cotangents must have.
    return out, (lhs_r, rhs_r, jnp.zeros((0,), lhs.dtype), jnp.zeros((0,), rhs.dtype))


def _rounded_dot_bwd(dims, dtype, residuals, g):
    lhs_r, rhs_r, lhs_like, rhs_like = residuals
    g = g.astype(dtype)
    (lc, rc), (lb, rb) = dims
    d_lhs = _transpose_operand(g, rhs_r, lhs_r.ndim, (lc, rc), (lb, rb), operand_is_lhs=True)
    d_rhs = _transpose_operand(g, lhs_r, rhs_r.ndim, (rc, lc), (rb, lb), operand_is_lhs=False)
    return d_lhs.astype(lhs_like.dtype), d_rhs.astype(rhs_like.dtype)


_rounded_dot.defvjp(_rounded_dot_fwd, _rounded_dot_bwd)


def _remaining(ndim: int, *excluded: Sequence[int]) -> list[int]:
    drop = {a for axes in excluded for a in axes}
    return [a for a in range(ndim) if a not in drop]


def _transpose_operand(g, other, ndim, contract, batch, *, operand_is_lhs: bool):
    """Cotangent of one operand x of out = dot_general(lhs, rhs): g contracted with the other operand.

    contract = (x's contracting axes, other's), batch = (x's batch axes, other's). The output's axes are
    [batch..., lhs kept..., rhs kept...], so x's kept axes sit right after the batch axes when x is the lhs and
    last when it is the rhs. The product is ordered so that it needs no transpose when x's kept axes come before
    its contracted ones or after them (every projection here); XLA:CPU has no bf16 x bf16 -> f32 kernel for a
    product whose transpose it folds into the dot's layout."""
    (x_contract, other_contract), (x_batch, other_batch) = contract, batch
    x_kept = _remaining(ndim, x_contract, x_batch)
    other_kept = _remaining(other.ndim, other_contract, other_batch)
    num_batch = len(x_batch)
    first_other = num_batch + len(x_kept) if operand_is_lhs else num_batch  # g's axes of the other's kept ones
    g_other = list(range(first_other, first_other + len(other_kept)))
    g_batch, other_batch = list(range(num_batch)), list(other_batch)
    contracted_as_x = [x_contract[list(other_contract).index(a)] for a in sorted(other_contract)]
    if x_kept and contracted_as_x and max(contracted_as_x) < min(x_kept):  # [batch, contracted, kept]
        product = _f32_dot(other, g, ((other_kept, g_other), (other_batch, g_batch)))
        product_axes_as_x = list(x_batch) + contracted_as_x + x_kept
    else:  # [batch, kept, contracted]
        product = _f32_dot(g, other, ((g_other, other_kept), (g_batch, other_batch)))
        product_axes_as_x = list(x_batch) + x_kept + contracted_as_x
    order = _argsort(product_axes_as_x)
    return product if order == list(range(ndim)) else lax.transpose(product, tuple(order))


def _argsort(values: Sequence[int]) -> list[int]:
    return sorted(range(len(values)), key=values.__getitem__)
