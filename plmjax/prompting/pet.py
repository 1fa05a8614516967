"""PET cloze classification (Schick & Schütze, 2021): a pattern turns an example into a cloze question with
[MASK]s, and a verbalizer maps each label to the word an MLM should put there.

    "<sentence> It was [MASK]."          labels: 0 -> 'terrible', 1 -> 'great'         (SST-2)
    "这是一则[MASK][MASK]新闻：<sentence>"  labels: '103' -> '体育', ...                     (FewCLUE TNEWS)

A verbalizer of n tokens (Chinese: n characters) fills n [MASK]s; the pattern holds m [MASK]s, m the longest
verbalizer's token count, and shorter verbalizers are padded with weight 0. A label's score is the sum over its
tokens of the MLM's log-probability at their [MASK] (`plmjax.objectives.pet.pet_scores`).

`pet_features` is the seqio preprocessor (task features `inputs` [<= L], `mask_positions` [m],
`verbalizer_tokens` [k, m], `verbalizer_weights` [k, m], `labels` [1], `example_ids` [1]); `PetFeatureConverter`
pads `inputs` to L as `encoder_input_tokens`, adds `encoder_token_types` (zeros) and passes the rest through.
"""
import functools
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from plmjax.data import feature_converters, preprocessors, vocabularies
from plmjax.prompting.templates import MASK, PromptTask

SIDE_FEATURES = ("mask_positions", "verbalizer_tokens", "verbalizer_weights", "labels", "example_ids")


def verbalizer_arrays(task: PromptTask, vocab: seqio.Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """([num_labels, m] int32 token ids, [num_labels, m] float32 weights) of the task's verbalizers."""
    encoded = [vocab.encode(word) for word in task.verbalizers]
    empty = [word for word, ids in zip(task.verbalizers, encoded) if not ids]
    if empty:
        raise ValueError(f"{task.name}: verbalizers {empty} encode to no token with {vocab}.")
    unk = getattr(vocab, "unk_id", None)
    unknown = [word for word, ids in zip(task.verbalizers, encoded) if unk is not None and unk in ids]
    if unknown:
        raise ValueError(f"{task.name}: verbalizers {unknown} contain tokens unknown to {vocab}; choose words the "
                         "vocabulary has (an MLM cannot predict [UNK] as a label).")
    m = max(len(ids) for ids in encoded)
    tokens = np.zeros((len(encoded), m), np.int32)
    weights = np.zeros((len(encoded), m), np.float32)
    for i, ids in enumerate(encoded):
        tokens[i, :len(ids)] = ids
        weights[i, :len(ids)] = 1.0
    return tokens, weights


def fit_lengths(lengths: list[tf.Tensor], budget: int) -> list[tf.Tensor]:
    """Truncates texts to `budget` tokens in all, cutting the longest first (BERT's pair truncation, for n texts):
    texts are visited shortest first, and each keeps min(its length, an equal share of what is left)."""
    stacked = tf.stack(lengths)
    order = tf.argsort(stacked)
    remaining = tf.constant(budget, tf.int32)
    takes = []
    for i, text_length in enumerate(tf.unstack(tf.gather(stacked, order), num=len(lengths))):
        takes.append(tf.minimum(text_length, remaining // (len(lengths) - i)))
        remaining -= takes[-1]
    kept = tf.scatter_nd(order[:, None], tf.stack(takes), [len(lengths)])  # back to the texts' own order
    return tf.unstack(kept, num=len(lengths))


def pet_features(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                 output_features: Mapping[str, seqio.Feature], *, task: PromptTask) -> tf.data.Dataset:
    """Examples {<text fields>, label, idx} -> `[CLS] <pattern with m [MASK]s> [SEP]` and the PET side features.

    The pattern's texts are truncated (longest first) so that the whole input fits `sequence_length['inputs']`;
    the literal text and the [MASK]s are never cut.
    """
    vocab = output_features["inputs"].vocabulary
    specials = vocabularies.special_tokens(vocab)
    if None in (specials.mask_id, specials.cls_id, specials.sep_id):
        raise ValueError(f"PET needs [MASK], [CLS] and [SEP] in the vocabulary; {vocab} lacks one of them.")
    length = preprocessors.feature_length(sequence_length, "inputs", "pet_features")
    tokens, weights = verbalizer_arrays(task, vocab)
    m = tokens.shape[1]
    literal = {part: np.array(vocab.encode(part), np.int32) for part in task.pattern
               if part != MASK and not part.startswith("{")}
    fields = task.fields_of_pattern()
    budget = length - 2 - m - sum(len(ids) for ids in literal.values())
    if budget < len(fields):
        raise ValueError(f"{task.name}: inputs length {length} leaves {budget} tokens for the text after the "
                         f"pattern and its {m} [MASK]s; raise task_feature_lengths['inputs'].")

    def convert(example):
        texts = {field: vocab.encode_tf(example[field]) for field in fields}
        kept = fit_lengths([tf.size(texts[f], out_type=tf.int32) for f in fields], budget)
        texts = {field: texts[field][:n] for field, n in zip(fields, kept)}
        pieces, mask_start = [tf.constant([specials.cls_id], tf.int32)], None
        for part in task.pattern:
            if part == MASK:
                mask_start = tf.add_n([tf.size(p, out_type=tf.int32) for p in pieces])
                pieces.append(tf.fill([m], tf.constant(specials.mask_id, tf.int32)))
            elif part.startswith("{"):
                pieces.append(tf.cast(texts[part[1:-1]], tf.int32))
            else:
                pieces.append(tf.constant(literal[part]))
        pieces.append(tf.constant([specials.sep_id], tf.int32))
        return {
            "inputs": tf.concat(pieces, axis=0),
            "mask_positions": tf.ensure_shape(mask_start + tf.range(m, dtype=tf.int32), [m]),
            "verbalizer_tokens": tf.constant(tokens),
            "verbalizer_weights": tf.constant(weights),
            "labels": tf.reshape(tf.cast(example["label"], tf.int32), [1]),
            "example_ids": tf.reshape(tf.cast(example["idx"], tf.int32), [1]),
        }

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """The PET task's output features: `inputs` (the cloze text) and its side features (not text)."""
    def side(dtype=tf.int32, rank=1):
        return seqio.Feature(seqio.PassThroughVocabulary(size=2), add_eos=False, dtype=dtype, rank=rank)

    return {"inputs": seqio.Feature(vocab, add_eos=False), "mask_positions": side(),
            "verbalizer_tokens": side(rank=2), "verbalizer_weights": side(tf.float32, rank=2), "labels": side(),
            "example_ids": side()}


def task_kwargs(task: PromptTask, source: seqio.DataSource, vocab: seqio.Vocabulary) -> dict:
    """kwargs for `seqio.TaskRegistry.add('<task>_pet', **kwargs)`."""
    return {"source": source, "output_features": output_features(vocab),
            "preprocessors": [functools.partial(pet_features, task=task)]}


_Spec = seqio.FeatureConverter.FeatureSpec


class PetFeatureConverter(seqio.FeatureConverter):
    """PET task features -> the model batch of docs/interfaces.md ("Prompting"): `encoder_input_tokens` and
    `encoder_token_types` [L], `mask_positions` [m], `verbalizer_tokens`/`verbalizer_weights` [k, m], `labels`
    and `example_ids` [1]. task_feature_lengths: {'inputs': L}; m and k come from the task's static shapes."""

    TASK_FEATURES = {"inputs": _Spec(dtype=tf.int32)}
    MODEL_FEATURES = {
        "encoder_input_tokens": _Spec(dtype=tf.int32),
        "encoder_token_types": _Spec(dtype=tf.int32),
        "mask_positions": _Spec(dtype=tf.int32),
        "verbalizer_tokens": _Spec(dtype=tf.int32, rank=2),
        "verbalizer_weights": _Spec(dtype=tf.float32, rank=2),
        "labels": _Spec(dtype=tf.int32),
        "example_ids": _Spec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = None

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("PetFeatureConverter does not pack: one cloze question per example.")
        super().__init__(pack=False, **kwargs)
        self._side_lengths = None

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        missing = [name for name in SIDE_FEATURES if name not in ds.element_spec]
        if missing:
            raise ValueError(f"PetFeatureConverter needs the features {missing} of plmjax.prompting.pet.pet_features;"
                             " use a '<task>_pet' task (tasks/prompting.py).")
        self._side_lengths = {name: ds.element_spec[name].shape[0] for name in SIDE_FEATURES}
        length = task_feature_lengths["inputs"]
        ds = seqio.utils.trim_and_pad_dataset(ds, {"inputs": length})

        def convert(features):
            tokens = features["inputs"]
            return {"encoder_input_tokens": tokens, "encoder_token_types": tf.zeros_like(tokens),
                    **{name: features[name] for name in SIDE_FEATURES}}

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        if self._side_lengths is None:
            raise ValueError("PetFeatureConverter learns the [MASK] and label counts from the dataset: call it on "
                             "the dataset before asking for model feature lengths.")
        length = task_feature_lengths["inputs"]
        return {"encoder_input_tokens": length, "encoder_token_types": length, **self._side_lengths}


feature_converters.register_feature_converter("pet", PetFeatureConverter)
