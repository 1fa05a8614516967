"""Layer-wise learning-rate decay read off the per-leaf updates (and equal to per-group AdamW); the train step's
micro-batch accumulation (the one gradient-accumulation mechanism) equals the full batch."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from plmjax import models, objectives
from plmjax.train import optim, step as step_lib

LR, DECAY = 0.1, 0.5


def tiny(**overrides):
    fields = dict(vocab_size=50, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, max_length=32, num_encoder_layers=3,
                  dropout_rate=0.0, attention_dropout_rate=0.0)
    return models.tiny_encoder(**{**fields, **overrides})


def _classifier_params(boxed=False, **overrides):
    model = models.build_model("encoder_classifier", tiny(**overrides), num_labels=2)
    params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    return model, (params if boxed else nn.meta.unbox(params))


def _expected_factor(path: str) -> float:
    """By hand, for a 3-layer encoder: layers_i -> DECAY**(3 - i), embeddings -> DECAY**4, the rest 1."""
    for i in range(3):
        if f"/layers_{i}/" in path:
            return DECAY ** (3 - i)
    if path.startswith(("bert/encoder/embedder/", "bert/token_embedder/")):
        return DECAY ** 4
    assert path.startswith(("bert/pooler/", "bert/mlm_head/", "classifier/")), path
    return 1.0


@pytest.mark.parametrize("overrides", [{}, {"embedding_size": 16}])
def test_each_leaf_learns_at_its_layer_wise_rate(overrides):
    _, params = _classifier_params(**overrides)
    tx, _ = optim.make_optimizer("sgd", learning_rate=LR, schedule="constant", clip_norm=None,
                                 layerwise_lr_decay=DECAY)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    rates = {path: -np.unique(np.asarray(u)) for path, u in traverse_util.flatten_dict(updates, sep="/").items()}
    seen = set()
    for path, rate in rates.items():
        assert rate.shape == (1,), (path, rate)
        np.testing.assert_allclose(rate[0], LR * _expected_factor(path), rtol=1e-6, err_msg=path)
        seen.add(round(float(rate[0] / LR), 6))
    assert seen == {1.0, 0.5, 0.25, 0.125, 0.0625}


def test_layer_wise_factors_on_boxed_parameters_and_adamw_state():
    _, boxed = _classifier_params(boxed=True)
    factors = optim.layerwise_lr_factors(boxed, DECAY)  # boxed trees keep their boxes
    flat = traverse_util.flatten_dict(nn.meta.unbox(factors), sep="/")
    assert flat["bert/encoder/layers_2/mlp/wi/kernel"] == DECAY and flat["classifier/dense/kernel"] == 1.0
    tx, _ = optim.make_optimizer("adamw", learning_rate=LR, schedule="constant", layerwise_lr_decay=DECAY)
    state = jax.eval_shape(tx.init, boxed)  # what state_shardings does: the moments keep the logical axes
    assert any(isinstance(x, nn.LogicallyPartitioned)
               for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)))


def test_layer_wise_decay_with_adamw_equals_per_group_learning_rates():
    """AdamW with decay d equals AdamW with learning rate LR * factor on each group (torch's param groups),
    weight decay included."""
    _, params = _classifier_params()
    grads = jax.tree.map(lambda p: 0.3 + 0.01 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape), params)
    kwargs = dict(schedule="constant", clip_norm=None, weight_decay=0.1)
    tx, _ = optim.make_optimizer("adamw", learning_rate=LR, layerwise_lr_decay=DECAY, **kwargs)
    updates = traverse_util.flatten_dict(tx.update(grads, tx.init(params), params)[0], sep="/")
    checked = 0
    for factor in {_expected_factor(path) for path in updates}:
        group, _ = optim.make_optimizer("adamw", learning_rate=LR * factor, **kwargs)
        expected = traverse_util.flatten_dict(group.update(grads, group.init(params), params)[0], sep="/")
        for path in updates:
            if _expected_factor(path) == factor:
                np.testing.assert_allclose(updates[path], expected[path], rtol=1e-6, atol=1e-12, err_msg=path)
                checked += 1
    assert checked == len(updates)


def test_layer_wise_decay_errors():
    model = models.build_model("encoder_decoder", models.tiny_encoder_decoder())
    ids = jnp.ones((1, 4), jnp.int32)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, ids)["params"])  # shapes only
    with pytest.raises(ValueError, match="one stack of layers"):
        optim.layerwise_lr_factors(params, DECAY)
    with pytest.raises(ValueError, match="layerwise_lr_decay"):
        optim.make_optimizer(layerwise_lr_decay=-0.1, schedule="constant")


def test_warmup_ratio_sets_the_warmup_steps():
    _, schedule = optim.make_optimizer(learning_rate=1.0, warmup_ratio=0.1, total_steps=200)
    assert float(schedule(10)) == pytest.approx(0.5) and float(schedule(20)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        optim.make_optimizer(warmup_ratio=0.1, warmup_steps=5, total_steps=100)


def test_micro_batch_accumulation_equals_the_full_batch():
    model, params = _classifier_params(num_encoder_layers=1)
    objective = objectives.get_objective("classification")
    rng = np.random.default_rng(0)
    batch = {"encoder_input_tokens": jnp.asarray(rng.integers(3, 50, size=(8, 10)), jnp.int32),
             "encoder_token_types": jnp.zeros((8, 10), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, 2, size=(8, 1)), jnp.int32)}
    grads = jax.jit(step_lib.accumulated_grads, static_argnums=(3, 4, 5))
    full, metrics = grads(params, batch, jax.random.key(0), model, objective, 1)
    micro, micro_metrics = grads(params, batch, jax.random.key(0), model, objective, 2)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(micro)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(micro_metrics["loss"][0], metrics["loss"][0], rtol=1e-6)
    assert float(micro_metrics["loss"][1]) == float(metrics["loss"][1]) == 8.0


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor"])
def test_layer_wise_decay_on_a_scanned_stack_equals_the_unrolled_one(name):
    """The factors of a scanned stack run along the leading [num_layers] axis of its leaves: one optimizer step on
    scanned parameters (and gradients) is the unrolled step, converted with layout.scan_params. LAMB and adafactor
    read whole parameters (trust ratio, block RMS), so they run per layer on a scanned stack (`optim.per_layer`);
    their state is stacked per layer too, AdamW's is exactly the unrolled state scanned."""
    from plmjax.models import layout
    _, params = _classifier_params()
    grads = jax.tree.map(lambda p: 0.3 + 0.01 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape), params)
    tx, _ = optim.make_optimizer(name, learning_rate=LR, schedule="constant", clip_norm=1.0, layerwise_lr_decay=DECAY,
                                 weight_decay=0.1)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    scanned = layout.scan_params(params)
    assert layout.is_scanned(scanned) and scanned["bert"]["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape[0] == 3
    factors = optim.layerwise_lr_factors(scanned, DECAY)
    np.testing.assert_array_equal(factors["bert"]["encoder"]["layers"]["mlp"]["wi"]["kernel"].reshape(-1),
                                  [DECAY ** 3, DECAY ** 2, DECAY])
    scanned_updates, scanned_state = jax.jit(tx.update)(layout.scan_params(grads), tx.init(scanned), scanned)
    for want, got in ((updates, scanned_updates),) + (((state, scanned_state),) if name == "adamw" else ()):
        want = layout.scan_params(want)
        assert jax.tree.structure(want) == jax.tree.structure(got)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # relative to the leaf's scale: weight
            scale = np.abs(a).max(initial=0.0)  # decay cancels the step in some elements, not in their leaf
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * scale)
