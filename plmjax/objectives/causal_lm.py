"""Causal language modelling (GPT, PanGu-α) and prefix LM (bidirectional attention over the prefix).

The batch is seqio's decoder-only layout: `decoder_input_tokens` are the targets shifted right with 0 first,
so padding is read from `decoder_target_tokens`. A packed batch (`train.pack = True`) adds its segment ids and
positions, and each packed example's loss is the one it has alone.
"""

from plmjax.objectives.base import Objective, packed_inputs, token_cross_entropy


def model_inputs(batch):
    return {
        "input_ids": batch["decoder_input_tokens"],
        "input_mask": batch["decoder_target_tokens"] > 0,
        "prefix_mask": batch.get("decoder_causal_attention"),
        **packed_inputs(batch, "decoder"),  # a packed batch: decoder_segment_ids, decoder_positions
    }


def loss_fn(batch, outputs):
    return token_cross_entropy(outputs["logits"], batch["decoder_target_tokens"], batch["decoder_loss_weights"])


CAUSAL_LM = Objective("causal_lm", "decoder", "decoder", model_inputs, loss_fn)
PREFIX_LM = Objective("prefix_lm", "decoder", "prefix_lm", model_inputs, loss_fn)
