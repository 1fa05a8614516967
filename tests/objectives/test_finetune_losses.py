"""Fine-tuning objectives against hand computations in numpy (scipy's log-softmax), with example weights (the
padding rows of an evaluation batch) and unlabeled (-1) examples."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from plmjax import objectives

RNG = np.random.default_rng(0)
B, L = 4, 6


def _value(metrics, name):
    total, count = metrics[name]
    return float(total) / float(count)


def _batch(**features):
    batch = {"encoder_input_tokens": np.ones((B, L), np.int32), "encoder_token_types": np.zeros((B, L), np.int32)}
    return {**batch, **{k: jnp.asarray(v) for k, v in features.items()}}


def _nll(logits, labels):
    return -special.log_softmax(logits, axis=-1)[np.arange(len(labels)), labels]


def test_objectives_are_registered_with_their_architectures():
    expected = {"classification": "encoder_classifier", "regression": "encoder_classifier",
                "span_extraction": "encoder_span", "multiple_choice": "encoder_multiple_choice",
                "tagging": "encoder_tagger"}
    for name, arch in expected.items():
        objective = objectives.get_objective(name)
        assert objective.architecture == arch and objective.feature_converter == (
            "classification" if name == "regression" else name)
        inputs = objective.model_inputs(_batch())
        assert set(inputs) == {"input_ids", "token_type_ids"}


def test_classification_loss_and_accuracy_with_weights_and_unlabeled_rows():
    logits = RNG.normal(size=(B, 3)).astype(np.float32)
    labels = np.array([0, 2, -1, 1], np.int32)
    weights = np.array([1.0, 1.0, 1.0, 0.0], np.float32)  # the last row pads the batch
    loss, metrics = objectives.get_objective("classification").loss_fn(
        _batch(labels=labels[:, None], example_weights=weights[:, None]), {"classification_logits": logits})
    used = np.array([0, 1])  # row 2 is unlabeled, row 3 is padding
    expected = _nll(logits[used], labels[used]).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(_value(metrics, "loss"), expected, rtol=1e-6)
    assert float(metrics["loss"][1]) == 2.0
    np.testing.assert_allclose(_value(metrics, "accuracy"), np.mean(logits[used].argmax(-1) == labels[used]))


def test_classification_without_example_weights_counts_every_row():
    logits = RNG.normal(size=(B, 2)).astype(np.float32)
    labels = np.array([0, 1, 1, 0], np.int32)
    loss, metrics = objectives.get_objective("classification").loss_fn(
        _batch(labels=labels[:, None]), {"classification_logits": logits})
    np.testing.assert_allclose(float(loss), _nll(logits, labels).mean(), rtol=1e-6)
    assert float(metrics["num_examples"][0]) == B


def test_regression_is_the_weighted_mean_squared_error():
    predictions = RNG.normal(size=(B, 1)).astype(np.float32)
    values = np.array([0.5, 3.2, 4.8, 1.0], np.float32)
    weights = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    loss, metrics = objectives.get_objective("regression").loss_fn(
        _batch(label_values=values[:, None], example_weights=weights[:, None]), {"classification_logits": predictions})
    expected = np.sum((predictions[:, 0] - values) ** 2 * weights) / 3
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(_value(metrics, "loss"), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="num_labels=1"):
        objectives.get_objective("regression").loss_fn(_batch(label_values=values[:, None]),
                                                       {"classification_logits": np.zeros((B, 2), np.float32)})


def test_span_extraction_is_the_mean_of_start_and_end_cross_entropy():
    start_logits, end_logits = (RNG.normal(size=(B, L)).astype(np.float32) for _ in range(2))
    starts, ends = np.array([1, 0, 3, 2], np.int32), np.array([2, 0, 5, 2], np.int32)
    start_logits[0, 1] += 10.0  # example 0 predicts both right, example 1 only its start
    end_logits[0, 2] += 10.0
    start_logits[1, 0] += 10.0
    weights = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    loss, metrics = objectives.get_objective("span_extraction").loss_fn(
        _batch(start_positions=starts[:, None], end_positions=ends[:, None], example_weights=weights[:, None]),
        {"start_logits": start_logits, "end_logits": end_logits})
    per_example = (_nll(start_logits, starts) + _nll(end_logits, ends)) / 2
    expected = np.sum(per_example * weights) / 3
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(_value(metrics, "loss"), expected, rtol=1e-6)
    both = (start_logits.argmax(-1) == starts) & (end_logits.argmax(-1) == ends)
    np.testing.assert_allclose(_value(metrics, "accuracy"), np.sum(both * weights) / 3)
    np.testing.assert_allclose(_value(metrics, "start_accuracy"),
                               np.sum((start_logits.argmax(-1) == starts) * weights) / 3)


def test_multiple_choice_cross_entropy_over_choices():
    logits = RNG.normal(size=(B, 4)).astype(np.float32)
    labels = np.array([3, 0, 1, 2], np.int32)
    loss, metrics = objectives.get_objective("multiple_choice").loss_fn(
        _batch(labels=labels[:, None]), {"choice_logits": logits})
    np.testing.assert_allclose(float(loss), _nll(logits, labels).mean(), rtol=1e-6)
    np.testing.assert_allclose(_value(metrics, "accuracy"), np.mean(logits.argmax(-1) == labels))


def test_tagging_weights_tokens_by_tag_weights_and_example_weights():
    logits = RNG.normal(size=(B, L, 5)).astype(np.float32)
    tags = RNG.integers(0, 5, size=(B, L)).astype(np.int32)
    tag_weights = (RNG.random((B, L)) < 0.6).astype(np.float32)
    tag_weights[0, 0] = 1.0
    example = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    loss, metrics = objectives.get_objective("tagging").loss_fn(
        _batch(tag_labels=tags, tag_weights=tag_weights, example_weights=example[:, None]), {"tag_logits": logits})
    w = tag_weights * example[:, None]
    nll = -np.take_along_axis(special.log_softmax(logits, -1), tags[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), np.sum(nll * w) / np.sum(w), rtol=1e-6)
    np.testing.assert_allclose(_value(metrics, "accuracy"), np.sum((logits.argmax(-1) == tags) * w) / np.sum(w),
                               rtol=1e-6)
