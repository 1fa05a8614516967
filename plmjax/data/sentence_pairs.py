"""Sentence pairs from documents for next-sentence prediction (NSP, BERT) and sentence-order prediction (SOP,
ALBERT, Lan et al. 2020), as a seqio preprocessor.

Documents are split into sentences at sentence-final tokens (`denoising.sentence_end_table`); each document is
cut into chunks of whole sentences of about `length - 3` tokens (10% of chunks get a shorter random target, as
BERT's short_seq_prob), each chunk is split at a random sentence into A and B, and the pair becomes
`[CLS] A [SEP] B [SEP]` with token types 0 (through the first [SEP]) and 1, following BERT's
create_pretraining_data:
- NSP: with probability 1/2 (always when the chunk has one sentence) B is replaced by text from a random other
  document of the same group of documents, label 1 ("random next"); else B is the true continuation, label 0;
  the sentences a random B displaced are used for the next chunk.
- SOP: B is always the true continuation; with probability 1/2 A and B are swapped, label 1 ("swapped"). A
  one-sentence chunk is split at a random token (ALBERT would draw B from another document there, mixing NSP
  into SOP).
Pairs longer than `length - 3` lose tokens from the longer side, at its front or back at random. Randomness comes
from seqio's per-group seeds, so the pairs are the same on every run. The MLM step (`masking.mask_tokens`)
follows; `sentence_labels` ([1] per example) and `token_types` pass through it.
"""
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import denoising
from plmjax.data import preprocessors
from plmjax.data import vocabularies

TOKEN_TYPES = "token_types"
SENTENCE_LABELS = "sentence_labels"
TASKS = ("nsp", "sop")


def _sentences(tokens: np.ndarray, is_end: np.ndarray) -> list[np.ndarray]:
    ends = np.flatnonzero(is_end[tokens]) + 1
    return [s for s in np.split(tokens, ends) if len(s)]


def _truncate_pair(a: list, b: list, max_tokens: int, rng: np.random.Generator) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def make_pairs(documents: list[list[np.ndarray]], max_tokens: int, task: str, rng: np.random.Generator,
               short_seq_prob: float = 0.1) -> list[tuple[list[int], list[int], int]]:
    """(A, B, label) pairs from documents given as lists of sentences (arrays of ids)."""
    pairs = []
    for d, document in enumerate(documents):
        target = max_tokens if rng.random() >= short_seq_prob else int(rng.integers(2, max_tokens + 1))
        chunk, chunk_length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            chunk_length += len(document[i])
            if i == len(document) - 1 or chunk_length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                b = [t for s in chunk[a_end:] for t in s]
                label = 0
                if task == "nsp" and (len(chunk) == 1 or rng.random() < 0.5) and len(documents) > 1:
                    label = 1
                    other = documents[(d + int(rng.integers(1, len(documents)))) % len(documents)]
                    b = []
                    for sentence in other[int(rng.integers(0, len(other))):]:
                        b.extend(sentence.tolist())
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # the displaced sentences start the next chunk
                elif task == "sop":
                    if not b and len(a) >= 2:  # one sentence: split it at a random token
                        cut = int(rng.integers(1, len(a)))
                        a, b = a[:cut], a[cut:]
                    if rng.random() < 0.5:
                        a, b, label = b, a, 1
                _truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    pairs.append((a, b, label))
                chunk, chunk_length = [], 0
            i += 1
    return pairs


def sentence_pairs(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature], task: str = "nsp", short_seq_prob: float = 0.1,
                   docs_per_group: int = preprocessors.DOCS_PER_GROUP) -> tf.data.Dataset:
    """Tokenized documents (`targets`) -> {'targets': [CLS] A [SEP] B [SEP], 'token_types', 'sentence_labels'}."""
    if task not in TASKS:
        raise ValueError(f"Unknown sentence-pair task {task!r}; expected one of {TASKS}.")
    vocab = output_features["targets"].vocabulary
    special = vocabularies.special_tokens(vocab)
    if special.cls_id is None or special.sep_id is None:
        raise ValueError(f"Sentence pairs need [CLS] and [SEP] tokens, and {vocab} has none: use a vocabulary "
                         "from plmjax.data.vocabularies.")
    length = preprocessors.feature_length(sequence_length, "inputs", "sentence_pairs")
    if length < 5:
        raise ValueError(f"Sentence pairs need an inputs length of at least 5, got {length}.")
    is_end = denoising.sentence_end_table(vocab)

    def group_pairs(flat_ids: np.ndarray, row_splits: np.ndarray, seed: np.ndarray):
        rng = np.random.default_rng(seed.astype(np.int64).tolist())
        documents = [_sentences(flat_ids[start:end], is_end) for start, end in zip(row_splits[:-1], row_splits[1:])]
        pairs = make_pairs([d for d in documents if d], length - 3, task, rng, short_seq_prob)
        tokens = np.zeros([len(pairs), length], np.int32)
        types = np.zeros([len(pairs), length], np.int32)
        for row, (a, b, _) in enumerate(pairs):
            ids = [special.cls_id, *a, special.sep_id, *b, special.sep_id]
            tokens[row, :len(ids)] = ids
            types[row, len(a) + 2:len(ids)] = 1
        return tokens, types, np.array([[label] for _, _, label in pairs], np.int32).reshape(-1, 1)

    @seqio.map_over_dataset(num_seeds=1)
    def to_pairs(group, seed):
        documents = group["targets"]  # [docs, (tokens)]
        tokens, types, labels = tf.numpy_function(
            group_pairs, [tf.cast(documents.flat_values, tf.int32), documents.row_splits, seed],
            (tf.int32, tf.int32, tf.int32), stateful=False)
        return {"targets": tf.ensure_shape(tokens, [None, length]), TOKEN_TYPES: tf.ensure_shape(types, [None, length]),
                SENTENCE_LABELS: tf.ensure_shape(labels, [None, 1])}

    def trim(example):
        example_length = tf.reduce_sum(tf.cast(example["targets"] != 0, tf.int32))
        return {"targets": example["targets"][:example_length], TOKEN_TYPES: example[TOKEN_TYPES][:example_length],
                SENTENCE_LABELS: example[SENTENCE_LABELS]}

    dataset = dataset.map(lambda ex: {"targets": tf.cast(ex["targets"], tf.int32)})
    dataset = to_pairs(dataset.ragged_batch(docs_per_group)).unbatch()
    return dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)
