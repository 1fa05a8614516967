"""The trainer's entry to the data: batched, converted, deterministic and resumable `tf.data` pipelines.

    ds = get_dataset('pydoc_mlm', task_feature_lengths={'inputs': 128, 'targets': 128},
                     feature_converter=make_feature_converter('encoder'), split='train', batch_size=32)
    for batch in ds.as_numpy_iterator(): ...   # dict of [batch, length] numpy arrays

For a given seed the stream is the same on every run, so `skip_batches=N` continues exactly where a run that
consumed N batches stopped (the trainer keeps N in its checkpoints).
"""
from typing import Mapping, Optional, Union

import seqio
import tensorflow as tf


def get_dataset(mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture], *,
                task_feature_lengths: Mapping[str, int], feature_converter: seqio.FeatureConverter,
                split: str, batch_size: int, shuffle: bool = True, seed: int = 0,
                shard_info: Optional[seqio.ShardInfo] = None, skip_batches: int = 0,
                repeat: bool = True) -> tf.data.Dataset:
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

    Returns:
      A `tf.data.Dataset` of dicts of [batch_size // num_shards, length] tensors, last partial batch dropped;
      `*_loss_weights` are float32, every other feature int32.
    """
    num_shards = shard_info.num_shards if shard_info else 1
    if batch_size % num_shards:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {num_shards} data shards (hosts); "
                         "choose a global batch size that is a multiple of the number of hosts.")
    dataset = seqio.get_dataset(
        mixture_or_task_name, task_feature_lengths=task_feature_lengths, feature_converter=feature_converter,
        dataset_split=split, shuffle=shuffle, num_epochs=None if repeat else 1, shard_info=shard_info,
        seed=seed, batch_size=batch_size // num_shards, verbose=False)
    dataset = dataset.map(_float_loss_weights, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: the stream depends on the seed only
    dataset = dataset.with_options(options)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _float_loss_weights(batch):
    """seqio's LM/EncDec converters give int32 loss weights; the contract is float32 for all families."""
    return {k: tf.cast(v, tf.float32) if k.endswith("_loss_weights") else v for k, v in batch.items()}


def vocabulary(mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture],
               feature: str = "targets") -> seqio.Vocabulary:
    """The vocabulary of a task's feature (trains the task's SentencePiece model on first use)."""
    provider = mixture_or_task_name
    if isinstance(provider, str):
        provider = seqio.get_mixture_or_task(provider)
    return provider.output_features[feature].vocabulary


def vocab_size(mixture_or_task_name: Union[str, seqio.Task, seqio.Mixture]) -> int:
    """The model's `vocab_size` for a task: every id the task can emit (including T5 sentinels)."""
    return vocabulary(mixture_or_task_name).vocab_size
