"""Pre-training models: the NSP/SOP and SBO heads wrap EncoderModel unchanged and compute what the papers say
(checked against numpy re-implementations); ELECTRA shares one token table and samples from its generator."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy import special, stats

from plmjax.models import build_model, config as config_lib, electra as electra_lib
from plmjax.models.encoder import EncoderModel

VOCAB = 50


def tiny(**overrides):
    return config_lib.tiny_encoder(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                                   dropout_rate=0.0, attention_dropout_rate=0.0, **overrides)


def ids(batch=2, length=12, seed=0):
    tokens = np.random.default_rng(seed).integers(6, VOCAB, size=(batch, length)).astype(np.int32)
    tokens[1, -3:] = 0  # right padding
    return jnp.asarray(tokens)


def layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def test_sentence_pair_model_wraps_the_encoder_and_classifies_the_pooled_output():
    config = tiny()
    model = build_model("encoder_sentence_pair", config)
    x, types = ids(), jnp.asarray(np.repeat([[0] * 6 + [1] * 6], 2, axis=0))
    params = nn.meta.unbox(model.init(jax.random.key(0), x, token_type_ids=types)["params"])
    assert set(params) == {"bert", "sentence_head"}
    out = model.apply({"params": params}, x, token_type_ids=types)
    plain = EncoderModel(config).apply({"params": params["bert"]}, x, token_type_ids=types)
    for key in plain:
        np.testing.assert_array_equal(out[key], plain[key])
    head = params["sentence_head"]["dense"]
    expected = np.asarray(out["pooled"]) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(out["sentence_logits"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooler=False"):
        build_model("encoder_sentence_pair", tiny(pooler=False)).init(jax.random.key(0), x)


def test_span_boundary_head_matches_a_numpy_reimplementation():
    config = tiny()
    model = build_model("encoder_span_boundary", config)
    x = ids()
    left = jnp.asarray([[0, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5, 5, 0, 0, 0, 0, 0]])
    right = jnp.asarray([[0, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 8, 8, 0, 0, 0, 0, 0]])
    positions = jnp.asarray([[0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]])
    params = nn.meta.unbox(model.init(jax.random.key(1), x)["params"])
    out = model.apply({"params": params}, x, span_left=left, span_right=right, span_positions=positions)
    head = jax.tree.map(np.asarray, params["span_boundary_head"])
    hidden = np.asarray(out["hidden_states"])
    rows = np.arange(2)[:, None]
    h = np.concatenate([hidden[rows, np.asarray(left)], hidden[rows, np.asarray(right)],
                        head["position_embedder"]["embedding"][np.asarray(positions)]], axis=-1)
    for i in range(2):
        h = h @ head[f"dense_{i}"]["kernel"] + head[f"dense_{i}"]["bias"]
        h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))  # exact GeLU
        h = layer_norm(h, head[f"norm_{i}"]["scale"], head[f"norm_{i}"]["bias"], config.norm_eps)
    expected = h @ np.asarray(params["bert"]["token_embedder"]["embedding"]).T + head["bias"]
    np.testing.assert_allclose(out["span_logits"], expected, rtol=2e-4, atol=2e-4)
    plain = EncoderModel(config).apply({"params": params["bert"]}, x)
    np.testing.assert_array_equal(out["logits"], plain["logits"])


def test_electra_shares_the_token_table_and_sizes_the_generator():
    config = tiny()
    model = build_model("electra", config)
    params = nn.meta.unbox(model.init(jax.random.key(0), ids())["params"])
    assert set(params) - {"context"} == {"token_embedder", "generator", "generator_head", "discriminator",
                                         "discriminator_head"}  # one token table, no second one in a stack
    assert "token_embedder" not in params["generator"]["embedder"] and "token_embedder" not in params["discriminator"]
    assert params["token_embedder"]["embedding"].shape == (VOCAB, 32)
    generator = electra_lib.generator_config(config)
    assert (generator.emb_dim, generator.num_heads, generator.mlp_dim, generator.head_dim) == (8, 1, 16, 16)
    assert params["generator"]["layers_0"]["mlp"]["wi"]["kernel"].shape == (8, 16)
    assert params["generator"]["embedder"]["embedding_projection"]["kernel"].shape == (32, 8)  # 32 -> 8
    # Both stacks read the one table: perturbing it changes the generator and the discriminator.
    x = ids()
    out = model.apply({"params": params}, x)
    bumped = jax.tree.map(lambda a: a, params)
    noise = jax.random.normal(jax.random.key(5), params["token_embedder"]["embedding"].shape) * 0.1
    bumped["token_embedder"]["embedding"] = params["token_embedder"]["embedding"] + noise  # random: LayerNorm undoes a shift
    out2 = model.apply({"params": bumped}, x)
    assert not np.allclose(out["logits"], out2["logits"]) and not np.allclose(out["rtd_logits"], out2["rtd_logits"])


def test_electra_samples_from_the_generator_in_graph():
    config = tiny()
    model = build_model("electra", config)
    x = ids()
    masked = np.zeros(x.shape, bool)
    masked[0, 3] = masked[1, 2] = True
    params = nn.meta.unbox(model.init(jax.random.key(0), x)["params"])
    # Sharpen nothing: sample the untrained generator many times and compare with its softmax.
    apply = jax.jit(lambda rng: model.apply({"params": params}, x, original_ids=x, masked_positions=masked,
                                            deterministic=False, rngs={"dropout": rng}))
    outs = [apply(jax.random.key(i)) for i in range(600)]
    for out in outs[:5]:
        d = np.asarray(out["discriminator_input_ids"])
        np.testing.assert_array_equal(d[~masked], np.asarray(x)[~masked])  # only masked positions change
        np.testing.assert_array_equal(out["rtd_labels"], (d != np.asarray(x)) & (np.asarray(x) != 0))
    samples = np.array([int(o["discriminator_input_ids"][0, 3]) for o in outs])
    probs = np.asarray(jax.nn.softmax(outs[0]["logits"][0, 3]), np.float64)
    probs /= probs.sum()  # float32 softmax sums to 1 only within its rounding: scipy checks the totals to 1.5e-8
    observed = np.bincount(samples, minlength=VOCAB)
    assert stats.chisquare(observed, probs * len(samples)).pvalue > 0.001
    deterministic = [model.apply({"params": params}, x, original_ids=x, masked_positions=masked) for _ in range(2)]
    np.testing.assert_array_equal(deterministic[0]["discriminator_input_ids"],
                                  deterministic[1]["discriminator_input_ids"])
