"""SpanBERT span masking (Joshi et al. 2020, section 3.1) with the span-boundary objective's targets.

Span lengths are counted in whole words and drawn from a geometric distribution Geo(p = 0.2) clipped at
10 words, as SpanBERT does it (the distribution truncated to 1..10 and renormalized: mean 3.8). Spans are placed
uniformly at random over the non-special words, without overlap, until round(noise_density * #words) words are
covered (the last span drawn is cut to fit), so 15% of the tokens are masked on average; a span never covers
a special token (one that reaches over a [SEP] of packing is two spans). Replacement is BERT's
80/10/10, decided once per span (all tokens of a span become [MASK], random tokens, or stay).

For the span-boundary objective (SBO) every masked token gets, as `span_left` / `span_right`, the positions of
the tokens just outside its span (x_{s-1}, x_{e+1}) and, as `span_position`, its offset inside the span
(clipped to MAX_SPAN_POSITION); all three are 0 on unmasked tokens.
"""
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import masking
from plmjax.data import whole_word_masking

SPAN_FEATURES = ("span_left", "span_right", "span_position")
MAX_SPAN_POSITION = 31  # SBO position embeddings: 32 rows (spans of up to 10 words rarely exceed 32 tokens)


def truncated_geometric_probs(p: float = 0.2, max_length: int = 10) -> np.ndarray:
    """P(length = 1..max_length) of Geo(p) truncated to max_length and renormalized (SpanBERT's `len_distrib`)."""
    probs = p * (1 - p) ** np.arange(max_length)
    return probs / probs.sum()


def sample_span_lengths(num: tf.Tensor, seed, p: float = 0.2, max_length: int = 10) -> tf.Tensor:
    """Int32 [num] span lengths from the truncated geometric distribution."""
    logits = tf.constant(np.log(truncated_geometric_probs(p, max_length))[None], tf.float32)  # [1, max_length]
    return tf.cast(tf.random.stateless_categorical(logits, num, seed=seed)[0], tf.int32) + 1


def _spans_over_words(num_words, budget, seeds, p, max_length):
    """(span id [num_words], -1 outside spans; position in span in words) for spans covering `budget` words."""
    lengths = sample_span_lengths(num_words, seeds[0], p, max_length)
    num_spans = tf.reduce_sum(tf.cast(tf.cumsum(lengths) < budget, tf.int32)) + 1
    lengths = lengths[:num_spans]
    lengths = tf.concat([lengths[:-1], [budget - tf.reduce_sum(lengths[:-1])]], axis=0)  # cut the last span
    # Uniform placement of the spans in order, with num_words - budget free words around them (stars and bars).
    slots = num_words - budget + num_spans
    bars = tf.sort(tf.argsort(tf.random.stateless_uniform([slots], seed=seeds[1]))[:num_spans])
    starts = bars - tf.range(num_spans) + tf.cumsum(lengths, exclusive=True)  # [spans], in words
    word = tf.range(num_words)
    span_of_word = tf.reduce_sum(tf.cast(word[:, None] >= starts[None, :], tf.int32), axis=1) - 1  # [words]
    inside = (span_of_word >= 0) & (word < tf.gather(starts + lengths, tf.maximum(span_of_word, 0)))
    return tf.where(inside, span_of_word, -1)


@seqio.map_over_dataset(num_seeds=4)
def span_mask(features: Mapping[str, tf.Tensor], seeds, output_features: Mapping[str, seqio.Feature],
              noise_density: float = 0.15, geometric_p: float = 0.2, max_span_length: int = 10,
              mask_token_rate: float = 0.8, random_token_rate: float = 0.1) -> dict[str, tf.Tensor]:
    """SpanBERT masking of `targets`; emits the MLM features plus span_left, span_right, span_position."""
    vocab = output_features["targets"].vocabulary
    special, is_special_table, regular_ids = masking.mask_vocabulary_tables(vocab)
    targets = tf.cast(features["targets"], tf.int32)  # [length]
    length = tf.shape(targets)[0]
    is_special = tf.gather(tf.constant(is_special_table), targets)
    word_starts = tf.gather(tf.constant(whole_word_masking.word_start_table(vocab)), targets)
    word_id = whole_word_masking.word_ids(word_starts, is_special)  # [length]
    # Candidate words, numbered 0..num_words-1 in order (special tokens are one-token words, never candidates).
    word_is_candidate = tf.math.unsorted_segment_max(tf.cast(~is_special, tf.int32), word_id, length) > 0
    candidate_index = tf.cumsum(tf.cast(word_is_candidate, tf.int32)) - 1  # [length] by word id
    num_words = tf.reduce_sum(tf.cast(word_is_candidate, tf.int32))
    budget = masking.num_to_mask(num_words, noise_density)
    span_of_candidate = _spans_over_words(num_words, budget, seeds[:2], geometric_p, max_span_length)
    span_of_candidate = tf.concat([span_of_candidate, [-1]], axis=0)  # never empty: gathers below stay in range
    candidate_of_token = tf.maximum(tf.gather(candidate_index, word_id), 0)  # (special tokens: masked out below)
    span = tf.where(is_special, -1, tf.gather(span_of_candidate, candidate_of_token))  # [length]
    selected = span >= 0

    positions = tf.range(length)
    # A span that reaches over a special token ([SEP] between packed documents) is two spans, one on each side.
    specials_before = tf.cumsum(tf.cast(is_special, tf.int32))
    _, span_part = tf.unique(span * (length + 1) + specials_before)  # [length], ids < length
    segment = tf.where(selected, span_part, length)  # unselected tokens go to an unused segment
    first = tf.math.unsorted_segment_min(positions, segment, length + 1)  # [spans...]: first token of each span
    last = tf.math.unsorted_segment_max(positions, segment, length + 1)
    span_left = tf.where(selected, tf.gather(first, segment) - 1, 0)
    span_right = tf.where(selected, tf.gather(last, segment) + 1, 0)
    span_position = tf.where(selected, tf.minimum(positions - tf.gather(first, segment), MAX_SPAN_POSITION), 0)

    # 80/10/10 once per span: every token of a span shares the span's draw.
    action = tf.gather(tf.random.stateless_uniform([length + 1], seed=seeds[2]), segment)
    use_mask = selected & (action < mask_token_rate)
    use_random = selected & (action >= mask_token_rate) & (action < mask_token_rate + random_token_rate)
    random_tokens = tf.gather(regular_ids, tf.random.stateless_uniform(
        [length], seed=seeds[3], maxval=tf.size(regular_ids), dtype=tf.int32))
    inputs = tf.where(use_mask, special.mask_id, tf.where(use_random, random_tokens, targets))
    return {**features, "inputs": inputs, "targets": targets, masking.MASKED_LM_WEIGHTS: tf.cast(selected, tf.int32),
            "span_left": span_left, "span_right": span_right, "span_position": span_position}
