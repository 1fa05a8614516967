"""T5 span corruption (Raffel et al., 2020) and other sequence-to-sequence objectives.

Corruption (noise density, mean span length, sentinels) runs in the input pipeline; the model reads the
corrupted `encoder_input_tokens` and predicts the sentinel-delimited spans in `decoder_target_tokens`.
"""

from plmjax.objectives.base import Objective, packed_inputs, token_cross_entropy


def model_inputs(batch):
    return {
        "encoder_input_ids": batch["encoder_input_tokens"],
        "decoder_input_ids": batch["decoder_input_tokens"],
        "encoder_mask": batch["encoder_input_tokens"] > 0,
        "decoder_mask": batch["decoder_target_tokens"] > 0,
        **packed_inputs(batch, "encoder", "encoder_"),  # a packed batch (train.pack = True): segment ids, positions
        **packed_inputs(batch, "decoder", "decoder_"),
    }


def loss_fn(batch, outputs):
    return token_cross_entropy(outputs["logits"], batch["decoder_target_tokens"], batch["decoder_loss_weights"])


SPAN_CORRUPTION = Objective("span_corruption", "encoder_decoder", "encoder_decoder", model_inputs, loss_fn)
