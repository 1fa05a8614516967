"""BERT masked language modelling (Devlin et al. 2019, section 3.1 and appendix A.1) as seqio preprocessors.

`pack_for_mlm` packs documents into `[CLS] tokens [SEP]` examples; `mask_tokens` selects 15% of the
non-special positions of each example and replaces 80% of them with [MASK], 10% with a random token and
keeps 10%, deterministically from seqio's per-example seeds. It emits
  inputs              the corrupted ids (the encoder input),
  targets             the original ids,
  masked_lm_weights   1 on every selected position (masked, randomized or kept), 0 elsewhere,
which `feature_converters.MLMFeatureConverter` turns into `encoder_*` features.
"""
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import preprocessors
from plmjax.data import vocabularies

MASKED_LM_WEIGHTS = "masked_lm_weights"


def pack_for_mlm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                 output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Packs documents into `targets` of `sequence_length['inputs']` tokens.

    With [CLS]/[SEP] in the vocabulary, each example is `[CLS] text [SEP]` and documents are separated by
    [SEP] (RoBERTa's FULL-SENTENCES packing with BERT's specials); otherwise documents end in EOS.
    """
    vocab = output_features["targets"].vocabulary
    special = vocabularies.special_tokens(vocab)
    length = preprocessors.feature_length(sequence_length, "inputs", "pack_for_mlm")
    if special.cls_id is not None and special.sep_id is not None:
        return preprocessors.concatenate_and_split(dataset, length=length, separator_id=special.sep_id,
                                                   prefix_id=special.cls_id, suffix_id=special.sep_id)
    return preprocessors.concatenate_and_split(dataset, length=length, separator_id=vocab.eos_id)


def mask_vocabulary_tables(vocab: seqio.Vocabulary) -> tuple[vocabularies.SpecialTokens, np.ndarray, tf.Tensor]:
    """(special tokens, is_special bool table [vocab_size], regular ids int32 [n]) of a vocabulary with [MASK].

    Regular ids are the non-special ones: the candidates for masking and the random replacement tokens.
    """
    special = vocabularies.special_tokens(vocab)
    if special.mask_id is None:
        raise ValueError(f"Masked LM needs a [MASK] token, and {vocab} has none: use a vocabulary from "
                         "plmjax.data.vocabularies (CorpusSentencePieceVocabulary or a BERT WordPiece vocab.txt).")
    is_special_table = np.zeros([vocab.vocab_size], bool)
    is_special_table[list(special.special_ids)] = True
    return special, is_special_table, tf.constant(np.flatnonzero(~is_special_table), tf.int32)


def select_lowest_scores(scores: tf.Tensor, num_to_select: tf.Tensor) -> tf.Tensor:
    """Bool [length]: True on the `num_to_select` positions with the lowest scores (ties: the earlier)."""
    rank = tf.math.invert_permutation(tf.argsort(scores, stable=True))  # rank[i]: place of i in sorted order
    return rank < num_to_select


def bert_corrupt(targets: tf.Tensor, selected: tf.Tensor, seeds, mask_id: int, regular_ids: tf.Tensor,
                 mask_token_rate: float = 0.8, random_token_rate: float = 0.1) -> tf.Tensor:
    """BERT's replacement of the selected positions: [MASK] (80%), a random regular token (10%), kept (10%).

    One decision per position; seeds[0] draws the decisions, seeds[1] the random tokens.
    """
    length = tf.shape(targets)[0]
    action = tf.random.stateless_uniform([length], seed=seeds[0])
    use_mask = selected & (action < mask_token_rate)
    use_random = selected & (action >= mask_token_rate) & (action < mask_token_rate + random_token_rate)
    random_tokens = tf.gather(regular_ids, tf.random.stateless_uniform(
        [length], seed=seeds[1], maxval=tf.size(regular_ids), dtype=tf.int32))
    return tf.where(use_mask, mask_id, tf.where(use_random, random_tokens, targets))


def num_to_mask(num_candidates: tf.Tensor, noise_density) -> tf.Tensor:
    """round(noise_density * num_candidates), at least 1 and at most num_candidates (int32)."""
    count = tf.cast(tf.round(tf.cast(num_candidates, tf.float32) * noise_density), tf.int32)
    return tf.minimum(tf.maximum(count, 1), num_candidates)


@seqio.map_over_dataset(num_seeds=3)
def mask_tokens(features: Mapping[str, tf.Tensor], seeds, output_features: Mapping[str, seqio.Feature],
                noise_density: float = 0.15, mask_token_rate: float = 0.8,
                random_token_rate: float = 0.1) -> dict[str, tf.Tensor]:
    """Selects round(noise_density * #non-special) positions (at least 1) and corrupts them as BERT does.

    Special tokens (padding, [CLS], [SEP], EOS, [UNK], sentinels, ...) are never selected; random
    replacements are drawn uniformly from the non-special ids. Other features pass through unchanged.
    """
    special, is_special_table, regular_ids = mask_vocabulary_tables(output_features["targets"].vocabulary)
    targets = tf.cast(features["targets"], tf.int32)  # [length]
    length = tf.shape(targets)[0]
    is_candidate = ~tf.gather(tf.constant(is_special_table), targets)
    count = num_to_mask(tf.reduce_sum(tf.cast(is_candidate, tf.int32)), noise_density)

    # Exactly `count` candidates: those with the lowest random scores (non-candidates score 2 > 1).
    scores = tf.where(is_candidate, tf.random.stateless_uniform([length], seed=seeds[0]), 2.0)
    selected = select_lowest_scores(scores, count)
    inputs = bert_corrupt(targets, selected, seeds[1:], special.mask_id, regular_ids, mask_token_rate,
                          random_token_rate)
    return {**features, "inputs": inputs, "targets": targets, MASKED_LM_WEIGHTS: tf.cast(selected, tf.int32)}
