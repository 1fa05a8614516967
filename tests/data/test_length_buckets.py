"""Length buckets: batches of similar-length examples trimmed to their bucket, nothing lost, order deterministic."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from plmjax.data import feature_converters, masking, pipeline

LENGTH = 32
NUM_EXAMPLES = 96


def _examples():
    rng = np.random.default_rng(0)
    for i in range(NUM_EXAMPLES):
        n = int(rng.integers(3, LENGTH + 8))  # some longer than LENGTH: trimmed by the converter
        ids = (np.arange(n) % 50 + 10).astype(np.int32)
        ids[0] = i + 100  # identifies the example
        yield {"inputs": ids, "targets": ids, masking.MASKED_LM_WEIGHTS: np.ones(n, np.int32)}


@pytest.fixture(scope="module")
def task_name():
    name = "test_length_buckets_task"
    seqio.TaskRegistry.remove(name)
    spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
            masking.MASKED_LM_WEIGHTS: tf.TensorSpec([None], tf.int32)}
    vocab = seqio.PassThroughVocabulary(size=256)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_generator(_examples, output_signature=spec),
            splits=["train"]),
        preprocessors=[], output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                                           "targets": seqio.Feature(vocab, add_eos=False)})
    return name


def _batches(task_name, buckets, batch_size=8):
    ds = pipeline.get_dataset(task_name, task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
                              feature_converter=feature_converters.make_feature_converter("encoder"), split="train",
                              batch_size=batch_size, shuffle=False, repeat=False, length_buckets=buckets)
    return list(ds.as_numpy_iterator())


def test_batches_are_trimmed_to_their_bucket_and_lose_no_token(task_name):
    plain = {int(row[0]): row for b in _batches(task_name, None) for row in b["encoder_input_tokens"]}
    bucketed = _batches(task_name, (8, 16))
    seen = 0
    for batch in bucketed:
        width = batch["encoder_input_tokens"].shape[1]
        assert width in (8, 16, LENGTH)
        assert all(v.shape == (8, width) for v in batch.values())
        used = max(int(np.max(np.nonzero(row)[0])) + 1 for row in batch["encoder_input_tokens"])
        assert used <= width and (width == 8 or used > {16: 8, LENGTH: 16}[width])  # the smallest bucket that fits
        for row in batch["encoder_input_tokens"]:
            full = plain.get(int(row[0]))
            if full is not None:  # same tokens, only padding removed
                np.testing.assert_array_equal(full[:width], row)
                assert not full[width:].any()
                seen += 1
    assert seen >= NUM_EXAMPLES - 3 * 8  # at most one partial window per bucket is dropped
    np.testing.assert_array_equal(bucketed[0]["encoder_input_tokens"], _batches(task_name, (8, 16))[0][
        "encoder_input_tokens"])  # deterministic


def test_length_buckets_need_one_sequence_length(task_name):
    # mixed lengths (inputs 32, extra features at another length) cannot be trimmed together
    ds = tf.data.Dataset.from_tensors({"a": tf.zeros([4], tf.int32), "b": tf.zeros([6], tf.int32)})
    with pytest.raises(ValueError, match="one length"):
        pipeline._bucket_by_length(ds, (2,), 1)
