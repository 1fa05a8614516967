"""Probabilistically masked LM, u-PMLM (Liao et al. 2020, "Probabilistically Masked Language Model Capable of
Autoregressive Generation in Arbitrary Word Order") as a seqio preprocessor.

Each sequence draws its own masking ratio r ~ U[0, 1] and selects round(r * #non-special) positions (at least
one); everything else is BERT's (`masking.mask_tokens`): the same packing and the 80/10/10 replacement (set
`mask_token_rate=1.0, random_token_rate=0.0` to put [MASK] on every selected position). With r uniform, the
paper shows the objective equals that of an autoregressive permutated language model, which is what lets a
u-PMLM generate text in arbitrary word order.
"""
from typing import Mapping

import seqio
import tensorflow as tf

from plmjax.data import masking


@seqio.map_over_dataset(num_seeds=4)
def pmlm_mask_tokens(features: Mapping[str, tf.Tensor], seeds, output_features: Mapping[str, seqio.Feature],
                     mask_token_rate: float = 0.8, random_token_rate: float = 0.1) -> dict[str, tf.Tensor]:
    """BERT masking with a per-sequence masking ratio drawn uniformly from [0, 1] (seeds[0])."""
    special, is_special_table, regular_ids = masking.mask_vocabulary_tables(output_features["targets"].vocabulary)
    targets = tf.cast(features["targets"], tf.int32)  # [length]
    length = tf.shape(targets)[0]
    is_candidate = ~tf.gather(tf.constant(is_special_table), targets)
    ratio = tf.random.stateless_uniform([], seed=seeds[0])
    count = masking.num_to_mask(tf.reduce_sum(tf.cast(is_candidate, tf.int32)), ratio)
    scores = tf.where(is_candidate, tf.random.stateless_uniform([length], seed=seeds[1]), 2.0)
    selected = masking.select_lowest_scores(scores, count)
    inputs = masking.bert_corrupt(targets, selected, seeds[2:], special.mask_id, regular_ids, mask_token_rate,
                                  random_token_rate)
    return {**features, "inputs": inputs, "targets": targets, masking.MASKED_LM_WEIGHTS: tf.cast(selected, tf.int32)}
