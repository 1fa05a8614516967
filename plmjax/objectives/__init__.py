"""Pre-training and fine-tuning objectives, by name."""

from plmjax.objectives.base import Objective, token_cross_entropy
from plmjax.objectives.causal_lm import CAUSAL_LM, PREFIX_LM
from plmjax.objectives.mlm import MLM
from plmjax.objectives.span_corruption import SPAN_CORRUPTION
from plmjax.objectives.denoising import DENOISING
from plmjax.objectives.electra import ELECTRA
from plmjax.objectives.sentence_pair import NSP, SOP
from plmjax.objectives.span_boundary import SPAN_BOUNDARY
from plmjax.objectives.finetune import FINETUNE_OBJECTIVES
from plmjax.objectives.pet import PET

# Whole-word masking and u-PMLM train with the 'mlm' objective: they differ from BERT only in the data (their tasks).
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (MLM, CAUSAL_LM, PREFIX_LM, SPAN_CORRUPTION, DENOISING,
                                                        NSP, SOP, SPAN_BOUNDARY, ELECTRA, *FINETUNE_OBJECTIVES, PET)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; choose one of {sorted(OBJECTIVES)} (gin: train.objective).")
    return OBJECTIVES[name]
