"""BERT's MLM + next-sentence prediction (Devlin et al. 2019) and ALBERT's MLM + sentence-order prediction
(Lan et al. 2020): the loss is the mean MLM token loss plus the mean 2-way sentence loss, as in BERT.

The batch comes from the `*_nsp` / `*_sop` tasks (`encoder_token_types`, `encoder_sentence_labels` [batch, 1]:
1 for a random or swapped B). So that the trainer's (total, count) loss, total / count, equals that sum, the
sentence loss enters `loss` scaled by the MLM weight: total = mlm_sum + sentence_mean * mlm_weight.
"""

import jax
import jax.numpy as jnp

from plmjax.objectives.base import Objective, token_cross_entropy


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "token_type_ids": batch["encoder_token_types"]}


def sentence_cross_entropy(logits, labels, weights):
    """(summed loss, correct, count) of 2-way logits [batch, 2] against labels [batch] (or [batch, 1]), each
    example weighted by weights [batch] (0: a row that pads an evaluation batch)."""
    labels = labels.reshape(labels.shape[0]).astype(jnp.int32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), labels[:, None], axis=-1)[:, 0]
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
    return jnp.sum(nll * weights), correct, jnp.sum(weights)


def loss_fn(batch, outputs):
    mlm_loss, metrics = token_cross_entropy(outputs["logits"], batch["encoder_target_tokens"],
                                            batch["encoder_loss_weights"])
    labels = batch["encoder_sentence_labels"]
    weights = batch.get("example_weights", jnp.ones(labels.shape[:1] + (1,), jnp.float32))  # [batch, 1]
    sentence_sum, correct, count = sentence_cross_entropy(outputs["sentence_logits"], labels,
                                                          jnp.reshape(weights, labels.shape[:1]).astype(jnp.float32))
    sentence_loss = sentence_sum / jnp.maximum(count, 1.0)
    mlm_sum, mlm_weight = metrics["loss"]
    metrics = {
        "loss": (mlm_sum + sentence_loss * mlm_weight, mlm_weight),
        "mlm_loss": metrics["loss"],
        "accuracy": metrics["accuracy"],
        "num_tokens": metrics["num_tokens"],
        "sentence_loss": (sentence_sum, count),
        "sentence_accuracy": (correct, count),
    }
    return mlm_loss + sentence_loss, metrics


NSP = Objective("nsp", "encoder_sentence_pair", "encoder_sentence_pair", model_inputs, loss_fn)
SOP = Objective("sop", "encoder_sentence_pair", "encoder_sentence_pair", model_inputs, loss_fn)
