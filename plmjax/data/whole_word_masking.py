"""Whole-word masking (BERT's `--do_whole_word_mask`; Chinese-BERT-wwm, Cui et al. 2019; NEZHA) as seqio steps.

Words are runs of tokens that begin at a *word start*:
- English (`word_starts_from_pieces`): a SentencePiece piece starting with "▁", or a WordPiece token not
  starting with "##", begins a word, so all pieces of a word are masked together;
- Chinese (`tokenize_with_jieba_word_starts`): the text is segmented into words by jieba, and a token begins a
  word when its first character begins a jieba word, so all characters of a word are masked together (a piece
  that straddles two jieba words joins them into one unit).
Special tokens are never masked and always end a word. `whole_word_mask` then selects whole words in a random
order until round(noise_density * #non-special tokens) tokens are selected (a word that would overshoot is
skipped, as Google's create_pretraining_data does) and replaces each selected token as BERT does (80% [MASK],
10% random, 10% kept). It emits the MLM features of `masking.mask_tokens` plus `word_starts`.
"""
import functools
import logging
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import masking
from plmjax.data import preprocessors
from plmjax.data import vocabularies

WORD_STARTS = "word_starts"


@functools.lru_cache(maxsize=16)
def _word_start_table(vocab: seqio.Vocabulary) -> np.ndarray:
    special = set(vocabularies.special_tokens(vocab).special_ids)
    if isinstance(vocab, vocabularies.WordPieceVocabulary):
        by_id = {i: token for token, i in vocab.tokenizer.get_vocab().items()}
        table = np.array([not by_id.get(i, "").startswith("##") for i in range(vocab.vocab_size)])
    elif isinstance(vocab, seqio.SentencePieceVocabulary):
        sp = vocab.tokenizer
        base = sp.GetPieceSize()
        table = np.array([i >= base or sp.IdToPiece(i).startswith("▁") for i in range(vocab.vocab_size)])
    else:
        raise TypeError(f"No word boundaries for {type(vocab).__name__}; use a SentencePiece or WordPiece vocabulary.")
    table[list(special)] = True
    return table


def word_start_table(vocab: seqio.Vocabulary) -> np.ndarray:
    """Bool [vocab_size]: True for ids that begin a word ("▁" pieces, non-"##" WordPieces, special tokens)."""
    return _word_start_table(vocab)


@seqio.map_over_dataset
def word_starts_from_pieces(features: Mapping[str, tf.Tensor], output_features) -> dict[str, tf.Tensor]:
    """Adds `word_starts` (int32 [length]) to tokenized `targets` from the vocabulary's piece boundaries."""
    table = tf.constant(word_start_table(output_features["targets"].vocabulary))
    return {**features, WORD_STARTS: tf.cast(tf.gather(table, tf.cast(features["targets"], tf.int32)), tf.int32)}


# ------------------------------------------------------------------------------------------------ Chinese


def _jieba():
    import jieba  # pylint: disable=import-outside-toplevel
    jieba.setLogLevel(logging.WARNING)
    return jieba


def _token_char_starts(vocab: seqio.Vocabulary, text: str) -> tuple[list[int], list[int]]:
    """(ids, character offset where each token begins) of `vocab.encode(text)`."""
    if isinstance(vocab, vocabularies.WordPieceVocabulary):
        encoding = vocab.tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [begin for begin, _ in encoding.offsets]
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        proto = vocab.tokenizer.encode(text, return_type="proto")
        byte_to_char = np.zeros(len(text.encode("utf-8")) + 1, np.int64)
        position = 0
        for char_index, char in enumerate(text):
            width = len(char.encode("utf-8"))
            byte_to_char[position:position + width] = char_index
            position += width
        byte_to_char[position] = len(text)
        return [p.id for p in proto.pieces], [int(byte_to_char[p.begin]) for p in proto.pieces]
    raise TypeError(f"No character offsets for {type(vocab).__name__}; use a SentencePiece or WordPiece vocabulary.")


def jieba_word_starts(vocab: seqio.Vocabulary, text: str) -> tuple[list[int], list[int]]:
    """(ids of `text`, 1 where the token's first character begins a jieba word else 0)."""
    word_begins = {begin for _, begin, _ in _jieba().tokenize(text)}
    ids, char_starts = _token_char_starts(vocab, text)
    # A zero-width piece (SentencePiece's "▁" before a word) joins the token that begins at the same character.
    starts = [int(i == 0 or (begin in word_begins and begin != char_starts[i - 1]))
              for i, begin in enumerate(char_starts)]
    return ids, starts


def tokenize_with_jieba_word_starts(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                                    text_key: str = "targets") -> tf.data.Dataset:
    """Text `text_key` -> {'targets': ids, 'word_starts': 0/1} with words found by jieba (replaces seqio's tokenize).

    The ids equal `vocabulary.encode(text)`.
    """
    vocab = output_features["targets"].vocabulary

    def encode(text: bytes):
        ids, starts = jieba_word_starts(vocab, text.decode("utf-8"))
        return np.array(ids, np.int32), np.array(starts, np.int32)

    def tokenize(features):
        ids, starts = tf.numpy_function(encode, [features[text_key]], (tf.int32, tf.int32), stateful=False)
        return {"targets": tf.ensure_shape(ids, [None]), WORD_STARTS: tf.ensure_shape(starts, [None])}

    return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def pack_for_whole_word_mlm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                            output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """`masking.pack_for_mlm` that carries `word_starts` along (1 on the added [CLS]/[SEP]/EOS)."""
    vocab = output_features["targets"].vocabulary
    special = vocabularies.special_tokens(vocab)
    length = preprocessors.feature_length(sequence_length, "inputs", "pack_for_whole_word_mlm")
    aligned = {WORD_STARTS: 1}
    if special.cls_id is not None and special.sep_id is not None:
        return preprocessors.concatenate_and_split(dataset, length=length, separator_id=special.sep_id,
                                                   prefix_id=special.cls_id, suffix_id=special.sep_id,
                                                   aligned_features=aligned)
    return preprocessors.concatenate_and_split(dataset, length=length, separator_id=vocab.eos_id,
                                               aligned_features=aligned)


# ---------------------------------------------------------------------------------------------- masking


def word_ids(word_starts: tf.Tensor, is_special: tf.Tensor) -> tf.Tensor:
    """Int32 [length]: the index of each token's word; a special token is a word of its own."""
    previous_special = tf.concat([[True], is_special[:-1]], axis=0)
    starts = (tf.cast(word_starts, tf.int32) > 0) | is_special | previous_special
    return tf.cumsum(tf.cast(starts, tf.int32)) - 1


def select_whole_words(word_id: tf.Tensor, is_candidate: tf.Tensor, budget: tf.Tensor, seed) -> tf.Tensor:
    """Bool [length]: whole words, taken in a random order while the selected token count stays <= budget."""
    length = tf.shape(word_id)[0]
    word_length = tf.math.unsorted_segment_sum(tf.ones_like(word_id), word_id, length)  # [length] (words <= length)
    word_is_candidate = tf.math.unsorted_segment_max(tf.cast(is_candidate, tf.int32), word_id, length) > 0
    scores = tf.where(word_is_candidate, tf.random.stateless_uniform([length], seed=seed), 2.0)
    order = tf.argsort(scores, stable=True)  # candidate words first, in a random order
    lengths_in_order = tf.where(tf.gather(word_is_candidate, order), tf.gather(word_length, order), budget + 1)

    def take(carry, word_length_):
        total, _ = carry
        fits = total + word_length_ <= budget
        return total + tf.where(fits, word_length_, 0), fits

    _, taken = tf.scan(take, lengths_in_order, initializer=(tf.constant(0), tf.constant(False)))
    selected_word = tf.scatter_nd(order[:, None], taken, [length])
    return tf.gather(selected_word, word_id) & is_candidate


@seqio.map_over_dataset(num_seeds=3)
def whole_word_mask(features: Mapping[str, tf.Tensor], seeds, output_features: Mapping[str, seqio.Feature],
                    noise_density: float = 0.15, mask_token_rate: float = 0.8,
                    random_token_rate: float = 0.1) -> dict[str, tf.Tensor]:
    """BERT MLM over whole words; `word_starts` from the features, else from the vocabulary's pieces."""
    vocab = output_features["targets"].vocabulary
    special, is_special_table, regular_ids = masking.mask_vocabulary_tables(vocab)
    targets = tf.cast(features["targets"], tf.int32)  # [length]
    if WORD_STARTS in features:
        word_starts = tf.cast(features[WORD_STARTS], tf.int32)
    else:
        word_starts = tf.cast(tf.gather(tf.constant(word_start_table(vocab)), targets), tf.int32)
    is_special = tf.gather(tf.constant(is_special_table), targets)
    is_candidate = ~is_special
    budget = masking.num_to_mask(tf.reduce_sum(tf.cast(is_candidate, tf.int32)), noise_density)
    selected = select_whole_words(word_ids(word_starts, is_special), is_candidate, budget, seeds[0])
    inputs = masking.bert_corrupt(targets, selected, seeds[1:], special.mask_id, regular_ids, mask_token_rate,
                                  random_token_rate)
    return {**features, "inputs": inputs, "targets": targets, WORD_STARTS: word_starts,
            masking.MASKED_LM_WEIGHTS: tf.cast(selected, tf.int32)}
