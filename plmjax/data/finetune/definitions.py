"""The seqio Task definition of each fine-tuning data set, for `tasks/finetune.py` to register.

`task_kwargs(spec, source, vocabulary, text_to_text=False, normalize=None)` returns the keyword arguments of
`seqio.TaskRegistry.add`: the output features and the preprocessor chain examples -> task features.

| format | task features | converter (feature_converters.make_feature_converter) |
|---|---|---|
| encoder, classification/regression | inputs, token_types, labels, label_values, example_ids | 'classification' |
| encoder, span_extraction | inputs, token_types, start_positions, end_positions, example_ids | 'span_extraction' |
| encoder, multiple_choice | inputs, token_types [num_choices, length], labels, example_ids | 'multiple_choice' |
| encoder, tagging | inputs, token_types, tag_labels, tag_weights, example_ids | 'tagging' |
| text_to_text | inputs, targets (token ids, EOS-terminated), example_ids | 'encoder_decoder', 'prefix_lm' |
"""
import functools
from typing import Callable, Optional

import seqio
import tensorflow as tf

from plmjax.data.finetune import preprocessors
from plmjax.data.finetune.spec import DatasetSpec

CONVERTER_FAMILY = {"classification": "classification", "regression": "classification",
                    "span_extraction": "span_extraction", "multiple_choice": "multiple_choice", "tagging": "tagging"}


def _encoder_step(spec: DatasetSpec):
    if spec.kind in ("classification", "regression"):
        return functools.partial(preprocessors.encode_classification, text_fields=spec.text_fields)
    if spec.kind == "span_extraction":
        return preprocessors.encode_span
    if spec.kind == "multiple_choice":
        return functools.partial(preprocessors.encode_multiple_choice, num_choices=spec.num_choices)
    if spec.kind == "tagging":
        return preprocessors.encode_tagging
    raise ValueError(f"No encoder format for kind {spec.kind!r}.")


def task_kwargs(spec: DatasetSpec, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
                text_to_text: bool = False,
                normalize: Optional[Callable[[tf.data.Dataset], tf.data.Dataset]] = None) -> dict:
    """kwargs for `seqio.TaskRegistry.add(name, **kwargs)`; `normalize` first maps the source's examples to
    spec.py's schema (TFDS GLUE), file sources already give it."""
    steps = [normalize] if normalize else []
    if text_to_text:
        output_features = {"inputs": seqio.Feature(vocabulary, add_eos=True),
                           "targets": seqio.Feature(vocabulary, add_eos=True)}
        steps += [functools.partial(preprocessors.text_to_text, prefix=spec.prefix, kind=spec.kind,
                                    text_fields=spec.text_fields, label_words=spec.label_words or spec.label_names),
                  functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                  seqio.preprocessors.append_eos_after_trim]
    else:
        rank = 2 if spec.kind == "multiple_choice" else 1
        output_features = {"inputs": seqio.Feature(vocabulary, add_eos=False, rank=rank)}
        steps.append(_encoder_step(spec))
    return {"source": source, "output_features": output_features, "preprocessors": steps}
