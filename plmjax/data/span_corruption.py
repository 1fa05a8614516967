"""T5 span corruption (Raffel et al. 2020, section 3.1.4) as a seqio preprocessor.

A chunk of `tokens_length` tokens gets round(noise_density * length) noise tokens in
round(#noise / mean_noise_span_length) spans, placed alternately with non-noise spans (the chunk starts
with non-noise). The inputs keep the non-noise tokens and put one sentinel in place of each noise span;
the targets hold each noise span after its sentinel. Sentinel k (0-based) is the vocabulary's extra id
`<extra_id_k>` = vocab_size - 1 - k, as in T5. Both end in EOS. Replacing every sentinel of the inputs by
the targets' tokens that follow the same sentinel gives back the original chunk exactly.
"""
from typing import Mapping

import seqio
import tensorflow as tf

from plmjax.data import preprocessors


def _num_noise_and_spans(length, noise_density, mean_noise_span_length):
    """(#noise tokens, #noise spans) for a chunk of `length` >= 2 tokens: a Python int or an int32 tensor.

    One formula for both, so `span_corruption_lengths` (Python) and the pipeline (TF) always agree; both
    round half to even.
    """
    if isinstance(length, tf.Tensor):
        to_float, to_int = (lambda x: tf.cast(x, tf.float32)), (lambda x: tf.cast(tf.round(x), tf.int32))
        clip = tf.clip_by_value
    else:
        to_float, to_int, clip = float, round, (lambda x, low, high: min(max(x, low), high))
    num_noise = clip(to_int(to_float(length) * noise_density), 1, length - 1)
    num_spans = clip(to_int(to_float(num_noise) / mean_noise_span_length), 1, length - num_noise)
    return num_noise, num_spans


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(tokens_length, targets_length): the longest raw chunk whose corrupted inputs + EOS fit `inputs_length`,
    and the targets length (with EOS) it then needs. E.g. inputs 512 -> (568, 114), T5's setting."""

    def corrupted_lengths(length):
        num_noise, num_spans = _num_noise_and_spans(length, noise_density, mean_noise_span_length)
        return length - num_noise + num_spans + 1, num_noise + num_spans + 1

    if inputs_length < 3:
        raise ValueError(f"Span corruption needs an inputs length of at least 3, got {inputs_length}.")
    tokens_length = inputs_length - 1
    while corrupted_lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, corrupted_lengths(tokens_length)[1]


def _random_segmentation(num_items, num_segments, seed):
    """Lengths [num_segments] of a uniformly random composition of num_items into non-empty segments."""
    # Cut before num_segments - 1 distinct positions drawn from 1 .. num_items - 1.
    cuts = tf.argsort(tf.random.stateless_uniform([num_items - 1], seed=seed))[:num_segments - 1] + 1
    starts = tf.scatter_nd(cuts[:, None], tf.ones_like(cuts), [num_items])  # 1 where a segment starts
    segment_ids = tf.cumsum(starts)  # [num_items]
    return tf.math.unsorted_segment_sum(tf.ones_like(segment_ids), segment_ids, num_segments)


def random_spans_noise_mask(length, noise_density: float, mean_noise_span_length: float, seeds):
    """Bool [length]: True on noise tokens; spans alternate non-noise, noise, ..., ending with noise."""
    num_noise, num_spans = _num_noise_and_spans(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
    span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])  # [2 * spans]
    span_starts = tf.cumsum(span_lengths)[:-1]
    span_index = tf.cumsum(tf.scatter_nd(span_starts[:, None], tf.ones_like(span_starts), [length]))
    return span_index % 2 == 1


def _spans_to_sentinels(tokens, span_mask, vocab_size):
    """Replaces each span of span_mask by one sentinel: the k-th span (0-based) becomes vocab_size - 1 - k."""
    previous = tf.concat([[False], span_mask[:-1]], axis=0)
    span_start = span_mask & ~previous
    sentinels = vocab_size - tf.cumsum(tf.cast(span_start, tf.int32))
    return tf.boolean_mask(tf.where(span_start, sentinels, tokens), ~(span_mask & previous))


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature], noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
    """Packs tokenized `targets` into chunks and corrupts them into T5 `inputs` / `targets` (with EOS)."""
    inputs_length = preprocessors.feature_length(sequence_length, "inputs", "span_corruption")
    tokens_length, targets_length = span_corruption_lengths(inputs_length, noise_density, mean_noise_span_length)
    if sequence_length.get("targets") is not None and sequence_length["targets"] < targets_length:
        raise ValueError(
            f"task_feature_lengths['targets']={sequence_length['targets']} is too short for span corruption with "
            f"inputs length {inputs_length}: the targets need {targets_length} tokens "
            f"(plmjax.data.span_corruption.span_corruption_lengths({inputs_length}) = "
            f"{(tokens_length, targets_length)}).")
    vocab = output_features["targets"].vocabulary
    max_spans = _num_noise_and_spans(tokens_length, noise_density, mean_noise_span_length)[1]
    if vocab.extra_ids < max_spans:
        raise ValueError(f"Span corruption of {tokens_length} tokens needs {max_spans} sentinel ids, but {vocab} "
                         f"has extra_ids={vocab.extra_ids}.")

    @seqio.map_over_dataset(num_seeds=2)
    def corrupt(features, seeds):
        tokens = features["targets"]  # [length]
        noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density, mean_noise_span_length, seeds)
        eos = [vocab.eos_id]
        return {
            "inputs": tf.concat([_spans_to_sentinels(tokens, noise_mask, vocab.vocab_size), eos], axis=0),
            "targets": tf.concat([_spans_to_sentinels(tokens, ~noise_mask, vocab.vocab_size), eos], axis=0),
        }

    dataset = preprocessors.concatenate_and_split(dataset, length=tokens_length, min_length=2)
    return corrupt(dataset)
