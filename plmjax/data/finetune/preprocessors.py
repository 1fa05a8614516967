"""seqio preprocessors of the fine-tuning tasks: examples (spec.py's schema) -> task features.

Encoder format (a `WordPieceVocabulary` as the 'inputs' feature's vocabulary; lengths from
`sequence_length['inputs']`), per kind, with per-example features of shape [1]:

- classification / regression: `inputs` ([CLS] a [SEP] (b [SEP])), `token_types`, `labels`, `label_values`,
  `example_ids`;
- span_extraction: `inputs` ([CLS] question [SEP] context [SEP]), `token_types`, `start_positions`,
  `end_positions`, `example_ids`;
- multiple_choice: `inputs`, `token_types` of shape [num_choices, length] (one pair per choice:
  [CLS] question choice [SEP] context [SEP]), `labels`, `example_ids`;
- tagging: `inputs` ([CLS] words [SEP]), `token_types`, `tag_labels` (the word's tag at its first piece),
  `tag_weights` (float32), `example_ids`.

Text-to-text format (`text_to_text`): strings `inputs` = "<prefix> <field>: <text> <field>: <text> ..." and
`targets` = the label word (regression: the score rounded to 0.2, '%.1f'; span: the answer; multiple choice:
the chosen text; tagging: the tags joined by spaces), for seqio's tokenize and the EncDec / LM converters.
"""
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import preprocessors as data_preprocessors
from plmjax.data.finetune import encoding

AUTOTUNE = tf.data.AUTOTUNE


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _format_and_length(sequence_length, output_features, name: str):
    length = data_preprocessors.feature_length(sequence_length, "inputs", name)
    return encoding.encoder_format(output_features["inputs"].vocabulary), length


def _one(value, dtype=tf.int32) -> tf.Tensor:
    return tf.reshape(tf.cast(value, dtype), [1])


def encode_classification(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                          output_features: Mapping[str, seqio.Feature], *,
                          text_fields: Sequence[str]) -> tf.data.Dataset:
    """Classification and regression in BERT's format (one or two texts, longest-first truncation)."""
    encoder, length = _format_and_length(sequence_length, output_features, "encode_classification")
    pair = len(text_fields) == 2

    def encode(a, b):
        return encoder.encode(_text(a), _text(b) if pair else None, length)

    def convert(example):
        texts = [example[f] for f in text_fields] + ([] if pair else [tf.constant("")])
        ids, types = tf.numpy_function(encode, texts, (tf.int32, tf.int32), stateful=False)
        return {"inputs": tf.ensure_shape(ids, [None]), "token_types": tf.ensure_shape(types, [None]),
                "labels": _one(example["label"]), "label_values": _one(example["label_value"], tf.float32),
                "example_ids": _one(example["idx"])}

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)


def encode_span(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                output_features: Mapping[str, seqio.Feature], *, max_question_length: int = 64) -> tf.data.Dataset:
    """Span extraction (CMRC2018): answer character offsets -> token positions (0 = [CLS] when cut away)."""
    encoder, length = _format_and_length(sequence_length, output_features, "encode_span")

    def encode(question, context, answer, answer_start):
        ids, types, start, end = encoder.encode_span(_text(question), _text(context), _text(answer),
                                                     int(answer_start), length, max_question_length)
        return ids, types, np.int32(start), np.int32(end)

    def convert(example):
        ids, types, start, end = tf.numpy_function(
            encode, [example["question"], example["context"], example["answer"], example["answer_start"]],
            (tf.int32, tf.int32, tf.int32, tf.int32), stateful=False)
        return {"inputs": tf.ensure_shape(ids, [None]), "token_types": tf.ensure_shape(types, [None]),
                "start_positions": _one(start), "end_positions": _one(end), "example_ids": _one(example["idx"])}

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)


def encode_multiple_choice(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                           output_features: Mapping[str, seqio.Feature], *, num_choices: int) -> tf.data.Dataset:
    """Multiple choice: one [CLS] question choice [SEP] context [SEP] row per choice -> [num_choices, length]."""
    encoder, length = _format_and_length(sequence_length, output_features, "encode_multiple_choice")

    def encode(context, question, choices):
        question = _text(question)
        firsts = [" ".join(filter(None, [question, _text(c)])) for c in choices]
        return encoder.encode_choices(firsts, [_text(context)] * len(firsts), length)

    def convert(example):
        ids, types = tf.numpy_function(encode, [example["context"], example["question"], example["choices"]],
                                       (tf.int32, tf.int32), stateful=False)
        return {"inputs": tf.ensure_shape(ids, [num_choices, None]),
                "token_types": tf.ensure_shape(types, [num_choices, None]),
                "labels": _one(example["label"]), "example_ids": _one(example["idx"])}

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)


def encode_tagging(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Token tagging: each word's tag at its first WordPiece, weight 1 there and 0 elsewhere."""
    encoder, length = _format_and_length(sequence_length, output_features, "encode_tagging")

    def encode(words, tags):
        return encoder.encode_words([_text(w) for w in words], tags.tolist(), length)

    def convert(example):
        ids, types, tag_labels, tag_weights = tf.numpy_function(
            encode, [example["words"], example["tags"]], (tf.int32, tf.int32, tf.int32, tf.float32), stateful=False)
        return {"inputs": tf.ensure_shape(ids, [None]), "token_types": tf.ensure_shape(types, [None]),
                "tag_labels": tf.ensure_shape(tag_labels, [None]), "tag_weights": tf.ensure_shape(tag_weights, [None]),
                "example_ids": _one(example["idx"])}

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)


# ------------------------------------------------------------------------------------------- text to text


def _field(name: str, text: tf.Tensor) -> tf.Tensor:
    return tf.strings.join([f"{name}:", tf.strings.strip(text)], separator=" ")


def text_to_text(dataset: tf.data.Dataset, *, prefix: str, kind: str, text_fields: Sequence[str] = (),
                 label_words: Sequence[str] = ()) -> tf.data.Dataset:
    """Examples -> {'inputs': "<prefix> <field>: <text> ...", 'targets': <label word>, 'example_ids' [1]}.

    `text_fields` are the example's texts in input order (multiple choice adds "choice<i>: <text>" for each
    choice; tagging writes "sentence: <words>"). Unlabeled examples (label -1) get an empty target."""
    words = tf.constant(list(label_words) or [""], tf.string)

    def label_word(label):
        return tf.where(label >= 0, tf.gather(words, tf.maximum(label, 0)), "")

    def convert(example):
        parts = [_field(f, example[f]) for f in text_fields]
        if kind == "classification":
            target = label_word(example["label"])
        elif kind == "regression":
            score = tf.round(example["label_value"] * 5.0) / 5.0
            target = tf.where(example["label"] >= 0, tf.strings.as_string(score, precision=1), "")
        elif kind == "span_extraction":
            target = example["answer"]
        elif kind == "multiple_choice":
            choices = example["choices"]
            parts += [_field(f"choice{i}", choices[i]) for i in range(choices.shape[0])]
            target = tf.where(example["label"] >= 0, tf.gather(choices, tf.maximum(example["label"], 0)), "")
        elif kind == "tagging":
            parts = [_field("sentence", tf.strings.reduce_join(example["words"], separator=" "))]
            target = tf.strings.reduce_join(tf.gather(words, example["tags"]), separator=" ")
        else:
            raise ValueError(f"No text-to-text format for kind {kind!r}.")
        return {"inputs": tf.strings.join([prefix, *parts], separator=" "), "targets": target,
                "example_ids": _one(example["idx"])}

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)
