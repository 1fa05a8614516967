"""quantize.py: TWN / BWN / symmetric quantizers against closed forms (float64 by hand), their clipped
straight-through gradients, bit packing, and the packed export that unpacks into the fake-quantized model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models
from plmjax.compression import quantize

W = np.array([[0.1, -0.5, 0.9], [-1.3, 0.02, 3.0]], np.float32)


def test_twn_layerwise_is_the_closed_form():
    # clipped to 2.5: mean|w| = (0.1 + 0.5 + 0.9 + 1.3 + 0.02 + 2.5) / 6; delta = 0.7 of it = 0.6207;
    # kept: 0.9, -1.3, 2.5 -> alpha = (0.9 + 1.3 + 2.5) / 3
    alpha = (0.9 + 1.3 + 2.5) / 3
    expected = np.array([[0, 0, alpha], [-alpha, 0, alpha]])
    np.testing.assert_allclose(np.asarray(quantize.twn(jnp.asarray(W)), np.float64), expected, rtol=1e-6)


def test_twn_rowwise_has_a_delta_and_alpha_per_row():
    # row 0: delta = 0.7 * 1.5 / 3 = 0.35 -> kept -0.5, 0.9, alpha 0.7; row 1 (clipped): delta = 0.7 * 3.82 / 3
    # = 0.8913 -> kept -1.3, 2.5, alpha 1.9
    expected = np.array([[0, -0.7, 0.7], [-1.9, 0, 1.9]])
    np.testing.assert_allclose(np.asarray(quantize.twn(jnp.asarray(W), rowwise=True), np.float64), expected,
                               rtol=1e-6)


def test_bwn_and_symmetric_are_the_closed_forms():
    alpha = (0.1 + 0.5 + 0.9 + 1.3 + 0.02 + 2.5) / 6
    np.testing.assert_allclose(np.asarray(quantize.bwn(jnp.asarray(W)), np.float64),
                               alpha * np.sign(W), rtol=1e-6)
    scale = 127 / 2.5  # max |clip(w)| = 2.5
    expected = np.round(np.clip(W.astype(np.float64), -2.5, 2.5) * scale) / scale
    np.testing.assert_allclose(np.asarray(quantize.symmetric(jnp.asarray(W), 8), np.float64), expected, rtol=1e-6)
    two_bit = np.asarray(quantize.symmetric(jnp.asarray(W), 2))  # levels -2.5, 0, 2.5
    assert set(np.round(two_bit.ravel(), 6)) <= {-2.5, 0.0, 2.5}


@pytest.mark.parametrize("quantizer", [quantize.twn, quantize.bwn, lambda w: quantize.symmetric(w, 8)],
                         ids=["twn", "bwn", "int8"])
def test_straight_through_gradient_is_clipped(quantizer):
    w = jnp.asarray([-3.0, -2.5, -1.0, 0.0, 0.3, 2.49, 2.5, 7.0], jnp.float32)
    g = jnp.arange(1.0, 9.0)
    grad = jax.grad(lambda x: jnp.sum(quantizer(x) * g))(w)
    np.testing.assert_array_equal(np.asarray(grad), [0, 0, 3, 4, 5, 6, 0, 0])


def test_lat_is_binaryberts_alternating_solution_by_hand():
    # w = [3, -1, 0.2, 0.1]: b = sign -> alpha = 4.3 / 4 = 1.075 -> b = round(clip(w / alpha)) = [1, -1, 0, 0]
    # -> alpha = 2 -> b = [1, round(-0.5) = -0 (half to even), 0, 0] -> alpha = 3 -> b = [1, 0, 0, 0]: fixed
    w = jnp.asarray([3.0, -1.0, 0.2, 0.1], jnp.float32)
    np.testing.assert_array_equal(np.asarray(quantize.lat(w)), [3.0, 0.0, 0.0, 0.0])
    # TWN clips to 2.5 and keeps |w| > 0.7 * 0.95: [1.75, -1.75, 0, 0], a larger error (2.175 against LAT's 1.05)
    np.testing.assert_allclose(np.asarray(quantize.twn(w)), [1.75, -1.75, 0.0, 0.0], rtol=1e-6)
    assert np.allclose(np.asarray(quantize.lat(jnp.zeros((2, 3)))), 0.0)  # no 0 / 0


@pytest.mark.parametrize("rowwise", [False, True])
def test_lat_satisfies_its_fixed_point_and_beats_twn_in_l2(rowwise):
    """On Gaussian weights the 10 iterations reach the alternating method's fixed point: alpha is the mean |w|
    of the kept weights and the kept ones are those with |w| >= alpha / 2 (float64 by hand); its L2 error is at
    most TWN's, both against the unclipped weights."""
    w = np.random.default_rng(5).normal(0.0, 0.05, (16, 64)).astype(np.float32)
    q = np.asarray(quantize.lat(jnp.asarray(w), rowwise=rowwise), np.float64)
    rows = q if rowwise else q.reshape(1, -1)
    ws = (w if rowwise else w.reshape(1, -1)).astype(np.float64)
    for qr, wr in zip(rows, ws):
        kept = qr != 0
        alpha = np.abs(wr[kept]).mean()
        np.testing.assert_allclose(np.abs(qr[kept]), alpha, rtol=1e-5)
        np.testing.assert_array_equal(np.sign(qr[kept]), np.sign(wr[kept]))
        assert (np.abs(wr[kept]) >= alpha / 2 * (1 - 1e-5)).all()
        assert (np.abs(wr[~kept]) <= alpha / 2 * (1 + 1e-5)).all()
    twn = np.asarray(quantize.twn(jnp.asarray(w), rowwise=rowwise), np.float64)
    assert ((q - w) ** 2).sum() <= ((twn - w) ** 2).sum()


def test_lat_gradient_passes_straight_through_unclipped():
    w = jnp.asarray([-3.0, -1.0, 0.0, 0.3, 7.0], jnp.float32)
    g = jnp.arange(1.0, 6.0)
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda x: jnp.sum(quantize.lat(x) * g))(w)), np.asarray(g))


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_codes_pack_and_unpack(bits):
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 33):
        codes = rng.integers(0, 2 ** bits, count)
        packed = quantize.pack_codes(codes, bits)
        assert packed.dtype == np.uint8 and len(packed) == -(-count * bits // 8)
        np.testing.assert_array_equal(quantize.unpack_codes(packed, bits, count), codes)


@pytest.mark.parametrize("method", ["ternary", "binary", "int8", "lat"])
def test_packed_model_unpacks_into_the_fake_quantized_one(method):
    config = models.tiny_encoder(vocab_size=96, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 num_encoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 96, (3, 8)), jnp.int32)
    params = nn.meta.unbox(model.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"])
    fake = quantize.quantize_weights(params, method)
    packed = quantize.pack_weights(params, method)
    unpacked = quantize.unpack_weights(packed, method)
    for a, b in zip(jax.tree.leaves(fake), jax.tree.leaves(unpacked)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    outputs = [model.apply({"params": p}, tokens, deterministic=True)["classification_logits"]
               for p in (fake, unpacked)]
    np.testing.assert_array_equal(*outputs)
    assert not np.array_equal(outputs[0], model.apply({"params": params}, tokens,
                                                      deterministic=True)["classification_logits"])
    # Size of the quantized tensors alone: 2 / 1 / 8 bits a weight plus their scales.
    quantized = {path: item for path, item in packed.items() if isinstance(item, dict)}
    weights = sum(int(np.prod(item["shape"])) for item in quantized.values())
    ratio = quantize.packed_bytes(quantized) / (4 * weights)
    assert ratio <= {"ternary": 1 / 12, "lat": 1 / 12, "binary": 1 / 20, "int8": 1 / 3.5}[method], ratio
    assert len(quantized) == 2 * 6 + 1  # q, k, v, out, wi, wo in each layer, and the word embedding


@pytest.mark.parametrize("rowwise", [False, True], ids=["layerwise", "rowwise"])
def test_ternary_weight_splitting_reproduces_the_ternary_weight(rowwise):
    """BWN(w1) + BWN(w2) = TWN(w) (float64, the code's precision; no clipping, as its initialization)."""
    w = np.random.default_rng(3).standard_normal((6, 40)) * 0.05
    w1, w2 = quantize.tws_split(w, rowwise=rowwise)
    axes = 1 if rowwise else None

    def ternary(x):  # TWN by hand, float64
        delta = 0.7 * np.abs(x).mean(axis=axes, keepdims=rowwise)
        keep = np.abs(x) > delta
        alpha = (np.abs(x) * keep).sum(axis=axes, keepdims=rowwise) / keep.sum(axis=axes, keepdims=rowwise)
        return alpha * np.sign(x) * keep

    def binary(x):  # BWN by hand, float64
        return np.abs(x).mean(axis=axes, keepdims=rowwise) * np.sign(x)
    np.testing.assert_allclose(binary(w1) + binary(w2), ternary(w), rtol=1e-10, atol=1e-12)
    assert not np.allclose(w1, w2) and (ternary(w) == 0).any()


def test_quantized_forward_quantizes_each_product_and_trains_the_latent_weights():
    """One Projection: quantized_apply equals the product of the 8-bit input and the ternary kernel, by hand in
    float64; in a tiny BERT every product's input is quantized and the gradient reaches the latent weights."""
    from plmjax.layers.dense import Projection
    layer = Projection(features=(5,), kernel_axes=("embed", "mlp"))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 8)), jnp.float32)
    params = layer.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1, nn.meta.unbox(params))
    # a lone layer's kernel matches no WEIGHT_RULES path: quantized here as quantize_weights does for an FFN
    with nn.intercept_methods(quantize.activation_interceptor(8)):
        y = layer.apply({"params": {"kernel": quantize.twn(params["kernel"]), "bias": params["bias"]}}, x)
    x64 = np.asarray(x, np.float64)
    scale = 127 / np.abs(np.clip(x64, -2.5, 2.5)).max()
    x_q = np.round(np.clip(x64, -2.5, 2.5) * scale) / scale
    w = np.clip(np.asarray(params["kernel"], np.float64), -2.5, 2.5)
    delta = 0.7 * np.abs(w).mean()
    alpha = np.abs(w)[np.abs(w) > delta].mean()
    expected = x_q @ (alpha * np.sign(w) * (np.abs(w) > delta)) + np.asarray(params["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=1e-5, atol=1e-6)

    config = models.tiny_encoder(vocab_size=96, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 num_encoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 96, (3, 8)), jnp.int32)
    params = nn.meta.unbox(model.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"])
    seen = []

    def count(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, Projection):
            seen.append(np.asarray(args[0]))
        return next_fun(*args, **kwargs)
    # the outer interceptor runs first and hands its (quantized) arguments to the inner one
    with nn.intercept_methods(quantize.activation_interceptor(8)), nn.intercept_methods(count):
        model.apply({"params": quantize.quantize_weights(params)}, tokens, deterministic=True)
    assert len(seen) >= 2 * 6  # q, k, v, out, wi, wo in each layer (and the heads)
    for inputs in seen:  # at most 255 levels of one scale: what each product received was quantized
        levels = np.unique(np.abs(inputs))
        assert len(np.unique(inputs)) <= 255
        np.testing.assert_allclose(levels / levels.max() * 127, np.round(levels / levels.max() * 127), atol=1e-3)
    reference = model.apply({"params": params}, tokens, deterministic=True)["classification_logits"]
    quantized = quantize.quantized_apply(model, params, tokens, deterministic=True)["classification_logits"]
    assert not np.allclose(quantized, reference, atol=1e-6)

    def loss(p):
        out = quantize.quantized_apply(model, p, tokens, deterministic=True)
        return jnp.sum(out["classification_logits"] ** 2)
    grads = jax.grad(loss)(params)
    wi = grads["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    assert np.abs(np.asarray(wi)).max() > 0


@pytest.mark.parametrize("method", ["ternary", "binary", "int8", "lat"])
def test_quantized_model_is_quantized_apply_with_the_plain_models_parameters(method, tmp_path):
    """`quantized_model`: the plain model's parameter tree and initialization (logical axes kept), outputs and
    gradients equal to `quantized_apply`; its packed file unpacks into weights that, with only the activations
    quantized, give the same outputs."""
    config = models.tiny_encoder(vocab_size=96, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 num_encoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 96, (3, 8)), jnp.int32)
    q_model = quantize.quantized_model(model, method, activation_bits=8)
    boxed, q_boxed = (m.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"]
                      for m in (model, q_model))
    assert jax.tree.structure(boxed) == jax.tree.structure(q_boxed)
    assert nn.get_partition_spec(boxed) == nn.get_partition_spec(q_boxed)  # shards as the plain model does
    params = nn.meta.unbox(boxed)

    def logits(apply, p):
        return apply(p)["classification_logits"]
    ours = lambda p: q_model.apply({"params": p}, tokens, deterministic=True)  # noqa: E731
    reference = lambda p: quantize.quantized_apply(model, p, tokens, method=method,  # noqa: E731
                                                   deterministic=True)
    np.testing.assert_array_equal(logits(ours, params), logits(reference, params))
    grads = [jax.grad(lambda p, f=f: jnp.sum(logits(f, p) ** 2))(params) for f in (ours, reference)]
    jax.tree.map(np.testing.assert_array_equal, *grads)

    path = str(tmp_path / "packed.npz")
    sizes = quantize.export_packed(path, params, method)
    assert 0 < sizes["packed_bytes"] < sizes["float32_bytes"]
    loaded_method, unpacked = quantize.load_packed(path)
    assert loaded_method == method
    activations_only = quantize.quantized_model(model, None, activation_bits=8)
    np.testing.assert_array_equal(
        activations_only.apply({"params": unpacked}, tokens, deterministic=True)["classification_logits"],
        logits(ours, params))
