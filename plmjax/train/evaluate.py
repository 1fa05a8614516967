"""Evaluation over a task split, and the most-frequent-token baseline a trained model must beat."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np

from plmjax import sharding
from plmjax.data import feature_converters, pipeline
from plmjax.train import metrics as metrics_lib
from plmjax.train import step as step_lib


def _batches(task, run, split, batch_size, num_batches, shuffle=False):
    dataset = pipeline.get_dataset(
        task, task_feature_lengths=run.task_feature_lengths,
        feature_converter=feature_converters.make_feature_converter(run.objective.feature_converter), split=split,
        batch_size=batch_size, shuffle=shuffle, seed=0, shard_info=sharding.host_shard_info(),
        repeat=False)
    return itertools.islice(dataset.as_numpy_iterator(), num_batches)


def make_eval_fn(run, param_shardings, batch_size: int = 32):
    """Returns `eval_fn(params, task, split, num_batches) -> {metric: value}` (num_batches None: the whole split)."""
    step = step_lib.jit_eval_step(run.module, run.objective, run.mesh, param_shardings, rules=run.rules)

    def eval_fn(params, task, split, num_batches):
        totals = None
        for batch in _batches(task, run, split, batch_size, num_batches):
            metrics = step(params, sharding.shard_batch(batch, run.mesh, run.rules))
            totals = metrics if totals is None else metrics_lib.add_metrics(totals, metrics)
        if totals is None:
            raise ValueError(f"Split {split!r} of task {task!r} gave no full batch of {batch_size} examples: "
                             "lower the batch size or use a larger split.")
        results = metrics_lib.reduce_metrics(totals)
        if run.objective.architecture == "decoder":  # language models report perplexity = exp(mean token loss)
            results["perplexity"] = math.exp(results["loss"])
        return results

    return eval_fn


def _targets_and_weights(batch):
    for prefix in ("encoder", "decoder"):
        if f"{prefix}_loss_weights" in batch and f"{prefix}_target_tokens" in batch:
            return batch[f"{prefix}_target_tokens"], batch[f"{prefix}_loss_weights"]
    raise KeyError(f"No *_target_tokens / *_loss_weights in batch features {sorted(batch)}")


def most_frequent_token_baseline(task, run, split_train="train", split_eval="validation", num_batches=20,
                                 batch_size=32):
    """Accuracy of always predicting the training split's most frequent target token on the eval split."""
    counts = collections.Counter()
    for batch in _batches(task, run, split_train, batch_size, num_batches, shuffle=False):
        targets, weights = _targets_and_weights(batch)
        counts.update(targets[weights > 0].tolist())
    token, _ = counts.most_common(1)[0]
    hits = total = 0.0
    for batch in _batches(task, run, split_eval, batch_size, num_batches):
        targets, weights = _targets_and_weights(batch)
        hits += float(np.sum((targets == token) * weights))
        total += float(np.sum(weights))
    return {"most_frequent_token": int(token), "most_frequent_token_accuracy": hits / max(total, 1.0)}
