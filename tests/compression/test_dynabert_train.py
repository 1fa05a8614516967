"""DynaBERT's adaptive training (compression/dynabert_train.py): the teacher layers each depth matches (the code's
`kept_layers_index`), the summed loss of all (width, depth) sub-networks against a float64 hand computation from
separately extracted sub-networks, and a run of `plmjax train` that scores every sub-network at its end."""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models
from plmjax.compression import distill, dynabert, dynabert_train
from tests.compression import helpers


def test_teacher_hidden_indices_are_the_codes_kept_layers():
    np.testing.assert_array_equal(dynabert_train.teacher_hidden_indices(12, 0.5), [0, 2, 4, 6, 8, 10, 12])
    np.testing.assert_array_equal(dynabert_train.teacher_hidden_indices(4, 0.75), [0, 1, 2, 4])
    np.testing.assert_array_equal(dynabert_train.teacher_hidden_indices(4, 1.0), [0, 1, 2, 3, 4])
    options = dynabert_train.AdaptiveOptions((0.5, 1.0), (0.5, 1.0))
    assert options.subnetworks() == [(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5)]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_loss_is_the_sum_over_subnetworks_by_hand():
    config = helpers.teacher_config(num_encoder_layers=4)
    teacher = models.build_model("encoder_classifier", config, num_labels=3)
    options = dynabert_train.AdaptiveOptions((1.0, 0.5), (1.0, 0.5), lambda1=1.0, lambda2=0.3)
    module = dynabert_train.adaptive_model(teacher, models.build_model("encoder_classifier", config, num_labels=3),
                                           options)
    params = helpers.init(module)
    assert set(params) == {"teacher", "student"}
    batch = helpers.batch()
    inputs = {"input_ids": jnp.asarray(batch["encoder_input_tokens"]),
              "token_type_ids": jnp.asarray(batch["encoder_token_types"]),
              "input_mask": jnp.asarray(batch["encoder_input_tokens"] > 0)}
    outputs = module.apply({"params": params}, **inputs, deterministic=True)
    loss, metrics = dynabert_train.loss_fn(batch, outputs, options=options)

    def run(model, p):
        out, inter = __import__("plmjax.models.intermediates", fromlist=["capture"]).capture(
            model, {"params": p}, **inputs, what=("hidden_states",), deterministic=True)
        (stack,) = inter.values()
        return np.asarray(out["classification_logits"], np.float64), np.asarray(stack["hidden_states"], np.float64)
    t_logits, t_hidden = run(teacher, params["teacher"])
    expected = np.zeros(len(t_logits))
    for width, depth in options.subnetworks():
        sub_config, sub_params = dynabert.extract(jax.device_get(params["student"]), config, width, depth)
        logits, hidden = run(teacher.clone(config=sub_config), sub_params)
        logit_loss = -np.sum(_softmax(t_logits) * np.log(_softmax(logits)), axis=-1)
        kept = dynabert_train.teacher_hidden_indices(4, depth)
        rep = sum(((hidden[j] - t_hidden[k]) ** 2).reshape(len(t_logits), -1).mean(-1) for j, k in enumerate(kept))
        expected += 1.0 * logit_loss + 0.3 * rep
        name = dynabert_train.subnetwork_name(width, depth)
        np.testing.assert_allclose(float(metrics[f"logit_loss/{name}"][0]), logit_loss.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)
    # the full sub-network is the student itself: the run evaluates it
    np.testing.assert_allclose(np.asarray(outputs["classification_logits"], np.float64),
                               run(teacher, params["student"])[0], rtol=1e-6)


def test_a_width_that_leaves_no_head_is_one_error():
    config = helpers.teacher_config()  # 4 heads
    model = models.build_model("encoder_classifier", config, num_labels=3)
    with pytest.raises(distill.DistillationConfigError, match="leaves no head, neuron or layer"):
        dynabert_train.adaptive_model(model, model, dynabert_train.AdaptiveOptions((1.0, 0.1)))
    with pytest.raises(distill.DistillationConfigError, match="use the teacher's config for both"):
        dynabert_train.adaptive_model(model, models.build_model("encoder_classifier", helpers.student_config(
            num_heads=4), num_labels=3))
