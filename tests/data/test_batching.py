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
