"""plmjax.layers.matmul: bf16-operand products and their hand-written VJP, and TransformerConfig.matmul_dtype.

The products are checked exactly against float32 products of the bf16-rounded operands (and, for the VJP, the
rounded cotangent); the models are checked to put every product of forward and backward on bf16 operands, to
run on XLA:CPU for every family, and to stay within bfloat16 rounding of the float32 model."""

import math

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax import models
from plmjax.layers import matmul

# (einsum, lhs shape, rhs shape): the model's products, plus batch axes that are not leading, several contracted
# axes, and contracted axes ahead of kept ones.
EINSUMS = [
    ('bqhd,bkhd->bhqk', (2, 5, 3, 4), (2, 6, 3, 4)),
    ('bhqk,bkhd->bqhd', (2, 3, 5, 6), (2, 6, 3, 4)),
    ('ble,ve->blv', (2, 5, 8), (11, 8)),
    ('bli,io->blo', (2, 5, 8), (8, 7)),
    ('blhd,hde->ble', (2, 5, 3, 4), (3, 4, 8)),
    ('bqhd,qkd->bhqk', (2, 5, 3, 4), (5, 6, 4)),
    ('ij,jk->ik', (5, 8), (8, 3)),
    ('kib,jkb->bij', (4, 5, 2), (3, 4, 2)),
]


def _round(x):
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def _summation_bound(subscripts, lhs, rhs, g):
    """Bounds on |a - b| for two float32 evaluations of the product and its VJP that differ only in summation
    order (XLA's kernels differ between CPUs: AMX, AVX-512, AVX2): each one's error is at most K u sum|x y|
    (Higham, Accuracy and Stability of Numerical Algorithms, sec. 3.1; u = 2^-24, K the contraction length).
    Returns the bounds for [out, d lhs, d rhs]."""
    (lhs_s, rhs_s), out_s = subscripts.split('->')[0].split(','), subscripts.split('->')[1]
    size = {c: n for s, x in ((lhs_s, lhs), (rhs_s, rhs)) for c, n in zip(s, x.shape)}
    contracted = lambda kept, *inputs: math.prod(size[c] for c in set(''.join(inputs)) - set(kept))  # noqa: E731
    lengths = [contracted(out_s, lhs_s, rhs_s), contracted(lhs_s, out_s, rhs_s), contracted(rhs_s, out_s, lhs_s)]
    a, b, g = (np.abs(np.asarray(x, np.float64)) for x in (lhs, rhs, g))
    sums = [np.einsum(subscripts, a, b), np.einsum(f'{out_s},{rhs_s}->{lhs_s}', g, b),
            np.einsum(f'{out_s},{lhs_s}->{rhs_s}', g, a)]  # sum|x y| of each result element
    u = float(jnp.finfo(jnp.float32).eps) / 2
    return [2 * k * u * s for k, s in zip(lengths, sums)]  # 2: both sides round


def _assert_within(got, want, bound):
    excess = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)) / bound
    assert np.all(excess <= 1), f'{np.max(excess):.3g} times the float32 summation bound'


@pytest.mark.parametrize('subscripts,lhs_shape,rhs_shape', EINSUMS)
def test_product_and_vjp_equal_float32_products_of_rounded_operands(subscripts, lhs_shape, rhs_shape):
    lhs = jax.random.normal(jax.random.key(0), lhs_shape)
    rhs = jax.random.normal(jax.random.key(1), rhs_shape)
    out, vjp = jax.vjp(lambda a, b: matmul.einsum(subscripts, a, b, matmul_dtype='bfloat16'), lhs, rhs)
    ref, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(subscripts, a, b, precision='highest'), _round(lhs), _round(rhs))
    g = jax.random.normal(jax.random.key(2), out.shape)
    assert out.dtype == jnp.float32
    bounds = _summation_bound(subscripts, _round(lhs), _round(rhs), _round(g))
    for got, want, bound in zip((out, *vjp(g)), (ref, *ref_vjp(_round(g))), bounds):
        assert got.dtype == jnp.float32
        _assert_within(got, want, bound)
    assert not np.allclose(out, jnp.einsum(subscripts, lhs, rhs, precision='highest'), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('subscripts,lhs_shape,rhs_shape', EINSUMS)
def test_float32_products_without_batch_axes_are_2d_and_equal_the_plain_product(subscripts, lhs_shape, rhs_shape):
    """matmul_dtype=None: products without batch axes run as one [m, k] x [k, n] or [m, k] x [n, k] product
    (`matmul._matrix_product`); the values and gradients are those of the plain product."""
    lhs = jax.random.normal(jax.random.key(0), lhs_shape)
    rhs = jax.random.normal(jax.random.key(1), rhs_shape)
    fn = lambda a, b: jnp.einsum(subscripts, a, b, precision='highest', _dot_general=matmul.for_dtype(None))
    out, vjp = jax.vjp(fn, lhs, rhs)
    ref, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(subscripts, a, b, precision='highest'), lhs, rhs)
    g = jax.random.normal(jax.random.key(2), out.shape)
    for got, want, bound in zip((out, *vjp(g)), (ref, *ref_vjp(g)), _summation_bound(subscripts, lhs, rhs, g)):
        _assert_within(got, want, bound)
    dots = [e for e in jax.make_jaxpr(fn)(lhs, rhs).eqns if e.primitive.name == 'dot_general']
    if not dots[0].params['dimension_numbers'][1][0]:  # no batch axes
        assert all(v.aval.ndim == 2 for v in dots[0].invars)


@pytest.mark.parametrize('rows', [1, 2, 8, matmul.FEW_ROWS, matmul.FEW_ROWS + 1])
def test_weight_as_lhs_multiplies_the_out_in_weight_as_the_left_operand_for_a_few_rows(rows):
    """Decoding's float32 products of 2..FEW_ROWS rows by an [out..., in...] weight (weight_as_lhs) are issued as
    weight @ x^T, kept from being folded back, then transposed: the values of the plain product (to float32
    summation order), the [out..., in...] weight as the left operand of the one 2-D product; other row counts,
    and bf16 products, as without it."""
    x = jax.random.normal(jax.random.key(0), (rows, 1, 4, 16))  # [batch, length, heads, kv] -> emb
    weight = jax.random.normal(jax.random.key(1), (24, 4, 16))  # [emb, heads, kv]: [out, in...]
    dims = (((2, 3), (1, 2)), ((), ()))
    fn = jax.jit(lambda a, b: matmul.dot_general(a, b, dims, weight_as_lhs=True))
    out = fn(x, weight)
    want = jnp.einsum('blhd,ehd->ble', x, weight, precision='highest')
    assert out.shape == (rows, 1, 24)
    _assert_within(out, want, 1e-5 * float(jnp.einsum('blhd,ehd->ble', jnp.abs(x), jnp.abs(weight)).max()))
    dots = [e for e in jax.make_jaxpr(fn)(x, weight).jaxpr.eqns[0].params['jaxpr'].eqns
            if e.primitive.name == 'dot_general']
    few = 1 < rows <= matmul.FEW_ROWS
    assert len(dots) == 1 and dots[0].invars[0].aval.shape == ((24, 64) if few else (rows, 64))
    bf16 = matmul.dot_general(x, weight, dims, matmul_dtype='bfloat16', weight_as_lhs=True)
    np.testing.assert_array_equal(bf16, matmul.dot_general(x, weight, dims, matmul_dtype='bfloat16'))


def test_result_keeps_the_operand_dtype_and_none_is_the_plain_product():
    a = jax.random.normal(jax.random.key(0), (3, 4))
    b = jax.random.normal(jax.random.key(1), (4, 5))
    dims = (((1,), (0,)), ((), ()))
    assert matmul.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), dims,
                              matmul_dtype='bfloat16').dtype == jnp.bfloat16
    np.testing.assert_array_equal(matmul.dot_general(a, b, dims), jax.lax.dot_general(a, b, dims))


def _loss_fn(architecture, config):
    module = models.build_model(architecture, config)
    if architecture == 'encoder_decoder':
        batch = (jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % 50 + 2,
                 jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 50 + 2)
    else:
        batch = (jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 50 + 2,)

    def loss(params):
        logits = module.apply({'params': params}, *batch)['logits']
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 3])

    params = module.init(jax.random.key(0), *batch)['params']
    return loss, params


FAMILIES = [('encoder', models.tiny_encoder), ('decoder', models.tiny_decoder),
            ('encoder_decoder', models.tiny_encoder_decoder),
            ('encoder', lambda **kw: models.tiny_encoder(position='nezha_relative', **kw)),
            ('decoder', lambda **kw: models.tiny_decoder(position='rotary', **kw))]


@pytest.mark.parametrize('architecture,preset', FAMILIES)
def test_bf16_matmul_models_run_and_stay_within_bf16_rounding(architecture, preset):
    loss32, params = _loss_fn(architecture, preset())
    loss16, _ = _loss_fn(architecture, preset(matmul_dtype='bfloat16'))
    value32, grads32 = jax.jit(jax.value_and_grad(loss32))(params)
    value16, grads16 = jax.jit(jax.value_and_grad(loss16))(params)  # XLA:CPU runs every product
    assert value16 != value32  # the bf16 path is in use
    np.testing.assert_allclose(value16, value32, rtol=1e-2)
    flat32, flat16 = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads32, grads16))
    cosine = float(flat32 @ flat16 / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16)))
    assert cosine > 0.999
    np.testing.assert_allclose(jnp.linalg.norm(flat16), jnp.linalg.norm(flat32), rtol=1e-2)


@pytest.mark.parametrize('architecture,preset', FAMILIES[:3])
def test_every_product_of_the_training_gradient_has_bf16_operands(architecture, preset):
    loss16, params = _loss_fn(architecture, preset(matmul_dtype='bfloat16'))
    jaxpr = jax.make_jaxpr(jax.grad(loss16))(params)
    products = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == 'dot_general':
                products.append(tuple(v.aval.dtype for v in eqn.invars))
            for sub in jax_core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    assert products and all(d == (jnp.bfloat16, jnp.bfloat16) for d in products), set(products)


def test_unknown_matmul_dtype_is_refused():
    with pytest.raises(ValueError, match='matmul_dtype'):
        models.tiny_encoder(matmul_dtype='float16')
