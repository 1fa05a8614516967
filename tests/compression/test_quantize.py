"""quantize.py: TWN / BWN / symmetric quantizers against closed forms (float64 by hand), their clipped
straight-through gradients, bit packing, and the packed export that unpacks into the fake-quantized model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from plmjax import models
from plmjax.compression import packing, quantize

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
        packed = packing.pack_codes(codes, bits)
        assert packed.dtype == np.uint8 and len(packed) == -(-count * bits // 8)
        np.testing.assert_array_equal(packing.unpack_codes(packed, bits, count), codes)


def test_ternary_codes_pack_five_to_a_byte():
    """Base-3 packing: every 5-digit combination is one byte value (3^5 = 243 of 256), any length round-trips."""
    every = np.stack(np.meshgrid(*[np.arange(3)] * 5, indexing="ij"), -1).reshape(-1, 5)  # [243, 5]
    packed = packing.pack_trits(every.reshape(-1))
    assert packed.dtype == np.uint8 and sorted(packed.tolist()) == list(range(243))
    assert packed[-1] == 242 and packed[1] == 81  # (0,0,0,0,1): the first code is the lowest digit
    rng = np.random.default_rng(3)
    for count in (1, 4, 5, 6, 1001):
        codes = rng.integers(0, 3, count)
        packed = packing.pack_trits(codes)
        assert len(packed) == -(-count // 5)
        np.testing.assert_array_equal(packing.unpack_trits(packed, count), codes)


@pytest.mark.parametrize("method", ["ternary", "binary", "int8", "lat"])
def test_packed_model_unpacks_into_the_fake_quantized_one(method):
    config = models.tiny_encoder(vocab_size=96, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 num_encoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 96, (3, 8)), jnp.int32)
    params = nn.meta.unbox(model.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"])
    fake = quantize.quantize_weights(params, method)
    packed = packing.pack_weights(params, method)
    unpacked = packing.unpack_weights(packed, method)
    for a, b in zip(jax.tree.leaves(fake), jax.tree.leaves(unpacked)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    outputs = [model.apply({"params": p}, tokens, deterministic=True)["classification_logits"]
               for p in (fake, unpacked)]
    np.testing.assert_array_equal(*outputs)
    assert not np.array_equal(outputs[0], model.apply({"params": params}, tokens,
                                                      deterministic=True)["classification_logits"])
    # Size of the quantized tensors alone: 1.6 / 1 / 8 bits a weight plus their scales.
    quantized = {path: item for path, item in packed.items() if isinstance(item, dict)}
    weights = sum(int(np.prod(item["shape"])) for item in quantized.values())
    ratio = packing.packed_bytes(quantized) / (4 * weights)
    assert ratio <= {"ternary": 1 / 15, "lat": 1 / 15, "binary": 1 / 20, "int8": 1 / 3.5}[method], ratio
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
        if context.method_name in ("score_product", "context_product"):
            seen.extend(np.asarray(x) for x in args[:2])
        return next_fun(*args, **kwargs)
    # the outer interceptor runs first and hands its (quantized) arguments to the inner one
    with nn.intercept_methods(quantize.activation_interceptor(8)), nn.intercept_methods(count):
        model.apply({"params": quantize.quantize_weights(params)}, tokens, deterministic=True)
    assert len(seen) >= 2 * (6 + 4)  # q, k, v, out, wi, wo, and Q, K, probs, V inside attention, in each layer
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
    sizes = packing.export_packed(path, params, method)
    assert 0 < sizes["packed_bytes"] < sizes["float32_bytes"]
    loaded_method, unpacked = packing.load_packed(path)
    assert loaded_method == method
    activations_only = quantize.quantized_model(model, None, activation_bits=8)
    np.testing.assert_array_equal(
        activations_only.apply({"params": unpacked}, tokens, deterministic=True)["classification_logits"],
        logits(ours, params))


def test_attention_quantizes_query_key_probabilities_and_values_as_the_code():
    """TernaryBERT's BertSelfAttention with quantize_act, in float64 by hand: 8-bit inputs to the q/k/v and output
    projections, and 8-bit query and key before the scores, probabilities and values before the context, each
    tensor with its own dynamic scale (a padded key masked out)."""
    from plmjax.layers.attention import MultiHeadAttention
    rng = np.random.default_rng(7)
    layer = MultiHeadAttention(num_heads=2, head_dim=4)
    x = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
    mask = np.ones((2, 1, 5, 5), bool)
    mask[1, :, :, 4] = False
    params = nn.meta.unbox(layer.init(jax.random.key(1), x, mask=jnp.asarray(mask))["params"])
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(0, 0.3, p.shape), p.dtype), params)
    with nn.intercept_methods(quantize.activation_interceptor(8)):
        y = layer.apply({"params": params}, x, mask=jnp.asarray(mask))

    def q8(a):
        a = np.clip(a, -2.5, 2.5)
        scale = 127 / np.abs(a).max()
        return np.round(a * scale) / scale

    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x_q = q8(np.asarray(x, np.float64))
    query, key, value = (np.einsum("ble,ehd->blhd", x_q, p64[n]["kernel"]) + p64[n]["bias"]
                         for n in ("query", "key", "value"))
    scores = np.einsum("bqhd,bkhd->bhqk", q8(query), q8(key)) / 2.0
    scores = np.where(mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("bhqk,bkhd->bqhd", q8(probs), q8(value))
    expected = np.einsum("bqhd,hde->bqe", q8(context), p64["out"]["kernel"]) + p64["out"]["bias"]
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=1e-4, atol=1e-5)


def _tiny_classifier():
    config = models.tiny_encoder(vocab_size=96, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                 num_encoder_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build_model("encoder_classifier", config, num_labels=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(5, 96, (3, 8)), jnp.int32)
    return model, tokens


def test_split_binary_model_starts_as_the_ternary_one_and_packs_in_two_bits(tmp_path):
    """BinaryBERT: `tws_params` splits every quantized tensor of a (trained-like) ternary model into two latent
    weights whose binary quantizations add up to its ternary one, so the split binary model computes the ternary
    model's function at initialization (float32: 1e-5); its parameters shard as the plain model's plus a twin for
    each quantized tensor; the packed file (two 1-bit halves and their scales) unpacks bit for bit."""
    model, tokens = _tiny_classifier()
    split_model = quantize.quantized_model(model, "split_binary", activation_bits=8)
    boxed = model.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"]
    split_boxed = split_model.init({"params": jax.random.key(0)}, tokens, deterministic=True)["params"]
    specs, split_specs = (traverse_util.flatten_dict(nn.get_partition_spec(b), sep="/") for b in (boxed, split_boxed))
    twins = {path: spec for path, spec in split_specs.items() if path.endswith("_split")}
    assert len(twins) == 2 * 6 + 1 and {**specs, **twins} == split_specs
    assert all(split_specs[path.removesuffix("_split")] == spec for path, spec in twins.items())
    # latent weights as after training: some beyond the clip, whose ternary value TWS must keep
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.5, p.shape).astype(np.float32),
                          nn.meta.unbox(boxed))
    params["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"][0, :3] = [3.0, -4.0, 2.6]
    split = quantize.tws_params(params)
    binary = quantize.quantize_weights(split, "split_binary")
    assert jax.tree.structure(quantize.quantize_weights(params, "ternary")) == jax.tree.structure(binary)
    flat, original = (traverse_util.flatten_dict(p, sep="/") for p in (split, params))

    def mean_abs(x, rowwise):  # float64: BWN's / TWN's scale per tensor or per row
        return np.abs(x).mean(axis=1, keepdims=True) if rowwise else np.abs(x).mean()
    for path in twins:  # by hand in float64, from the float32 halves as stored
        base, rowwise = path.removesuffix("_split"), path.endswith("embedding_split")
        w1, w2 = (np.asarray(flat[p], np.float64).reshape(len(flat[p]), -1) for p in (base, path))
        w = np.clip(np.asarray(original[base], np.float64), -2.5, 2.5).reshape(w1.shape)
        kept = np.abs(w) > 0.7 * mean_abs(w, rowwise)
        alpha = (np.abs(w) * kept).sum(axis=1 if rowwise else None, keepdims=rowwise) / kept.sum(
            axis=1 if rowwise else None, keepdims=rowwise)
        np.testing.assert_allclose(mean_abs(w1, rowwise) * np.sign(w1) + mean_abs(w2, rowwise) * np.sign(w2),
                                   alpha * np.sign(w) * kept, rtol=1e-6, atol=1e-6 * np.max(alpha))
        assert np.mean(np.sign(w1) != np.sign(w2)) > 0.1  # each half really is a different binary weight
    outputs = [m.apply({"params": p}, tokens, deterministic=True)["classification_logits"] for m, p in (
        (quantize.quantized_model(model, "ternary", activation_bits=8), params), (split_model, split))]
    np.testing.assert_allclose(np.asarray(outputs[1], np.float64), np.asarray(outputs[0], np.float64),
                               rtol=1e-5, atol=1e-5)

    packed = packing.pack_weights(split, "split_binary")
    for a, b in zip(jax.tree.leaves(binary), jax.tree.leaves(packing.unpack_weights(packed, "split_binary"))):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    quantized = {path: item for path, item in packed.items() if isinstance(item, dict)}
    weights = sum(int(np.prod(item["shape"])) for item in quantized.values()) // 2
    assert len(quantized) == 2 * len(twins) and packing.packed_bytes(quantized) / (4 * weights) <= 1 / 10
    sizes = packing.export_packed(str(tmp_path / "packed.npz"), split, "split_binary")
    assert sizes["float32_bytes"] == 4 * packing.parameter_count(params) == 4 * packing.parameter_count(split)

    with pytest.raises(ValueError, match="plmjax convert --tws"):
        quantize.quantize_weights(params, "split_binary")


@pytest.mark.parametrize("method", ["ternary", "binary", "lat"])
@pytest.mark.parametrize("shape, rowwise", [((384, 1536), False), ((12, 32, 384), False), ((3000, 384), True)])
def test_quantizers_give_the_same_bits_eagerly_and_inside_jit(method, shape, rowwise):
    """A weight at a threshold must fall on the same side in the training step, in evaluation and in the packed
    file: the scales come from a fixed pairwise sum times one constant, so eager and jitted (and jitted inside a
    larger computation) results are bit-identical. With jnp.mean they were not: XLA sums in its own order and folds
    constants inside jit, and a real TernaryBERT student's packed file scored 2 of 872 sentences differently."""
    w = jnp.asarray(np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32))
    eager = quantize._weight(w, method, quantize.CLIP, rowwise)
    jitted = jax.jit(lambda w: quantize._weight(w, method, quantize.CLIP, rowwise))(w)
    inside = jax.jit(lambda w: 2.0 * quantize._weight(1.0 * w + 0.0, method, quantize.CLIP, rowwise))(w) / 2.0
    np.testing.assert_array_equal(eager, jitted)
    np.testing.assert_array_equal(eager, inside)


@pytest.mark.parametrize("quantizer", [quantize.twn, quantize.bwn, lambda w, clip: quantize.symmetric(w, 8, clip)],
                         ids=["twn", "bwn", "int8"])
def test_clip_none_clips_nothing(quantizer):
    """clip=None: the closed forms on the unclipped values (max|x| = 7 is the int8 scale's), every gradient
    passes; the same as any bound above max|x|."""
    w = jnp.asarray([-3.0, -2.5, -1.0, 0.0, 0.3, 2.49, 2.5, 7.0], jnp.float32)
    g = jnp.arange(1.0, 9.0)
    grad = jax.grad(lambda x: jnp.sum(quantizer(x, None) * g))(w)
    np.testing.assert_array_equal(np.asarray(grad), np.arange(1.0, 9.0))
    np.testing.assert_array_equal(np.asarray(quantizer(w, None)), np.asarray(quantizer(w, 8.0)))
    assert not np.array_equal(np.asarray(quantizer(w, None)), np.asarray(quantizer(w, 2.5)))
    w64 = np.asarray(w, np.float64)
    if quantizer is quantize.twn:  # delta = 0.7 * 18.79 / 8 = 1.644: kept -3, -2.5, 2.49, 2.5, 7 (alpha 3.498)
        kept = np.abs(w64) > 0.7 * np.abs(w64).mean()
        expected = np.abs(w64)[kept].mean() * np.sign(w64) * kept
    elif quantizer is quantize.bwn:  # 0 -> +alpha, as `_binary` (and the packed codes) do
        expected = np.abs(w64).mean() * np.where(w64 >= 0, 1.0, -1.0)
    else:
        expected = np.round(w64 * 127 / 7.0) / (127 / 7.0)
    np.testing.assert_allclose(np.asarray(quantizer(w, None), np.float64), expected, rtol=1e-6)
