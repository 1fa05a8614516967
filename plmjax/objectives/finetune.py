"""Fine-tuning objectives for the heads of `plmjax/models/finetune.py` (BERT's fine-tuning losses).

| objective | architecture | loss (per example, then the weighted mean) | metrics besides `loss` |
|---|---|---|---|
| classification | encoder_classifier | cross entropy of `classification_logits` vs `labels` | accuracy |
| regression | encoder_classifier (num_labels 1) | squared error of `classification_logits` vs `label_values` | - |
| span_extraction | encoder_span | (CE(start) + CE(end)) / 2 | start/end_accuracy, accuracy (both) |
| multiple_choice | encoder_multiple_choice | cross entropy of `choice_logits` vs `labels` | accuracy |
| tagging | encoder_tagger | token cross entropy, weighted by `tag_weights` | accuracy |

Every example counts with its `example_weights` [batch, 1] (1 when the batch has none; 0 on the rows that pad
an evaluation split's last batch), and a classification label of -1 (an unlabeled split) weighs 0. Metrics are
(total, count) pairs: `loss` = (weighted loss sum, total weight), so total / count is the weighted mean.
"""

import jax
import jax.numpy as jnp

from plmjax.objectives.base import Objective, example_weights, token_cross_entropy


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "token_type_ids": batch.get("encoder_token_types")}


def _per_example(x) -> jax.Array:
    """[batch, 1] (or [batch]) -> [batch]."""
    return x.reshape(x.shape[0])


def example_cross_entropy(logits, labels, weights):
    """Weighted mean cross entropy and accuracy of logits [batch, n] against integer labels [batch]."""
    loss, metrics = token_cross_entropy(logits[:, None, :], labels[:, None], weights[:, None])
    metrics["num_examples"] = metrics.pop("num_tokens")
    return loss, metrics


def classification_loss(batch, outputs):
    labels = _per_example(batch["labels"]).astype(jnp.int32)
    weights = example_weights(batch) * (labels >= 0)  # -1: unlabeled (e.g. GLUE test) contributes nothing
    return example_cross_entropy(outputs["classification_logits"], jnp.maximum(labels, 0), weights)


def regression_loss(batch, outputs):
    predictions = outputs["classification_logits"].astype(jnp.float32)
    if predictions.shape[-1] != 1:
        raise ValueError(f"Regression needs one output (num_labels=1), got classification_logits of shape "
                         f"{predictions.shape}: the task's TaskInfo must have kind 'regression'.")
    errors = (_per_example(predictions) - _per_example(batch["label_values"]).astype(jnp.float32)) ** 2
    weights = example_weights(batch)
    total = jnp.sum(weights)
    loss_sum = jnp.sum(errors * weights)
    metrics = {"loss": (loss_sum, total), "num_examples": (total, jnp.ones((), jnp.float32))}
    return loss_sum / jnp.maximum(total, 1.0), metrics


def span_extraction_loss(batch, outputs):
    """BERT's SQuAD loss: the mean of the start and the end position's cross entropy over the input positions."""
    weights = example_weights(batch)
    starts, ends = (_per_example(batch[name]).astype(jnp.int32) for name in ("start_positions", "end_positions"))
    start_loss, start = example_cross_entropy(outputs["start_logits"], starts, weights)
    end_loss, end = example_cross_entropy(outputs["end_logits"], ends, weights)
    both = ((jnp.argmax(outputs["start_logits"], -1) == starts) & (jnp.argmax(outputs["end_logits"], -1) == ends))
    total = start["loss"][1]
    metrics = {
        "loss": ((start["loss"][0] + end["loss"][0]) / 2, total),
        "start_accuracy": start["accuracy"],
        "end_accuracy": end["accuracy"],
        "accuracy": (jnp.sum(both * weights), total),
        "num_examples": start["num_examples"],
    }
    return (start_loss + end_loss) / 2, metrics


def multiple_choice_loss(batch, outputs):
    labels = _per_example(batch["labels"]).astype(jnp.int32)
    weights = example_weights(batch) * (labels >= 0)
    return example_cross_entropy(outputs["choice_logits"], jnp.maximum(labels, 0), weights)


def tagging_loss(batch, outputs):
    weights = batch["tag_weights"].astype(jnp.float32) * example_weights(batch)[:, None]  # [batch, length]
    return token_cross_entropy(outputs["tag_logits"], batch["tag_labels"], weights)


CLASSIFICATION = Objective("classification", "encoder_classifier", "classification", model_inputs,
                           classification_loss)
REGRESSION = Objective("regression", "encoder_classifier", "classification", model_inputs, regression_loss)
SPAN_EXTRACTION = Objective("span_extraction", "encoder_span", "span_extraction", model_inputs, span_extraction_loss)
MULTIPLE_CHOICE = Objective("multiple_choice", "encoder_multiple_choice", "multiple_choice", model_inputs,
                            multiple_choice_loss)
TAGGING = Objective("tagging", "encoder_tagger", "tagging", model_inputs, tagging_loss)
FINETUNE_OBJECTIVES = (CLASSIFICATION, REGRESSION, SPAN_EXTRACTION, MULTIPLE_CHOICE, TAGGING)
