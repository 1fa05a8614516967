"""BERT masked language modelling (Devlin et al., 2019): predict the selected positions' original tokens.

Masking (15%, 80/10/10) runs in the input pipeline (`plmjax.data`); the batch marks the predicted positions
with `encoder_loss_weights`, including those kept or replaced by a random token.

Training runs the MLM head (dense, LayerNorm, the vocab projection and the softmax over the vocabulary) only at
the predicted positions, as BERT's `max_predictions_per_seq`: `sparse_model_inputs` gathers at most
`max_predictions(length)` = ceil(0.15 * length) + 4 positions per row. When a batch has a row with more
(u-PMLM draws masking rates up to 1), the train step takes the full-logits branch instead (`plmjax.train.step`),
so the loss and its gradients are those of the full logits for every batch.
"""
import math

import jax
import jax.numpy as jnp

from plmjax.objectives.base import Objective, token_cross_entropy

MLM_RATE = 0.15
SLACK = 4


def max_predictions(length: int, rate: float = MLM_RATE, slack: int = SLACK) -> int:
    """The static number of positions the MLM head runs at per row: ceil(rate * length) + slack, at most length."""
    return min(length, math.ceil(rate * length) + slack)


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "token_type_ids": batch.get("encoder_token_types")}


def sparse_model_inputs(batch):
    """(model inputs with `mlm_positions` [batch, max_predictions], whether they cover every predicted position)."""
    predicted = batch["encoder_loss_weights"] != 0  # [batch, length]
    num = max_predictions(predicted.shape[1])
    _, positions = jax.lax.top_k(predicted.astype(jnp.float32), num)  # [batch, num]: the predicted ones first
    fits = jnp.all(jnp.sum(predicted, axis=1) <= num)
    return {**model_inputs(batch), "mlm_positions": positions}, fits


def loss_fn(batch, outputs):
    targets, weights = batch["encoder_target_tokens"], batch["encoder_loss_weights"]
    if "mlm_positions" in outputs:  # logits at the gathered positions [batch, num, vocab]
        positions = outputs["mlm_positions"]
        targets = jnp.take_along_axis(targets, positions, axis=1)
        weights = jnp.take_along_axis(weights, positions, axis=1)
    return token_cross_entropy(outputs["logits"], targets, weights)


MLM = Objective("mlm", "encoder", "encoder", model_inputs, loss_fn, sparse_model_inputs)
