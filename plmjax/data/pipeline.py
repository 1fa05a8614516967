"""The trainer's entry to the data: batched, converted, deterministic and resumable `tf.data` pipelines.

    ds = get_dataset('pydoc_mlm', task_feature_lengths={'inputs': 128, 'targets': 128},
                     feature_converter=make_feature_converter('encoder'), split='train', batch_size=32)
    for batch in ds.as_numpy_iterator(): ...   # dict of [batch, length] numpy arrays

For a given seed the stream is the same on every run. `DataIterator(ds)` reads it as numpy batches and saves its
position (`state()`: tf.data's own iterator checkpoint, shuffle buffers and all) for `restore(state)` to continue
exactly there without reading the consumed batches again; the trainer keeps it in each checkpoint.
`skip_batches=N` also continues where a run that consumed N batches stopped, by reading and dropping them.
"""
import logging
from typing import Any, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf


def get_dataset(mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture], *,
                task_feature_lengths: Mapping[str, int], feature_converter: seqio.FeatureConverter,
                split: str, batch_size: int, shuffle: bool = True, seed: int = 0,
                shard_info: Optional[seqio.ShardInfo] = None, skip_batches: int = 0,
                repeat: bool = True, length_buckets: Optional[Sequence[int]] = None) -> tf.data.Dataset:
    """A dataset of batched model features (see docs/interfaces.md).

    Args:
      mixture_or_task_name: a registered seqio task or mixture (import plmjax.tasks to register plmjax's).
      task_feature_lengths: e.g. {'inputs': 128, 'targets': 128} (MLM), {'targets': 128} (LM).
      feature_converter: e.g. `feature_converters.make_feature_converter('encoder')`.
      split: 'train' or 'validation'.
      batch_size: the global batch size; each host (shard) gets batch_size // shard_info.num_shards rows.
      shuffle: shuffle documents and examples (train); the order is fixed by `seed` either way.
      seed: seeds shuffling and the per-example corruption (masking, span noise).
      shard_info: this host's shard, `seqio.ShardInfo(jax.process_index(), jax.process_count())`.
      skip_batches: batches to drop from the start: resume a run that consumed that many.
      repeat: repeat forever (new shuffles and corruptions each epoch); False for one pass (evaluation).
      length_buckets: e.g. (16, 32, 64): group examples of similar length into batches, each trimmed to the
        smallest bucket that holds its longest example (fewer padded tokens for short-text fine-tuning; one
        compiled step per bucket). Needs every sequence feature at one length; the stream stays deterministic.

    Returns:
      A `tf.data.Dataset` of dicts of [batch_size // num_shards, length] tensors (length: the task feature length,
      or a bucket's with `length_buckets`), last partial batch dropped;
      `*_loss_weights` are float32, every other feature int32.
    """
    num_shards = shard_info.num_shards if shard_info else 1
    if batch_size % num_shards:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {num_shards} data shards (hosts); "
                         "choose a global batch size that is a multiple of the number of hosts.")
    dataset = seqio.get_dataset(
        mixture_or_task_name, task_feature_lengths=task_feature_lengths, feature_converter=feature_converter,
        dataset_split=split, shuffle=shuffle, num_epochs=None if repeat else 1, shard_info=shard_info,
        seed=seed, batch_size=None if length_buckets else batch_size // num_shards, verbose=False)
    dataset = dataset.map(_float_loss_weights, num_parallel_calls=tf.data.AUTOTUNE)
    if length_buckets:
        dataset = _bucket_by_length(dataset, length_buckets, batch_size // num_shards)
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: the stream depends on the seed only
    dataset = dataset.with_options(options)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset.prefetch(tf.data.AUTOTUNE)


_FAIL_ON_EXTERNAL_STATE = 2  # tf.data ExternalStatePolicy.FAIL: a state that could not restore exactly is an error


class DataIterator:
    """Numpy batches of a `tf.data.Dataset` whose position can be saved and restored exactly."""

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = iter(dataset)
        self._checkpointable = True

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> dict[str, Any]:
        return {name: value.numpy() for name, value in next(self._iterator).items()}

    def state(self) -> Optional[bytes]:
        """The iterator's position (after the batches read so far) as bytes; None when the pipeline holds state
        tf.data cannot save (e.g. a Python function with its own state: resume then re-reads the batches)."""
        if not self._checkpointable:
            return None
        try:
            serialized = tf.raw_ops.SerializeIterator(resource_handle=self._iterator._iterator_resource,
                                                      external_state_policy=_FAIL_ON_EXTERNAL_STATE)
        except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as e:
            logging.warning("The input pipeline's position cannot be saved (%s); a resumed run re-reads the "
                            "batches it consumed instead.", str(e).splitlines()[0])
            self._checkpointable = False
            return None
        return tf.io.serialize_tensor(serialized).numpy()

    def restore(self, state: bytes) -> None:
        """Continues from a position `state()` returned, on an iterator of the same dataset (same task, seed,
        batch size, shard)."""
        serialized = tf.io.parse_tensor(state, tf.variant)
        tf.raw_ops.DeserializeIterator(resource_handle=self._iterator._iterator_resource, serialized=serialized)


def _bucket_by_length(dataset: tf.data.Dataset, buckets: Sequence[int], batch_size: int) -> tf.data.Dataset:
    """Batches examples of similar length together, each batch trimmed to its bucket's length."""
    lengths = {int(shape[0]) for shape in (s.shape for s in dataset.element_spec.values()) if shape[0] != 1}
    if len(lengths) != 1:
        raise ValueError(f"length_buckets needs every sequence feature at one length, but the batch has lengths "
                         f"{sorted(lengths)}; drop the length_buckets setting for this task.")
    full = lengths.pop()
    boundaries = sorted({min(int(b), full) for b in buckets} | {full})
    sequence_features = [k for k, s in dataset.element_spec.items() if s.shape[0] == full]
    token_features = [k for k in sequence_features if k.endswith("_tokens")] or sequence_features

    def bucket(example):  # the smallest boundary that holds the example's last non-zero token
        positions = tf.range(1, full + 1, dtype=tf.int64)  # 1-based, so an all-padding feature gives 0
        used = tf.reduce_max([tf.reduce_max(tf.where(tf.not_equal(example[k], 0), positions, 0))
                              for k in token_features])
        return tf.argmax(tf.constant(boundaries, tf.int64) >= used, output_type=tf.int64)

    def trim(key, batch):  # [batch, full] -> [batch, boundary]
        size = tf.gather(tf.constant(boundaries, tf.int64), key)
        return {k: v[:, :size] if k in sequence_features else v for k, v in batch.items()}

    return dataset.group_by_window(
        key_func=bucket, window_size=batch_size,
        reduce_func=lambda key, window: window.batch(batch_size, drop_remainder=True).map(
            lambda b: trim(key, b)))


def _float_loss_weights(batch):
    """seqio's LM/EncDec converters give int32 loss weights; the contract is float32 for all families."""
    return {k: tf.cast(v, tf.float32) if k.endswith("_loss_weights") else v for k, v in batch.items()}


def vocabulary(mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture],
               feature: Optional[str] = None) -> seqio.Vocabulary:
    """The vocabulary of a task's feature (trains the task's SentencePiece model on first use); by default
    'targets', or 'inputs' for tasks without targets (the encoder-format fine-tuning tasks)."""
    provider = mixture_or_task_name
    if isinstance(provider, str):
        provider = seqio.get_mixture_or_task(provider)
    if feature is None:
        feature = "targets" if "targets" in provider.output_features else "inputs"
    return provider.output_features[feature].vocabulary


def vocab_size(mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture]) -> int:
    """The model's `vocab_size` for a task: every id the task can emit (including T5 sentinels)."""
    return vocabulary(mixture_or_task_name).vocab_size
