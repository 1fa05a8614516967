"""BART denoising (Lewis et al. 2020): the decoder reconstructs the whole original text from the corrupted
encoder input (sentence permutation + text infilling in the input pipeline, `plmjax.data.denoising`).

The loss is the token cross entropy over every decoder target, the same function as T5's span corruption; only
what the targets hold differs (the full text, not the sentinel-delimited spans).
"""

from plmjax.objectives import span_corruption
from plmjax.objectives.base import Objective

DENOISING = Objective("denoising", "encoder_decoder", "encoder_decoder", span_corruption.model_inputs,
                      span_corruption.loss_fn)
