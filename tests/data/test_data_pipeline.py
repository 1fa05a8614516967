"""pipeline.get_dataset: resumable with skip_batches and with DataIterator's saved state, deterministic, sharded
per host, LM batches."""
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import seqio

from plmjax.data import corpora, feature_converters, pipeline, pretraining, sources, vocabularies

LENGTH = 64


@functools.cache
def task(objective: str) -> seqio.Task:
    vocab = vocabularies.CorpusSentencePieceVocabulary("pydoc", functools.partial(corpora.pydoc_paragraphs, "train"))
    return seqio.Task(f"test_pipeline_pydoc_{objective}",
                      **pretraining.task_kwargs(objective, sources.pydoc_source(), vocab))


def mlm_batches(num_batches, **kwargs):
    kwargs = {"split": "validation", "batch_size": 32, "seed": 3, **kwargs}
    ds = pipeline.get_dataset(task("mlm"), task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
                              feature_converter=feature_converters.make_feature_converter("encoder"), **kwargs)
    return list(ds.take(num_batches).as_numpy_iterator())


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_skip_batches_resumes_the_uninterrupted_stream_across_epochs():
    epoch = len(mlm_batches(1000, repeat=False))
    assert 10 < epoch < 30
    uninterrupted = mlm_batches(epoch + 6)
    resumed = mlm_batches(6, skip_batches=epoch)
    assert_same_batches(resumed, uninterrupted[epoch:])
    # The second epoch is a new shuffle with new masks, not a replay of the first.
    first, second = uninterrupted[0]["encoder_input_tokens"], uninterrupted[epoch]["encoder_input_tokens"]
    assert (first != second).mean() > 0.5


def _mlm_dataset(**kwargs):
    kwargs = {"split": "validation", "batch_size": 32, "seed": 3, **kwargs}
    return pipeline.get_dataset(task("mlm"), task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
                                feature_converter=feature_converters.make_feature_converter("encoder"), **kwargs)


@pytest.mark.parametrize("length_buckets", [None, pytest.param((16, 32), marks=pytest.mark.slow)])
def test_data_iterator_state_resumes_the_uninterrupted_stream_across_epochs(length_buckets):
    """A new iterator over a newly built dataset, restored from the state saved after N batches, yields exactly
    the batches N, N+1, ... of the uninterrupted stream (across the epoch boundary), without reading 0..N-1."""
    epoch = len(mlm_batches(1000, repeat=False))
    position = epoch - 2
    uninterrupted = pipeline.DataIterator(_mlm_dataset(length_buckets=length_buckets))
    expected = [next(uninterrupted) for _ in range(position + 5)][position:]
    first = pipeline.DataIterator(_mlm_dataset(length_buckets=length_buckets))
    for _ in range(position):
        next(first)
    state = first.state()
    assert isinstance(state, bytes)
    resumed = pipeline.DataIterator(_mlm_dataset(length_buckets=length_buckets))
    resumed.restore(state)
    assert_same_batches([next(resumed) for _ in range(5)], expected)
    assert_same_batches([next(first) for _ in range(5)], expected)  # saving does not move the iterator


def test_seed_fixes_order_and_masks():
    assert_same_batches(mlm_batches(3, seed=11), mlm_batches(3, seed=11))
    a, b = mlm_batches(1, seed=11)[0], mlm_batches(1, seed=12)[0]
    assert (a["encoder_target_tokens"] != b["encoder_target_tokens"]).mean() > 0.5  # another shuffle


def test_hosts_get_disjoint_shards_of_the_global_batch():
    rows = []
    for index in range(2):
        batches = mlm_batches(1000, shuffle=False, repeat=False, shard_info=seqio.ShardInfo(index, 2))
        assert batches and all(b["encoder_input_tokens"].shape == (16, LENGTH) for b in batches)
        rows.append({tuple(r) for b in batches for r in b["encoder_target_tokens"]})
    assert not rows[0] & rows[1]
    with pytest.raises(ValueError, match="not divisible by the 3 data shards"):
        mlm_batches(1, shard_info=seqio.ShardInfo(0, 3))


def test_causal_lm_batches():
    vocab = task("lm").output_features["targets"].vocabulary
    ds = pipeline.get_dataset(task("lm"), task_feature_lengths={"targets": LENGTH},
                              feature_converter=feature_converters.make_feature_converter("decoder"),
                              split="validation", batch_size=8, shuffle=False, repeat=False)
    batches = list(ds.as_numpy_iterator())
    batch = batches[0]
    assert set(batch) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"}
    assert batch["decoder_loss_weights"].dtype == np.float32 and batch["decoder_target_tokens"].dtype == np.int32
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
    # Unshuffled, the targets are the documents joined by EOS, cut into LENGTH-token pieces.
    documents = corpora.pydoc_documents("validation")
    # encode_tf, as the pipeline: tf_text's SentencePiece breaks exact Viterbi ties ("0/0.0.") unlike Python's.
    stream = [t for d in documents for t in vocab.encode_tf(d).numpy().tolist() + [vocab.eos_id]]
    got = np.concatenate([b["decoder_target_tokens"] for b in batches]).reshape(-1)
    got = got[got != vocab.pad_id]  # the last piece of a group is padded
    np.testing.assert_array_equal(got, stream[:len(got)])
    assert len(stream) - len(got) < LENGTH * 8  # at most the remainder batch is dropped


def test_vocab_size_helper_and_unknown_family():
    assert pipeline.vocab_size(task("mlm")) == 4096
    with pytest.raises(ValueError, match="Unknown model family 'bert'"):
        feature_converters.make_feature_converter("bert")
