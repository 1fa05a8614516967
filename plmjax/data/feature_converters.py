"""Feature converters: task features -> the model batch features of docs/interfaces.md.

`MLMFeatureConverter` is plmjax's own (seqio's EncoderFeatureConverter weights only positions that hold
[MASK], missing BERT's randomized and kept positions); the decoder and encoder-decoder families use seqio's
converters. `make_feature_converter(family, pack=...)` builds the right one by name (for gin). Packing
(`pack=True`, gin `train.pack = True`) is seqio's: `seqio.utils.trim_and_pack_dataset` fills each row with
several examples and adds `{encoder,decoder}_segment_ids` (1, 2, ... per example, 0 on padding) and
`*_positions` (restarting at 0 in each example), for the families in PACKABLE. The MLM families do not pack:
their tasks' `masking.pack_for_mlm` already fills every row by concatenating documents. Two MLM
variants carry further features: `SentencePairFeatureConverter` (NSP/SOP) and `SpanBoundaryFeatureConverter`
(SpanBERT's span-boundary objective). The fine-tuning families (classification, span_extraction,
multiple_choice, tagging) pass the fine-tuning tasks' final features through, padded to the inputs length.
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
            raise ValueError("The MLM feature converters do not pack: masking.pack_for_mlm already fills every "
                             "row by concatenating documents; set train.pack = False.")
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


# ------------------------------------------------------------------------------------------------ fine-tuning


class FineTuningFeatureConverter(seqio.FeatureConverter):
    """Fine-tuning: passes a task's already-final features through, padded/trimmed to the inputs length.

    Task features (plmjax.data.finetune.preprocessors) -> model features (docs/interfaces.md, "Fine-tuning"):
    `FEATURES` maps each task feature to (model feature, dtype, per-token); per-token features are padded with 0
    to task_feature_lengths['inputs'], the others are [1] per example. Subclasses set FEATURES.
    """

    TASK_FEATURES = {"inputs": _Spec(dtype=tf.int32)}
    FEATURES: Mapping[str, tuple[str, tf.DType, bool]] = {}
    MODEL_FEATURES: Mapping[str, "seqio.FeatureConverter.FeatureSpec"] = {}
    PACKING_FEATURE_DTYPES = None

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError(f"{type(self).__name__} does not pack: fine-tuning examples are one per row.")
        super().__init__(pack=False, **kwargs)

    def _check_features(self, ds: tf.data.Dataset) -> None:
        missing = [name for name in self.FEATURES if name not in ds.element_spec]
        if missing:
            raise ValueError(f"{type(self).__name__} needs the task features {missing}; use a fine-tuning task of "
                             "the matching kind (plmjax.data.finetune, tasks/finetune.py).")

    def _lengths(self, length: int) -> dict[str, int]:
        return {name: length if per_token else 1 for name, (_, _, per_token) in self.FEATURES.items()}

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        self._check_features(ds)
        ds = seqio.utils.trim_and_pad_dataset(ds, self._lengths(task_feature_lengths["inputs"]))
        return ds.map(self._rename, num_parallel_calls=tf.data.AUTOTUNE)

    def _rename(self, features):
        return {model: tf.cast(features[name], dtype) for name, (model, dtype, _) in self.FEATURES.items()}

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        return {model: n for (model, _, _), n in zip(self.FEATURES.values(),
                                                     self._lengths(task_feature_lengths["inputs"]).values())}


class MultipleChoiceFeatureConverter(FineTuningFeatureConverter):
    """Multiple choice: [num_choices, length] task inputs -> choice-major [num_choices * length] rows (choice c is
    `[c*length:(c+1)*length]`). `num_choices` is the task's (TaskInfo.num_choices); when not given it is read
    from the dataset's static shape."""

    TASK_FEATURES = {"inputs": _Spec(dtype=tf.int32, rank=2, sequence_dim=1)}

    def __init__(self, pack: bool = False, num_choices: Optional[int] = None, **kwargs):
        super().__init__(pack=pack, **kwargs)
        self._num_choices = num_choices

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        self._check_features(ds)
        choices = ds.element_spec["inputs"].shape[0]
        if self._num_choices is None:
            if choices is None:
                raise ValueError("MultipleChoiceFeatureConverter needs num_choices (the task's "
                                 "TaskInfo.num_choices) for a dataset whose number of choices is not static.")
            self._num_choices = int(choices)
        elif choices is not None and choices != self._num_choices:
            raise ValueError(f"The task has {choices} choices per example but the converter was built with "
                             f"num_choices={self._num_choices}; pass the task's TaskInfo.num_choices.")
        length = task_feature_lengths["inputs"]
        lengths = {name: (self._num_choices, length) if per_token else 1
                   for name, (_, _, per_token) in self.FEATURES.items()}
        ds = seqio.utils.trim_and_pad_dataset(ds, lengths)

        def flatten(features):  # [choices, length] -> [choices * length], choice-major
            out = self._rename(features)
            for name, (model, _, per_token) in self.FEATURES.items():
                if per_token:
                    out[model] = tf.reshape(out[model], [self._num_choices * length])
            return out

        return ds.map(flatten, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        if self._num_choices is None:
            raise ValueError("MultipleChoiceFeatureConverter needs num_choices before model lengths are known: "
                             "pass the task's TaskInfo.num_choices to make_feature_converter.")
        length = task_feature_lengths["inputs"]
        return {model: self._num_choices * length if per_token else 1
                for model, _, per_token in self.FEATURES.values()}


def _fine_tuning(name: str, doc: str, features: Mapping[str, tuple[str, tf.DType, bool]],
                 base: type = FineTuningFeatureConverter) -> type:
    model_features = {model: _Spec(dtype=dtype) for model, dtype, _ in features.values()}
    return type(name, (base,), {"__doc__": doc, "FEATURES": dict(features), "MODEL_FEATURES": model_features})


_ENCODER_INPUTS = {"inputs": ("encoder_input_tokens", tf.int32, True),
                   "token_types": ("encoder_token_types", tf.int32, True)}
_EXAMPLE_IDS = {"example_ids": ("example_ids", tf.int32, False)}
ClassificationFeatureConverter = _fine_tuning(
    "ClassificationFeatureConverter",
    "Classification/regression: encoder_input_tokens, encoder_token_types [length]; labels, label_values, "
    "example_ids [1].",
    {**_ENCODER_INPUTS, "labels": ("labels", tf.int32, False), "label_values": ("label_values", tf.float32, False),
     **_EXAMPLE_IDS})
SpanExtractionFeatureConverter = _fine_tuning(
    "SpanExtractionFeatureConverter",
    "Span extraction: encoder_input_tokens, encoder_token_types [length]; start_positions, end_positions, "
    "example_ids [1].",
    {**_ENCODER_INPUTS, "start_positions": ("start_positions", tf.int32, False),
     "end_positions": ("end_positions", tf.int32, False), **_EXAMPLE_IDS})
MultipleChoiceFeatureConverter = _fine_tuning(
    "MultipleChoiceFeatureConverter", MultipleChoiceFeatureConverter.__doc__,
    {**_ENCODER_INPUTS, "labels": ("labels", tf.int32, False), **_EXAMPLE_IDS}, base=MultipleChoiceFeatureConverter)
TaggingFeatureConverter = _fine_tuning(
    "TaggingFeatureConverter",
    "Tagging: encoder_input_tokens, encoder_token_types, tag_labels, tag_weights (float32) [length]; "
    "example_ids [1].",
    {**_ENCODER_INPUTS, "tag_labels": ("tag_labels", tf.int32, True), "tag_weights": ("tag_weights", tf.float32, True),
     **_EXAMPLE_IDS})

_FAMILIES = {
    "encoder": MLMFeatureConverter,
    "encoder_sentence_pair": SentencePairFeatureConverter,
    "encoder_span_boundary": SpanBoundaryFeatureConverter,
    "decoder": LMFeatureConverter,
    "prefix_lm": PrefixLMFeatureConverter,
    "encoder_decoder": EncDecFeatureConverter,
    "classification": ClassificationFeatureConverter,
    "span_extraction": SpanExtractionFeatureConverter,
    "multiple_choice": MultipleChoiceFeatureConverter,
    "tagging": TaggingFeatureConverter,
}


def register_feature_converter(family: str, converter) -> None:
    """Adds a converter family from above the data layer (PET's lives with its patterns: plmjax.prompting.pet
    registers 'pet' on import, and so does every '<task>_pet' task through tasks/prompting.py)."""
    _FAMILIES[family] = converter


# The families whose converters pack (seqio's): their batches gain *_segment_ids and *_positions.
PACKABLE = ("decoder", "prefix_lm", "encoder_decoder")


def make_feature_converter(family: str, pack: bool = False, **kwargs) -> seqio.FeatureConverter:
    """The converter for a model family: encoder | decoder | prefix_lm | encoder_decoder, the MLM
    variants encoder_sentence_pair | encoder_span_boundary, or a fine-tuning kind classification (also
    regression) | span_extraction | multiple_choice (kwarg num_choices) | tagging. pack: seqio packing, for the
    families in PACKABLE only."""
    if family not in _FAMILIES:
        hint = " (import plmjax.prompting.pet or plmjax.tasks, which register it)" if family == "pet" else ""
        raise ValueError(f"Unknown model family {family!r} for the feature converter{hint}; expected one of "
                         f"{sorted(_FAMILIES)}.")
    if pack and family not in PACKABLE:
        why = ("masking.pack_for_mlm already fills every row by concatenating documents" if family.startswith(
            "encoder") else "its examples are one per row")
        raise ValueError(f"The {family!r} feature converter does not pack ({why}); packing serves {PACKABLE}: "
                         "set train.pack = False.")
    return _FAMILIES[family](pack=pack, **kwargs)
