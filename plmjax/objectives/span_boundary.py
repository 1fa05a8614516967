"""SpanBERT (Joshi et al. 2020): span-masked MLM plus the span-boundary objective, both on every masked token.

L(x_i) = -log P(x_i | encoder state of x_i) - log P(x_i | SBO from x_{s-1}, x_{e+1}, p_{i-s}); the loss is its
mean over the masked tokens, i.e. the MLM mean plus the SBO mean (one weight for both).
"""

from plmjax.objectives.base import Objective, token_cross_entropy


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "span_left": batch["encoder_span_left"],
            "span_right": batch["encoder_span_right"], "span_positions": batch["encoder_span_positions"]}


def loss_fn(batch, outputs):
    targets, weights = batch["encoder_target_tokens"], batch["encoder_loss_weights"]
    mlm_loss, mlm = token_cross_entropy(outputs["logits"], targets, weights)
    sbo_loss, sbo = token_cross_entropy(outputs["span_logits"], targets, weights)
    metrics = {
        "loss": (mlm["loss"][0] + sbo["loss"][0], mlm["loss"][1]),
        "mlm_loss": mlm["loss"],
        "accuracy": mlm["accuracy"],
        "sbo_loss": sbo["loss"],
        "sbo_accuracy": sbo["accuracy"],
        "num_tokens": mlm["num_tokens"],
    }
    return mlm_loss + sbo_loss, metrics


SPAN_BOUNDARY = Objective("span_boundary", "encoder_span_boundary", "encoder_span_boundary", model_inputs, loss_fn)
