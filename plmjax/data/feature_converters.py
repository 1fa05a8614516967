"""Feature converters: task features -> the model batch features of docs/interfaces.md.

`MLMFeatureConverter` is plmjax's own (seqio's EncoderFeatureConverter weights only positions that hold
[MASK], missing BERT's randomized and kept positions); the decoder and encoder-decoder families use seqio's
converters without packing. `make_feature_converter(family)` builds the right one by name (for gin). Two MLM
variants carry further features: `SentencePairFeatureConverter` (NSP/SOP) and `SpanBoundaryFeatureConverter`
(SpanBERT's span-boundary objective).
"""
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from plmjax.data.masking import MASKED_LM_WEIGHTS

LMFeatureConverter = seqio.LMFeatureConverter
PrefixLMFeatureConverter = seqio.PrefixLMFeatureConverter
EncDecFeatureConverter = seqio.EncDecFeatureConverter

_Spec = seqio.FeatureConverter.FeatureSpec


class MLMFeatureConverter(seqio.FeatureConverter):
    """BERT masked LM: {inputs, targets, masked_lm_weights} -> encoder_{input,target}_tokens, encoder_loss_weights.

    `encoder_loss_weights` (float32) is 1 exactly on the positions `masking.mask_tokens` selected, including
    those it kept or replaced by a random token. Examples are padded to task_feature_lengths['inputs'].
    """

    TASK_FEATURES = {"inputs": _Spec(dtype=tf.int32), "targets": _Spec(dtype=tf.int32)}
    MODEL_FEATURES = {
        "encoder_input_tokens": _Spec(dtype=tf.int32),
        "encoder_target_tokens": _Spec(dtype=tf.int32),
        "encoder_loss_weights": _Spec(dtype=tf.float32),
    }
    PACKING_FEATURE_DTYPES = None
    # Further int32 task features -> model features, padded to the inputs length (or the given fixed length).
    EXTRA_FEATURES: Mapping[str, tuple[str, Optional[int]]] = {}

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("MLMFeatureConverter does not pack: pack_for_mlm already fills every example.")
        super().__init__(pack=False, **kwargs)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        if MASKED_LM_WEIGHTS not in ds.element_spec:
            raise ValueError(f"MLMFeatureConverter needs the '{MASKED_LM_WEIGHTS}' feature of "
                             "plmjax.data.masking.mask_tokens; add that preprocessor to the task.")
        missing = [name for name in self.EXTRA_FEATURES if name not in ds.element_spec]
        if missing:
            raise ValueError(f"{type(self).__name__} needs the task features {missing}; use the task of the "
                             "matching objective (plmjax.data.objective_tasks).")
        length = task_feature_lengths["inputs"]
        extra_lengths = {name: fixed or length for name, (_, fixed) in self.EXTRA_FEATURES.items()}
        ds = seqio.utils.trim_and_pad_dataset(
            ds, {"inputs": length, "targets": length, MASKED_LM_WEIGHTS: length, **extra_lengths})

        def convert(features):
            return {
                "encoder_input_tokens": features["inputs"],
                "encoder_target_tokens": features["targets"],
                "encoder_loss_weights": tf.cast(features[MASKED_LM_WEIGHTS], tf.float32),
                **{model_name: tf.cast(features[name], tf.int32)
                   for name, (model_name, _) in self.EXTRA_FEATURES.items()},
            }

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = task_feature_lengths["inputs"]
        lengths = {name: length for name in self.MODEL_FEATURES}
        lengths.update({model_name: fixed or length for model_name, fixed in self.EXTRA_FEATURES.values()})
        return lengths


def _with_extras(name: str, doc: str, extras: Mapping[str, tuple[str, Optional[int]]]) -> type:
    model_features = {**MLMFeatureConverter.MODEL_FEATURES,
                      **{model_name: _Spec(dtype=tf.int32) for model_name, _ in extras.values()}}
    return type(name, (MLMFeatureConverter,), {"__doc__": doc, "MODEL_FEATURES": model_features,
                                               "EXTRA_FEATURES": dict(extras)})


SentencePairFeatureConverter = _with_extras(
    "SentencePairFeatureConverter",
    "BERT MLM + NSP/SOP: adds encoder_token_types [length] and encoder_sentence_labels [1] (1: random or swapped B).",
    {"token_types": ("encoder_token_types", None), "sentence_labels": ("encoder_sentence_labels", 1)})
SpanBoundaryFeatureConverter = _with_extras(
    "SpanBoundaryFeatureConverter",
    "SpanBERT: adds encoder_span_left, encoder_span_right, encoder_span_positions [length] for the SBO head.",
    {"span_left": ("encoder_span_left", None), "span_right": ("encoder_span_right", None),
     "span_position": ("encoder_span_positions", None)})


_FAMILIES = {
    "encoder": MLMFeatureConverter,
    "encoder_sentence_pair": SentencePairFeatureConverter,
    "encoder_span_boundary": SpanBoundaryFeatureConverter,
    "decoder": LMFeatureConverter,
    "prefix_lm": PrefixLMFeatureConverter,
    "encoder_decoder": EncDecFeatureConverter,
}


def make_feature_converter(family: str, **kwargs) -> seqio.FeatureConverter:
    """The unpacked converter for a model family: encoder | decoder | prefix_lm | encoder_decoder, or the MLM
    variants encoder_sentence_pair | encoder_span_boundary."""
    if family not in _FAMILIES:
        raise ValueError(f"Unknown model family {family!r} for the feature converter; expected one of "
                         f"{sorted(_FAMILIES)}.")
    return _FAMILIES[family](pack=False, **kwargs)
