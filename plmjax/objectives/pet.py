"""PET (Schick & Schütze, 2021): cloze classification with the plain encoder's MLM head.

The batch (`plmjax.prompting.pet`) holds the cloze question, the positions of its m [MASK]s and, per label, the
verbalizer's tokens with their weights (0 where a shorter verbalizer is padded). A label's score is

    score[b, k] = sum_j verbalizer_weights[b, k, j] * log_softmax(logits[b, mask_positions[b, j]])[tokens[b, k, j]]

(the log-softmax over the whole vocabulary), and the loss is the cross entropy of softmax(scores) with the label.
Examples weigh `example_weights` (EVAL's padding rows: 0) and unlabeled rows (label -1) weigh 0.
"""

import dataclasses

import jax
import jax.numpy as jnp

from plmjax.objectives.base import Objective


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "token_type_ids": batch.get("encoder_token_types")}


def pet_scores(batch, outputs, length_normalize: bool = False) -> jax.Array:
    """[batch, num_labels] float32 label scores: summed (or, with length_normalize, mean) verbalizer token
    log-probabilities at the [MASK] positions. The prediction is their argmax."""
    positions = batch["mask_positions"]  # [b, m]
    mask_logits = jnp.take_along_axis(outputs["logits"], positions[..., None], axis=1)  # [b, m, vocab]
    log_probs = jax.nn.log_softmax(mask_logits.astype(jnp.float32), axis=-1)
    tokens = batch["verbalizer_tokens"]  # [b, k, m]
    per_label = jnp.broadcast_to(log_probs[:, None], tokens.shape + log_probs.shape[-1:])  # [b, k, m, vocab]
    token_log_probs = jnp.take_along_axis(per_label, tokens[..., None], axis=-1)[..., 0]  # [b, k, m]
    weights = batch["verbalizer_weights"].astype(jnp.float32)
    scores = jnp.sum(token_log_probs * weights, axis=-1)  # [b, k]
    if length_normalize:
        scores = scores / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    return scores


def loss_fn(batch, outputs):
    scores = pet_scores(batch, outputs)  # [b, k]
    labels = batch["labels"][:, 0]
    weights = jnp.reshape(batch.get("example_weights", jnp.ones_like(labels, jnp.float32)), labels.shape)
    weights = weights.astype(jnp.float32) * (labels >= 0)
    label_scores = jnp.take_along_axis(scores, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
    nll = jax.nn.logsumexp(scores, axis=-1) - label_scores  # [b]
    total = jnp.sum(weights)
    loss_sum = jnp.sum(nll * weights)
    correct = jnp.sum((jnp.argmax(scores, axis=-1) == labels) * weights)
    metrics = {"loss": (loss_sum, total), "accuracy": (correct, total)}
    return loss_sum / jnp.maximum(total, 1.0), metrics


@dataclasses.dataclass(frozen=True)
class PetObjective(Objective):
    """The objective with its label scores, which prediction (`plmjax.evaluation.predict`) takes the argmax of."""

    def pet_scores(self, batch, outputs) -> jax.Array:
        return pet_scores(batch, outputs)


PET = PetObjective("pet", "encoder", "pet", model_inputs, loss_fn)
