"""GLUE: the nine tasks and the AX diagnostic, from TFDS (`glue/*`) or from the official TSV folders.

Label ids follow TFDS's ClassLabel order, so both sources give the same ids; `label_names` are the strings of
the official submission files (0/1 for CoLA, SST-2, MRPC, QQP, WNLI; words for the NLI tasks).
MNLI is two tasks: `mnli` (train + matched validation/test, submission MNLI-m.tsv) and `mnli_mismatched`
(the same train, mismatched validation/test, MNLI-mm.tsv). AX is test-only (MNLI labels, AX.tsv).

TSV folders (`$GLUE_DIR/<folder>/{train,dev,test}.tsv`, as GLUE's download script writes them) are read by
column name from each file's header; CoLA's train/dev files have no header (source, label, original label,
sentence). `idx` is the file's index/id column where it has one (on the test files: the id GLUE submissions
use), else the row number (0-based, header excluded), which is what TFDS's `idx` holds.
"""
import dataclasses
import functools
import os
from typing import Optional

import seqio
import tensorflow as tf

from plmjax.data.finetune import readers
from plmjax.data.finetune.spec import DatasetSpec

_BINARY = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")


@dataclasses.dataclass(frozen=True)
class GlueTask:
    spec: DatasetSpec
    tfds_name: str  # e.g. 'glue/sst2:2.0.0'
    tfds_splits: dict[str, str]  # our split -> TFDS split
    folder: str  # the GLUE_DIR sub-folder
    files: dict[str, str]  # our split -> file name in the folder
    columns: dict[str, str]  # our field -> header column name (text fields, 'label', 'idx')
    headerless: Optional[dict[str, int]] = None  # CoLA train/dev: field -> column position


def _spec(name, kind, fields, labels, metrics, submission, words=()):
    return DatasetSpec(name=f"glue_{name}", benchmark="glue", kind=kind, prefix=name, text_fields=fields,
                       label_names=labels, metrics=metrics, submission_name=submission, label_words=words)


_SPLITS = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_TFDS_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


def _task(name, kind, fields, labels, metrics, submission, folder, columns, words=(), tfds_config=None,
          tfds_splits=_TFDS_SPLITS, files=_SPLITS, headerless=None):
    return GlueTask(_spec(name, kind, fields, labels, metrics, submission, words),
                    f"glue/{tfds_config or name}:2.0.0", dict(tfds_splits), folder, dict(files), columns, headerless)


_MNLI_COLUMNS = {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label", "idx": "index"}
_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label", "idx": "index"}

TASKS = {task.spec.prefix: task for task in [
    _task("cola", "classification", ("sentence",), _BINARY, ("matthews_corrcoef",), "CoLA.tsv", "CoLA",
          {"sentence": "sentence", "idx": "index"}, words=("unacceptable", "acceptable"),
          headerless={"label": 1, "sentence": 3}),
    _task("sst2", "classification", ("sentence",), _BINARY, ("accuracy",), "SST-2.tsv", "SST-2",
          {"sentence": "sentence", "label": "label", "idx": "index"}, words=("negative", "positive")),
    _task("mrpc", "classification", ("sentence1", "sentence2"), _BINARY, ("f1", "accuracy"), "MRPC.tsv", "MRPC",
          {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality", "idx": "index"},
          words=("not_equivalent", "equivalent")),
    _task("qqp", "classification", ("question1", "question2"), _BINARY, ("f1", "accuracy"), "QQP.tsv", "QQP",
          {"question1": "question1", "question2": "question2", "label": "is_duplicate", "idx": "id"},
          words=("not_duplicate", "duplicate")),
    _task("stsb", "regression", ("sentence1", "sentence2"), (), ("pearson", "spearman"), "STS-B.tsv", "STS-B",
          {**_PAIR, "label": "score"}),
    _task("mnli", "classification", ("premise", "hypothesis"), _NLI3, ("accuracy",), "MNLI-m.tsv", "MNLI",
          _MNLI_COLUMNS, tfds_splits={"train": "train", "validation": "validation_matched", "test": "test_matched"},
          files={"train": "train.tsv", "validation": "dev_matched.tsv", "test": "test_matched.tsv"}),
    _task("mnli_mismatched", "classification", ("premise", "hypothesis"), _NLI3, ("accuracy",), "MNLI-mm.tsv",
          "MNLI", _MNLI_COLUMNS, tfds_config="mnli",
          tfds_splits={"train": "train", "validation": "validation_mismatched", "test": "test_mismatched"},
          files={"train": "train.tsv", "validation": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}),
    _task("qnli", "classification", ("question", "sentence"), _NLI2, ("accuracy",), "QNLI.tsv", "QNLI",
          {"question": "question", "sentence": "sentence", "label": "label", "idx": "index"}),
    _task("rte", "classification", ("sentence1", "sentence2"), _NLI2, ("accuracy",), "RTE.tsv", "RTE", _PAIR),
    _task("wnli", "classification", ("sentence1", "sentence2"), _BINARY, ("accuracy",), "WNLI.tsv", "WNLI", _PAIR,
          words=("not_entailment", "entailment")),
    _task("ax", "classification", ("premise", "hypothesis"), _NLI3, ("matthews_corrcoef",), "AX.tsv", "diagnostic",
          {"premise": "sentence1", "hypothesis": "sentence2", "idx": "index"}, tfds_splits={"test": "test"},
          files={"test": "diagnostic.tsv"}),
]}

GLUE_DIR_HELP = ("Set the environment variable GLUE_DIR (or the gin macro GLUE_DIR) to the folder that holds the "
                 "GLUE task folders (SST-2/, MNLI/, ...); the default is <repo>/../shared/data/glue.")


def default_glue_dir() -> str:
    """`$GLUE_DIR`, else `<repo>/../shared/data/glue` (or `$PLMJAX_SHARED_DATA/glue`)."""
    from plmjax.data import corpora  # pylint: disable=import-outside-toplevel
    return os.environ.get("GLUE_DIR") or str(corpora.shared_data_dir() / "glue")


def read_tsv_split(task: GlueTask, glue_dir: str, split: str) -> list[dict]:
    """The examples of one split of a GLUE TSV folder (normalized schema of spec.py)."""
    spec = task.spec
    if split not in task.files:
        raise ValueError(f"{spec.name} has no split {split!r}; it has {sorted(task.files)}.")
    path = readers.check_file(os.path.join(glue_dir, task.folder, task.files[split]),
                              f"GLUE {task.folder} {split} file", GLUE_DIR_HELP)
    rows = readers.read_tsv(path)
    first = next(rows, None)
    if first is None:
        return []
    line, cells = first
    needed = list(spec.text_fields)
    if task.headerless and task.columns[spec.text_fields[0]] not in cells:  # CoLA train/dev: no header row
        positions = dict(task.headerless)
        rows = [(line, cells), *rows]
    else:
        header = cells
        missing = [task.columns[f] for f in needed if task.columns[f] not in header]
        if missing:
            raise readers.format_error(path, line, f"the header lacks the column(s) {missing} (it is {header})",
                                       f"Use the official GLUE {task.folder} files, whose header names them")
        positions = {f: header.index(c) for f, c in task.columns.items() if c in header}
    examples = []
    for row_index, (line, cells) in enumerate(rows):
        if len(cells) <= max(positions.values()):
            raise readers.format_error(path, line, f"{len(cells)} tab-separated fields, expected at least "
                                       f"{max(positions.values()) + 1}", "Fix or remove the line (tabs separate "
                                       "the fields; a field must not contain a tab or a newline)")
        example = {f: cells[positions[f]] for f in spec.text_fields}
        example["idx"] = readers.example_id({"idx": cells[positions["idx"]]} if "idx" in positions else {},
                                            ["idx"], row_index, path, line)
        example["label"], example["label_value"] = _label(spec, cells[positions["label"]] if "label" in positions
                                                          else None, path, line)
        examples.append(example)
    return examples


def _label(spec: DatasetSpec, value: Optional[str], path: str, line: int) -> tuple[int, float]:
    if value is None:  # test files: no labels
        return -1, -1.0
    if spec.kind == "regression":
        try:
            return 0, float(value)
        except ValueError:
            raise readers.format_error(path, line, f"score {value!r} is not a number",
                                       "Fix the line; STS-B scores are numbers from 0 to 5") from None
    label = readers.label_id(value, spec.label_names, path, line, spec.name)
    return label, float(label)


def tsv_reader(task: GlueTask, glue_dir: readers.DataDir = None):
    """read_fn(split) for `spec.examples_source`; the folder is resolved when data is read."""
    return functools.partial(_read_tsv_from, task.spec.prefix, glue_dir)


def _read_tsv_from(prefix: str, glue_dir: readers.DataDir, split: str) -> list[dict]:
    return read_tsv_split(TASKS[prefix], readers.resolve_dir(glue_dir) or default_glue_dir(), split)


def normalize_tfds(dataset: tf.data.Dataset, spec: DatasetSpec) -> tf.data.Dataset:
    """TFDS `glue/*` examples -> the normalized schema (TFDS test labels are -1; STS-B's label is the score)."""
    def normalize(example):
        out = {field: example[field] for field in spec.text_fields}
        if spec.kind == "regression":
            value = tf.cast(example["label"], tf.float32)
            out["label"] = tf.where(value < 0, -1, 0)
            out["label_value"] = value
        else:
            out["label"] = tf.cast(example["label"], tf.int32)
            out["label_value"] = tf.cast(out["label"], tf.float32)
        out["idx"] = tf.cast(example["idx"], tf.int32)
        return out

    return dataset.map(normalize, num_parallel_calls=tf.data.AUTOTUNE)


class TfdsSource(seqio.TfdsDataSource):
    """seqio's TFDS source whose size lookup tolerates a dataset without split metadata (tfds.testing.mock_data
    has none; seqio would fail asking for it to decide on in-memory caching)."""

    def num_input_examples(self, split: str) -> Optional[int]:
        try:
            return super().num_input_examples(split)
        except KeyError:
            return None
