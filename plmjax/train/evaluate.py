"""Evaluation over a task split, and the most-frequent-token baseline a trained model must beat.

Batches come from `plmjax.data.batching` (every example once, the last batch padded with weight-0 rows), so the
metrics over the whole split (num_batches None) count every example, and equal one host's on several hosts.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from plmjax.data import batching, feature_converters
from plmjax.train import metrics as metrics_lib
from plmjax.train import step as step_lib


def _batches(task, run, split, batch_size, num_batches):
    converter = feature_converters.make_feature_converter(run.objective.feature_converter)
    return batching.split_batches(task, split, run.task_feature_lengths, converter, batch_size,
                                  num_batches=num_batches, seed=0)


def make_eval_fn(run, param_shardings, batch_size: int = 32):
    """Returns `eval_fn(params, task, split, num_batches) -> {metric: value}` (num_batches None: the whole split)."""
    batching.check_batch_size(batch_size, run.mesh, run.rules)
    step = step_lib.jit_eval_step(run.module, run.objective, run.mesh, param_shardings, rules=run.rules)

    def eval_fn(params, task, split, num_batches):
        totals = None
        for batch in _batches(task, run, split, batch_size, num_batches):
            metrics = step(params, batching.on_mesh(batch.features, run.mesh, run.rules))
            totals = metrics if totals is None else metrics_lib.add_metrics(totals, metrics)
        if totals is None:
            raise ValueError(f"Split {split!r} of task {task!r} has no examples.")
        results = metrics_lib.reduce_metrics(totals)
        if run.objective.architecture == "decoder":  # language models report perplexity = exp(mean token loss)
            results["perplexity"] = math.exp(results["loss"])
        return results

    return eval_fn


def _targets_and_weights(features):
    for prefix in ("encoder", "decoder"):
        if f"{prefix}_loss_weights" in features and f"{prefix}_target_tokens" in features:
            return features[f"{prefix}_target_tokens"], features[f"{prefix}_loss_weights"]
    raise KeyError(f"No *_target_tokens / *_loss_weights in batch features {sorted(features)}")


def most_frequent_token_baseline(task, run, split_train="train", split_eval="validation", num_batches=20,
                                 batch_size=32):
    """Accuracy of always predicting the training split's most frequent target token on the eval split."""
    counts = collections.Counter()
    for batch in _batches(task, run, split_train, batch_size, num_batches):
        targets, weights = _targets_and_weights(batch.features)
        counts.update(targets[weights > 0].tolist())
    token, _ = counts.most_common(1)[0]
    hits = total = 0.0
    for batch in _batches(task, run, split_eval, batch_size, num_batches):
        targets, weights = _targets_and_weights(batch.features)
        hits += float(np.sum((targets == token) * weights))
        total += float(np.sum(weights))
    return {"most_frequent_token": int(token), "most_frequent_token_accuracy": hits / max(total, 1.0)}
