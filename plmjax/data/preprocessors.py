"""seqio preprocessors shared by the pre-training objectives: packing documents into fixed-length examples.

Every preprocessor takes and returns a `tf.data.Dataset` of dicts, with seqio's keyword arguments
(`sequence_length`, `output_features`) injected by the Task. Masked LM lives in `masking.py`, T5 span
corruption in `span_corruption.py`.
"""
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from plmjax.data import vocabularies

DOCS_PER_GROUP = 128  # documents concatenated at a time; each group ends in one shorter chunk


def concatenate_and_split(dataset: tf.data.Dataset, *, length: int, feature_key: str = "targets",
                          separator_id: Optional[int] = None, prefix_id: Optional[int] = None,
                          suffix_id: Optional[int] = None, min_length: int = 1,
                          docs_per_group: int = DOCS_PER_GROUP,
                          aligned_features: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
    """Concatenates tokenized documents and splits the stream into examples of at most `length` tokens.

    Each document is followed by `separator_id` (if given); groups of `docs_per_group` documents are
    concatenated and cut into chunks of `length` tokens minus room for `prefix_id` / `suffix_id` (e.g. BERT's
    [CLS] ... [SEP]), which are added to every chunk. The last chunk of a group is shorter; chunks with fewer
    than `min_length` tokens (before prefix/suffix) are dropped. Returns examples {feature_key: [<= length]}.

    `aligned_features` {name: fill value} are per-token features of the same length as `feature_key` (e.g. word
    starts from a word segmenter); they are cut into the same chunks, with the fill value at every separator,
    prefix and suffix position.
    """
    aligned = dict(aligned_features or {})
    body_length = length - (prefix_id is not None) - (suffix_id is not None)
    if body_length < 1:
        raise ValueError(f"Sequence length {length} leaves no room for text after the special tokens.")

    def document_tokens(features):
        out = {}
        for key, fill in [(feature_key, separator_id), *aligned.items()]:
            tokens = tf.cast(features[key], tf.int32)
            if separator_id is not None:
                tokens = tf.concat([tokens, [fill]], axis=0)
            out[key] = tokens
        return out

    def split_group(documents):  # {key: [docs, (tokens)]} -> {key: [chunks, body_length]}, [chunks]
        num_tokens = tf.size(documents[feature_key].flat_values, out_type=tf.int64)
        starts = tf.range(0, num_tokens, body_length, dtype=tf.int64)
        row_splits = tf.concat([starts, [num_tokens]], axis=0)
        chunks = {key: tf.RaggedTensor.from_row_splits(value.flat_values, row_splits)
                  for key, value in documents.items()}
        return ({key: chunk.to_tensor(shape=[None, body_length]) for key, chunk in chunks.items()},
                chunks[feature_key].row_lengths())

    def add_specials(chunk, chunk_length):
        out = {}
        for key, fill in [(feature_key, None), *aligned.items()]:
            tokens = chunk[key][:chunk_length]
            if prefix_id is not None:
                tokens = tf.concat([[prefix_id if fill is None else fill], tokens], axis=0)
            if suffix_id is not None:
                tokens = tf.concat([tokens, [suffix_id if fill is None else fill]], axis=0)
            out[key] = tokens
        return out

    dataset = dataset.map(document_tokens, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.ragged_batch(docs_per_group)
    dataset = dataset.map(split_group, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    dataset = dataset.filter(lambda chunk, chunk_length: chunk_length >= min_length)
    return dataset.map(add_specials, num_parallel_calls=tf.data.AUTOTUNE)


def feature_length(sequence_length: Optional[Mapping[str, int]], key: str, preprocessor: str) -> int:
    """`sequence_length[key]`, or a clear error when the caller did not give it."""
    if not sequence_length or sequence_length.get(key) is None:
        raise ValueError(f"{preprocessor} needs task_feature_lengths[{key!r}] (got {sequence_length}); pass e.g. "
                         f"task_feature_lengths={{{key!r}: 128, ...}} to plmjax.data.pipeline.get_dataset.")
    return int(sequence_length[key])


def pack_for_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Causal LM: documents joined by EOS and split into `targets` of `sequence_length['targets']` tokens.

    A vocabulary without EOS (WordPiece) separates documents with [SEP]. seqio's LMFeatureConverter then
    makes `decoder_input_tokens` by shifting the targets right.
    """
    vocab = output_features["targets"].vocabulary
    separator_id = vocab.eos_id if vocab.eos_id is not None else vocabularies.special_tokens(vocab).sep_id
    return concatenate_and_split(dataset, length=feature_length(sequence_length, "targets", "pack_for_lm"),
                                 separator_id=separator_id)
