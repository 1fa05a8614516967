"""The evaluation batcher: every example once, in order, the last batch padded with rows whose weights are 0."""

import numpy as np
import pytest
import tensorflow as tf

from plmjax import sharding
from plmjax.data import batching


def _features(n):
    rng = np.random.default_rng(0)
    return {"encoder_input_tokens": rng.integers(1, 50, (n, 6)).astype(np.int32),
            "encoder_target_tokens": rng.integers(1, 50, (n, 6)).astype(np.int32),
            "encoder_loss_weights": (rng.random((n, 6)) < 0.5).astype(np.int32),  # int32, as seqio's LM converter
            "tag_weights": np.ones((n, 6), np.float32), "labels": np.arange(n, dtype=np.int32)[:, None]}


def test_padding_rows_copy_the_last_example_with_every_weight_and_target_zeroed():
    rows = _features(3)
    batch = batching.pad_batch(rows, 5)
    assert batch["example_weights"].tolist() == [[1.0], [1.0], [1.0], [0.0], [0.0]]
    assert batch["encoder_loss_weights"].dtype == np.float32
    for name, value in rows.items():
        np.testing.assert_array_equal(batch[name][:3], value)  # real rows untouched
    np.testing.assert_array_equal(batch["encoder_input_tokens"][3:], rows["encoder_input_tokens"][[2, 2]])
    np.testing.assert_array_equal(batch["labels"][3:], rows["labels"][[2, 2]])
    for name in ("encoder_target_tokens", "encoder_loss_weights", "tag_weights"):
        assert not batch[name][3:].any(), name
    given = batching.pad_batch({**rows, "example_weights": np.asarray([[0.5], [1.0], [0.0]], np.float32)}, 4)
    assert given["example_weights"].tolist() == [[0.5], [1.0], [0.0], [0.0]]  # the batch's own weights kept


@pytest.mark.parametrize("total,batch_size", [(13, 4), (12, 4), (3, 8), (1, 1)])
def test_every_example_once_in_order(total, batch_size):
    features = _features(total)
    for batches in (list(batching.array_batches(features, batch_size)),
                    list(batching.dataset_batches(tf.data.Dataset.from_tensor_slices(features), batch_size))):
        assert len(batches) == -(-total // batch_size)
        assert all(len(b.features["labels"]) == batch_size for b in batches)  # one shape: one compiled step
        labels = np.concatenate([b.features["labels"][:b.num_real, 0] for b in batches])
        assert labels.tolist() == list(range(total))
        weights = np.concatenate([b.features["example_weights"][:, 0] for b in batches])
        assert weights.sum() == total and weights.tolist() == sorted(weights.tolist(), reverse=True)


def test_num_batches_and_raw_extras_pair_with_their_rows():
    features = _features(10)
    extras = tf.data.Dataset.from_tensor_slices({"text": [f"example {i}" for i in range(10)]})
    batches = list(batching.dataset_batches(tf.data.Dataset.from_tensor_slices(features), 4, extras=extras))
    assert [b.num_real for b in batches] == [4, 4, 2]
    for b in batches:
        assert [e["text"].decode() for e in b.extras] == [f"example {i}" for i in b.features["labels"][:b.num_real, 0]]
    first = list(batching.dataset_batches(tf.data.Dataset.from_tensor_slices(features), 4, num_batches=2))
    assert [b.num_real for b in first] == [4, 4]


def test_batch_size_must_split_over_the_data_parallel_devices():
    mesh = sharding.create_mesh()  # 8 fake devices, all on the data axis
    assert batching.data_parallel_size(mesh) == 8
    batching.check_batch_size(16, mesh)
    with pytest.raises(ValueError, match="batch_size=12 must be a multiple of the mesh's 8 data-parallel"):
        batching.check_batch_size(12, mesh)


def _batch_and_outputs(rng, rows, length=6, vocab=11, labels=3, mask=2):
    tokens = lambda high, *shape: rng.integers(1, high, (rows,) + shape).astype(np.int32)  # noqa: E731
    batch = {"encoder_input_tokens": tokens(vocab, length), "encoder_target_tokens": tokens(vocab, length),
             "encoder_loss_weights": (rng.random((rows, length)) < 0.5).astype(np.float32),
             "decoder_input_tokens": tokens(vocab, length), "decoder_target_tokens": tokens(vocab, length),
             "decoder_loss_weights": np.ones((rows, length), np.float32),
             "encoder_sentence_labels": tokens(2, 1) - 1, "labels": tokens(labels + 1, 1) - 1,
             "label_values": rng.random((rows, 1)).astype(np.float32),
             "start_positions": tokens(length, 1), "end_positions": tokens(length, 1),
             "tag_labels": tokens(labels, length), "tag_weights": (rng.random((rows, length)) < 0.7).astype(np.float32),
             "mask_positions": tokens(length, mask), "verbalizer_tokens": tokens(vocab, labels, mask),
             "verbalizer_weights": np.ones((rows, labels, mask), np.float32)}
    normal = lambda *shape: rng.normal(size=(rows,) + shape).astype(np.float32)  # noqa: E731
    outputs = {"logits": normal(length, vocab), "span_logits": normal(length, vocab), "sentence_logits": normal(2),
               "rtd_logits": normal(length), "rtd_labels": tokens(2, length) - 1,
               "classification_logits": normal(labels), "choice_logits": normal(labels),
               "start_logits": normal(length), "end_logits": normal(length), "tag_logits": normal(length, labels)}
    return batch, outputs


def _objectives():
    from plmjax import objectives
    for name in sorted(objectives.OBJECTIVES):
        yield pytest.param(objectives.OBJECTIVES[name], id=name)


@pytest.mark.parametrize("objective", _objectives())
def test_padding_rows_add_nothing_to_any_objectives_metrics(objective):
    rng = np.random.default_rng(1)
    rows, outputs = _batch_and_outputs(rng, 3)
    _, extra_outputs = _batch_and_outputs(rng, 2)  # whatever the model gives on the padding rows
    outputs = {k: np.concatenate([v, extra_outputs[k]]) for k, v in outputs.items()}
    if objective.name == "regression":
        outputs["classification_logits"] = outputs["classification_logits"][:, :1]
    real = batching.pad_batch(rows, 3)
    padded = batching.pad_batch(rows, 5)
    _, expected = objective.loss_fn(real, {k: v[:3] for k, v in outputs.items()})
    _, metrics = objective.loss_fn(padded, outputs)
    assert set(metrics) == set(expected)
    for name, (total, count) in metrics.items():
        np.testing.assert_allclose([total, count], expected[name], rtol=1e-6, err_msg=name)
