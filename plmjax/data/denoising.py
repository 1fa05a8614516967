"""BART denoising (Lewis et al. 2020, section 2.2): sentence permutation and text infilling, as a seqio step.

A chunk of tokens is (1) split into sentences at tokens that end one ('.', '!', '?', '。', '！', '？' pieces,
EOS and [SEP]) and the sentences are shuffled; then (2) text infilling: round(noise_density * length) tokens
(BART: 30%) are covered by spans whose lengths are drawn from Poisson(λ = 3), placed uniformly at random without
overlap, and every span becomes one [MASK] token; a zero-length span inserts a [MASK]; spans that touch merge
into one [MASK]. The encoder reads the corrupted chunk + EOS, the decoder reconstructs the original chunk + EOS.
Spans count tokens (fairseq's BART counts whole words of its byte-level BPE; here a SentencePiece piece).
"""
import functools
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import preprocessors
from plmjax.data import vocabularies

SENTENCE_FINAL = (".", "!", "?", "。", "！", "？")


@functools.lru_cache(maxsize=16)
def _sentence_end_table(vocab: seqio.Vocabulary) -> np.ndarray:
    if isinstance(vocab, vocabularies.WordPieceVocabulary):
        by_id = {i: token for token, i in vocab.tokenizer.get_vocab().items()}
        pieces = [by_id.get(i, "") for i in range(vocab.vocab_size)]
    elif isinstance(vocab, seqio.SentencePieceVocabulary):
        pieces = [vocab.tokenizer.IdToPiece(i) for i in range(vocab.vocab_size)]
    else:
        raise TypeError(f"No sentence ends for {type(vocab).__name__}; use a SentencePiece or WordPiece vocabulary.")
    table = np.array([piece.endswith(SENTENCE_FINAL) for piece in pieces])
    special = vocabularies.special_tokens(vocab)
    for token_id in (vocab.eos_id, special.sep_id):
        if token_id is not None:
            table[token_id] = True
    return table


def sentence_end_table(vocab: seqio.Vocabulary) -> np.ndarray:
    """Bool [vocab_size]: True for ids that end a sentence (sentence-final punctuation, EOS, [SEP])."""
    return _sentence_end_table(vocab)


def permute_sentences(tokens: tf.Tensor, is_end: tf.Tensor, seed) -> tf.Tensor:
    """Shuffles the sentences of `tokens` [length]; a sentence ends at (and includes) a True of `is_end`."""
    length = tf.shape(tokens)[0]
    is_end = tf.cast(is_end, tf.int32)
    sentence = tf.cumsum(is_end) - is_end  # [length]: index of each token's sentence
    num_sentences = sentence[-1] + 1
    order = tf.argsort(tf.random.stateless_uniform([num_sentences], seed=seed))  # order[k]: sentence at place k
    place = tf.math.invert_permutation(order)
    key = tf.gather(place, sentence) * length + tf.range(length)
    return tf.gather(tokens, tf.argsort(key))


def _random_composition_with_zeros(total, num_parts_minus_one, seed):
    """Cumulative part sizes before each of num_parts_minus_one separators: a uniform random composition of
    `total` items into num_parts_minus_one + 1 parts that may be empty (stars and bars)."""
    slots = total + num_parts_minus_one
    bars = tf.sort(tf.argsort(tf.random.stateless_uniform([slots], seed=seed))[:num_parts_minus_one])
    return bars - tf.range(num_parts_minus_one)  # items before separator j


def text_infilling(tokens: tf.Tensor, seeds, mask_id: int, noise_density: float = 0.3,
                   poisson_lambda: float = 3.0) -> tuple[tf.Tensor, tf.Tensor]:
    """(corrupted [<= length], noise mask [length]): Poisson-length spans, each replaced by one [MASK]."""
    length = tf.shape(tokens)[0]
    num_noise = tf.clip_by_value(tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32),
                                 1, tf.maximum(length - 1, 1))
    draws = tf.random.stateless_poisson([length], seed=seeds[0], lam=poisson_lambda, dtype=tf.int32)
    covered = tf.cumsum(draws)
    num_spans = tf.reduce_sum(tf.cast(covered < num_noise, tf.int32)) + 1  # spans until num_noise is covered
    num_spans = tf.minimum(num_spans, num_noise)  # never more [MASK]s than noise tokens: inputs <= length
    span_lengths = draws[:num_spans]
    # Trim (or, after the clip above, extend) the last span so that exactly num_noise tokens are noise.
    last = num_noise - tf.reduce_sum(span_lengths[:-1])
    span_lengths = tf.concat([span_lengths[:-1], [last]], axis=0)  # [spans]
    before = _random_composition_with_zeros(length - num_noise, num_spans, seeds[1])  # clean tokens before span j
    starts = before + tf.cumsum(span_lengths, exclusive=True)  # [spans]
    boundaries = tf.scatter_nd(starts[:, None], tf.ones_like(starts), [length + 1]) - tf.scatter_nd(
        (starts + span_lengths)[:, None], tf.ones_like(starts), [length + 1])
    noise = tf.cumsum(boundaries)[:length] > 0  # [length]
    span_starts = tf.scatter_nd(starts[:, None], tf.ones_like(starts), [length + 1]) > 0  # [length + 1]
    after_noise = tf.concat([[False], noise], axis=0)  # [length + 1]: the token before is noise
    # Slot i holds an optional [MASK] then token i (slot `length`: only a [MASK]); a [MASK] right after a noise
    # token would repeat the previous span's [MASK] (touching spans merge).
    emit_mask = span_starts & ~after_noise
    emit_token = tf.concat([~noise, [False]], axis=0)
    slots = tf.stack([tf.fill([length + 1], mask_id), tf.concat([tokens, [0]], axis=0)], axis=1)  # [length + 1, 2]
    keep = tf.stack([emit_mask, emit_token], axis=1)
    return tf.boolean_mask(tf.reshape(slots, [-1]), tf.reshape(keep, [-1])), noise


def bart_denoising(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature], noise_density: float = 0.3,
                   poisson_lambda: float = 3.0, permute: bool = True) -> tf.data.Dataset:
    """Packs tokenized `targets` into chunks of sequence_length['targets'] - 1 tokens and corrupts them."""
    length = preprocessors.feature_length(sequence_length, "targets", "bart_denoising")
    vocab = output_features["targets"].vocabulary
    mask_id = vocabularies.special_tokens(vocab).mask_id
    if mask_id is None:
        raise ValueError(f"BART denoising needs a [MASK] token, and {vocab} has none: use a vocabulary from "
                         "plmjax.data.vocabularies.")
    is_end_table = tf.constant(sentence_end_table(vocab))
    eos = [vocab.eos_id]

    @seqio.map_over_dataset(num_seeds=3)
    def corrupt(features, seeds):
        tokens = features["targets"]  # [length - 1]
        source = permute_sentences(tokens, tf.gather(is_end_table, tokens), seeds[0]) if permute else tokens
        inputs, _ = text_infilling(source, seeds[1:], mask_id, noise_density, poisson_lambda)
        return {"inputs": tf.concat([inputs, eos], axis=0), "targets": tf.concat([tokens, eos], axis=0)}

    dataset = preprocessors.concatenate_and_split(dataset, length=length - 1, separator_id=vocab.eos_id,
                                                  min_length=2)
    return corrupt(dataset)
