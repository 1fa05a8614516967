"""Pre-training and fine-tuning objectives, by name."""

from plmjax.objectives.base import Objective, token_cross_entropy
from plmjax.objectives.causal_lm import CAUSAL_LM, PREFIX_LM
from plmjax.objectives.mlm import MLM
from plmjax.objectives.span_corruption import SPAN_CORRUPTION

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (MLM, CAUSAL_LM, PREFIX_LM, SPAN_CORRUPTION)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; choose one of {sorted(OBJECTIVES)} (gin: train.objective).")
    return OBJECTIVES[name]
