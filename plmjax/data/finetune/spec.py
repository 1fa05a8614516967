"""What a fine-tuning data set is (`DatasetSpec`) and its examples as a seqio data source.

Readers turn official files into example dicts of one normalized schema per kind:

- classification, regression: the spec's `text_fields` (string), `label` (int32; -1 unlabeled; regression 0, or
  -1 unlabeled), `label_value` (float32: the score, or float(label)), `idx` (int32: the official id or row index);
- span_extraction: `question`, `context`, `answer` (string, the first gold answer), `answer_start` (int32 char
  offset, -1 none), `idx`;
- multiple_choice: `context`, `question` (string), `choices` ([num_choices] string), `label`, `idx`;
- tagging: `words` ([n] string), `tags` ([n] int32 tag ids), `idx`.

Readers may add further Python-only keys (e.g. CMRC2018's `id` strings and all gold `answers`) for evaluation;
`examples_source` keeps only the schema's fields.
"""
import dataclasses
import functools
from typing import Callable, Optional, Sequence

import seqio
import tensorflow as tf

from plmjax.data import sources
from plmjax.data.finetune import info as info_lib

SCHEMAS = {
    "classification": {"label": tf.int32, "label_value": tf.float32, "idx": tf.int32},
    "span_extraction": {"question": tf.string, "context": tf.string, "answer": tf.string, "answer_start": tf.int32,
                        "idx": tf.int32},
    "multiple_choice": {"context": tf.string, "question": tf.string, "choices": tf.string, "label": tf.int32,
                        "idx": tf.int32},
    "tagging": {"words": tf.string, "tags": tf.int32, "idx": tf.int32},
}
SCHEMAS["regression"] = SCHEMAS["classification"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One benchmark data set: its kind, fields, labels, metrics and how the text-to-text format names it."""
    name: str  # the encoder-format task name, e.g. 'glue_sst2'; text-to-text is f'{name}_t2t'
    benchmark: str
    kind: str  # classification | regression | span_extraction | multiple_choice | tagging
    prefix: str  # the text-to-text task prefix, e.g. 'sst2'
    # the texts: classification/regression's one or two, in [CLS] a [SEP] b order; for the other kinds the
    # schema's texts the text-to-text input shows, in order
    text_fields: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()  # official label strings, by id
    metrics: tuple[str, ...] = ("accuracy",)
    submission_name: str = ""
    num_choices: int = 0
    label_words: tuple[str, ...] = ()  # text-to-text targets by label id (default: label_names)

    def schema(self) -> dict[str, tf.DType]:
        return {**{f: tf.string for f in self.text_fields}, **SCHEMAS[self.kind]}

    def task_info(self, name: Optional[str] = None, text_to_text: bool = False) -> info_lib.TaskInfo:
        return info_lib.TaskInfo(
            name=name or (f"{self.name}_t2t" if text_to_text else self.name), benchmark=self.benchmark,
            kind="text_to_text" if text_to_text else self.kind, label_names=self.label_names, metrics=self.metrics,
            submission_name=self.submission_name, num_choices=self.num_choices,
            label_words=(self.label_words or self.label_names) if text_to_text else ())

    def with_name(self, name: str) -> "DatasetSpec":
        return dataclasses.replace(self, name=name)


def examples_dataset(examples: Sequence[dict], schema: dict[str, tf.DType], where: str) -> tf.data.Dataset:
    """A tf.data.Dataset of the schema's fields of `examples` (lists become [n] tensors per example)."""
    if not examples:
        raise ValueError(f"{where} holds no examples; check the file (or the split you asked for).")
    columns = {}
    for key, dtype in schema.items():
        values = [example[key] for example in examples]
        if isinstance(values[0], (list, tuple)):
            if len({len(v) for v in values}) == 1:
                columns[key] = tf.constant(values, dtype, shape=[len(values), len(values[0])])
            else:
                columns[key] = tf.ragged.constant(values, dtype)
        else:
            columns[key] = tf.constant(values, dtype)
    return tf.data.Dataset.from_tensor_slices(columns)


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *, read_fn, schema, name):
    dataset = examples_dataset(read_fn(split), schema, f"The {split!r} split of {name}")
    if shuffle_files:  # a full shuffle of the examples, a new order every epoch (deterministic for a seed)
        dataset = dataset.shuffle(dataset.cardinality(), seed=seed, reshuffle_each_iteration=True)
    return dataset


def examples_source(spec: DatasetSpec, read_fn: Callable[[str], list[dict]],
                    splits: Sequence[str]) -> seqio.DataSource:
    """A seqio source over `read_fn(split)` (files are read when the data is first asked for, not before)."""
    return sources.InMemoryTextSource(
        functools.partial(_dataset_fn, read_fn=read_fn, schema=spec.schema(), name=spec.name), splits=splits)
