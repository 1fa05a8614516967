"""Evaluation batches: every example of a split exactly once, in the split's order, in global batches of one
fixed size, the same batches on every host. Pre-training metrics (`plmjax.train.evaluate`), fine-tuning
predictions (`plmjax.evaluation.predict`) and in-context scoring (`plmjax.prompting.in_context`) all read here.

    for batch in split_batches('glue_sst2', 'validation', {'inputs': 128}, converter, batch_size=32):
        batch.features   # {name: [32, ...] numpy}; `example_weights` [32, 1]: 1 on real rows, 0 on padding
        batch.num_real   # the first num_real rows are the split's examples
        batch.extras     # raw task features asked for (`raw_features`), one dict per real row
        outputs = step(params, on_mesh(batch.features, mesh, rules))

The last batch is filled up to the batch size with copies of its last example (real input tokens, so every
output stays finite) whose weights are all 0: `example_weights`, every `*_weights` feature (`*_loss_weights`,
`tag_weights`, `verbalizer_weights`, ...) and every `*_target_tokens` feature (0 is seqio's padding id, and
ELECTRA's discriminator counts the real tokens from the targets; a decoder's padding row thus has an all-False
input mask, which attention's finite mask value keeps finite). So a padding row adds nothing to any objective
whose metrics are weighted by those features (tests/data/test_batching.py checks every objective).

Several processes: every host reads the whole split, unsharded, and builds the same global batches; `on_mesh`
gives each host's devices their rows (`sharding.host_rows`). So every host runs the same number of steps with no
collective needed to agree on it, and the numbers equal one host's. (A per-host `seqio.ShardInfo` shard would
give hosts different example counts and a different per-example seed order; evaluation splits are small enough
for every host to read them.)
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from plmjax import sharding

EXAMPLE_WEIGHTS = "example_weights"
ZEROED_SUFFIXES = ("_weights", "_target_tokens")  # features zeroed on padding rows (with `example_weights`)


@dataclasses.dataclass
class Batch:
    features: dict[str, np.ndarray]  # [batch_size, ...] per feature, `example_weights` [batch_size, 1]
    num_real: int  # rows 0 .. num_real - 1 are examples; the rest pad the split's last batch
    extras: list[dict] = dataclasses.field(default_factory=list)  # raw features of each real row


def pad_batch(rows: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """[n, ...] features (1 <= n <= batch_size) -> [batch_size, ...] with `example_weights` [batch_size, 1];
    rows n.. are copies of row n - 1 with every weight and target zeroed (see the module docstring)."""
    num_real = len(next(iter(rows.values())))
    if not 0 < num_real <= batch_size:
        raise ValueError(f"A batch of {num_real} rows cannot be padded to batch_size={batch_size}.")
    copies = np.concatenate([np.arange(num_real), np.full(batch_size - num_real, num_real - 1)])  # [batch_size]
    real = np.arange(batch_size) < num_real  # [batch_size]
    batch = {}
    for name, value in rows.items():
        value = np.asarray(value)[copies]
        if name.endswith("_loss_weights"):  # seqio's LM / EncDec converters give int32; the contract is float32
            value = value.astype(np.float32)
        if name == EXAMPLE_WEIGHTS or name.endswith(ZEROED_SUFFIXES):
            value = value * real.reshape((-1,) + (1,) * (value.ndim - 1)).astype(value.dtype)
        batch[name] = value
    weights = real.astype(np.float32)[:, None]  # [batch_size, 1]
    batch[EXAMPLE_WEIGHTS] = batch[EXAMPLE_WEIGHTS].reshape(batch_size, 1) * weights \
        if EXAMPLE_WEIGHTS in batch else weights
    return batch


def array_batches(features: Mapping[str, np.ndarray], batch_size: int) -> Iterator[Batch]:
    """Batches of in-memory [n, ...] features (every feature with the same n), the last padded."""
    total = len(next(iter(features.values())))
    for start in range(0, total, batch_size):
        rows = {name: value[start:start + batch_size] for name, value in features.items()}
        yield Batch(pad_batch(rows, batch_size), min(batch_size, total - start))


def read_split(task, split: str, task_feature_lengths: Mapping[str, int], feature_converter: seqio.FeatureConverter,
               *, raw_features: Sequence[str] = (), seed: int = 0) -> tuple[tf.data.Dataset, Optional[tf.data.Dataset]]:
    """(converted examples, their raw task features among `raw_features` or None) of the whole split, unshuffled,
    once; the same on every host. `seed` seeds the per-example corruption (masking, span noise) as in training."""
    provider = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
    raw = provider.get_dataset(dict(task_feature_lengths), split=split, shuffle=False, seed=seed, num_epochs=1)
    converted = feature_converter(raw, task_feature_lengths=dict(task_feature_lengths))
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: both streams pair up example by example
    present = [name for name in raw_features if name in raw.element_spec]
    extras = raw.map(lambda ex: {name: ex[name] for name in present}).with_options(options) if present else None
    return converted.with_options(options), extras


def dataset_batches(converted: tf.data.Dataset, batch_size: int, *, extras: Optional[tf.data.Dataset] = None,
                    num_batches: Optional[int] = None) -> Iterator[Batch]:
    """Batches of a dataset of examples (all of it, or the first `num_batches`), the last padded."""
    extra_rows: Iterator[dict] = extras.as_numpy_iterator() if extras is not None else itertools.repeat({})
    batches = converted.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()  # the remainder kept
    for rows in itertools.islice(batches, num_batches):
        num_real = len(next(iter(rows.values())))
        yield Batch(pad_batch(rows, batch_size), num_real, list(itertools.islice(extra_rows, num_real)))


def split_batches(task, split: str, task_feature_lengths: Mapping[str, int],
                  feature_converter: seqio.FeatureConverter, batch_size: int, *, num_batches: Optional[int] = None,
                  raw_features: Sequence[str] = (), seed: int = 0) -> Iterator[Batch]:
    """Global batches over a task's split (`read_split` then `dataset_batches`); `num_batches` None: all."""
    converted, extras = read_split(task, split, task_feature_lengths, feature_converter, raw_features=raw_features,
                                   seed=seed)
    return dataset_batches(converted, batch_size, extras=extras, num_batches=num_batches)


def data_parallel_size(mesh, rules=sharding.LOGICAL_AXIS_RULES) -> int:
    """Devices the batch axis is split over."""
    axes = sharding.batch_sharding(mesh, rules).spec[0]
    axes = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    return math.prod(mesh.shape[a] for a in axes)


def check_batch_size(batch_size: int, mesh, rules=sharding.LOGICAL_AXIS_RULES) -> None:
    parallel = data_parallel_size(mesh, rules)
    if batch_size % parallel:
        raise ValueError(f"Evaluation batch_size={batch_size} must be a multiple of the mesh's {parallel} "
                         "data-parallel devices; choose e.g. batch_size="
                         f"{max(parallel, batch_size // parallel * parallel)}.")


def on_mesh(features: Mapping[str, np.ndarray], mesh, rules=sharding.LOGICAL_AXIS_RULES):
    """A global batch (the same on every host) as global arrays on the mesh: each host puts its own rows."""
    return sharding.shard_batch(sharding.host_rows(dict(features), mesh, rules), mesh, rules)

