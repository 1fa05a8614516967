"""ELECTRA replaced-token detection (Clark et al. 2020): generator MLM loss + λ · discriminator loss, λ = 50.

The generator's loss is the mean MLM cross entropy over the masked positions; the discriminator's is the mean
binary cross entropy of `rtd_logits` against the in-graph `rtd_labels` over every real (non-padding) token.
So that the trainer's (total, count) loss, total / count, equals the sum, the discriminator term enters `loss`
scaled by the MLM weight: total = mlm_sum + λ · rtd_mean · mlm_weight.
"""

import jax.numpy as jnp
import optax

from plmjax.objectives.base import Objective, token_cross_entropy

DISCRIMINATOR_WEIGHT = 50.0


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "original_ids": batch["encoder_target_tokens"],
            "masked_positions": batch["encoder_loss_weights"] > 0, "token_type_ids": batch.get("encoder_token_types")}


def loss_fn(batch, outputs, discriminator_weight: float = DISCRIMINATOR_WEIGHT):
    mlm_loss, mlm = token_cross_entropy(outputs["logits"], batch["encoder_target_tokens"],
                                        batch["encoder_loss_weights"])
    real = (batch["encoder_target_tokens"] > 0).astype(jnp.float32)
    labels = outputs["rtd_labels"].astype(jnp.float32)
    logits = outputs["rtd_logits"].astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)  # [batch, length]
    num_real = jnp.sum(real)
    rtd_sum = jnp.sum(bce * real)
    rtd_loss = rtd_sum / jnp.maximum(num_real, 1.0)
    correct = jnp.sum(((logits > 0) == (labels > 0)) * real)
    mlm_sum, mlm_weight = mlm["loss"]
    metrics = {
        "loss": (mlm_sum + discriminator_weight * rtd_loss * mlm_weight, mlm_weight),
        "mlm_loss": mlm["loss"],
        "accuracy": mlm["accuracy"],
        "num_tokens": mlm["num_tokens"],
        "rtd_loss": (rtd_sum, num_real),
        "rtd_accuracy": (correct, num_real),
        "replaced_fraction": (jnp.sum(labels * real), num_real),
    }
    return mlm_loss + discriminator_weight * rtd_loss, metrics


ELECTRA = Objective("electra", "electra", "encoder", model_inputs, loss_fn)
