"""BERT masked language modelling (Devlin et al., 2019): predict the selected positions' original tokens.

Masking (15%, 80/10/10) runs in the input pipeline (`plmjax.data`); the batch marks the predicted positions
with `encoder_loss_weights`, including those kept or replaced by a random token.
"""

from plmjax.objectives.base import Objective, token_cross_entropy


def model_inputs(batch):
    return {"input_ids": batch["encoder_input_tokens"], "token_type_ids": batch.get("encoder_token_types")}


def loss_fn(batch, outputs):
    return token_cross_entropy(outputs["logits"], batch["encoder_target_tokens"], batch["encoder_loss_weights"])


MLM = Objective("mlm", "encoder", "encoder", model_inputs, loss_fn)
