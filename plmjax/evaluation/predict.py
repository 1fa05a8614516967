"""Predictions of a fine-tuned model over a whole split: every example exactly once, in the split's order.

    preds = predict(params, run, 'glue_sst2', 'validation', batch_size=32)
    preds.example_ids, preds.predictions, preds.targets   # one entry per example

The split is read once, unshuffled, by `plmjax.data.batching` (every host reads all of it and puts its own rows
on the mesh): the last partial batch is filled up with copies of its last example whose `example_weights` (and
other weights) are 0, and those rows are dropped again after the forward pass. The forward
pass is the trainer's jitted eval step (`plmjax.train.step.jit_eval_step`, run under the run's mesh with the
parameters' shardings) with the head's outputs turned into predictions inside the graph:

| TaskInfo.kind | prediction | target |
|---|---|---|
| classification | label id: argmax of `classification_logits` (PET: of the objective's `pet_scores`) | `labels` |
| regression | `classification_logits[:, 0]` | `label_values` |
| multiple_choice | choice index: argmax of `choice_logits` | `labels` |
| span_extraction | text of the best span: start <= end < start + max_answer_length, in the context | gold answers |
| tagging | tag ids (argmax of `tag_logits`) at the positions where `tag_weights` > 0 | `tag_labels` there |
Classification and multiple choice also give `confidences`: the softmax probability of each prediction.

A target is None where the split is unlabeled (label -1, e.g. GLUE test). Span answers are cut out of the
original context through the tokens' character offsets, and gold answers are every official answer, both from the
task's file reader (`plmjax.data.finetune.read_examples`) or raw features (`SpanTexts` says which).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio

from plmjax.data import batching, feature_converters
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib

KINDS = ("classification", "regression", "multiple_choice", "span_extraction", "tagging")
# Raw (unconverted) task features a span-extraction task may provide for text answers.
SPAN_TEXT_FEATURES = ("answers", "context", "context_offsets")
_SPACE_NEXT_TO_CJK = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef])\s+|\s+(?=[\u3000-\u9fff\uff00-\uffef])")


@dataclasses.dataclass
class Predictions:
    """One entry per example of the split, in the split's order."""

    example_ids: np.ndarray  # [num_examples] int: the official idx / id (the running index when a task has none)
    predictions: list  # label id (int) | value (float) | answer text (str) | tag ids (np.ndarray [num_words])
    targets: list  # the gold, same types (span: the list of gold answer strings); None where unlabeled
    official_ids: list | None = None  # the benchmark's own ids where they are not numbers (CMRC2018's strings)
    confidences: list | None = None  # classification, multiple choice: softmax probability of each prediction

    def __len__(self) -> int:
        return len(self.example_ids)

    def labeled(self) -> tuple[list, list]:
        """(targets, predictions) of the labeled examples."""
        pairs = [(t, p) for t, p in zip(self.targets, self.predictions) if t is not None]
        return [t for t, _ in pairs], [p for _, p in pairs]


def best_span(start_logits: jax.Array, end_logits: jax.Array, allowed: jax.Array,
              max_answer_length: int) -> tuple[jax.Array, jax.Array]:
    """(start, end) [batch] maximizing start_logit + end_logit with start <= end < start + max_answer_length and
    both positions allowed ([batch, length] bool). A row with no allowed position gives (0, 0)."""
    length = start_logits.shape[-1]
    position = jnp.arange(length)
    ordered = (position[:, None] <= position[None, :]) & (position[None, :] < position[:, None] + max_answer_length)
    valid = ordered[None] & allowed[:, :, None] & allowed[:, None, :]  # [batch, start, end]
    scores = start_logits[:, :, None].astype(jnp.float32) + end_logits[:, None, :].astype(jnp.float32)
    flat = jnp.argmax(jnp.where(valid, scores, -jnp.inf).reshape(scores.shape[0], -1), axis=-1)  # [batch]
    return flat // length, flat % length


def context_mask(input_tokens: jax.Array, token_types: jax.Array, pad_id: int) -> jax.Array:
    """[batch, length] bool: the context tokens of `[CLS] question [SEP] context [SEP]` (segment 1, final [SEP]
    and padding excluded)."""
    real = input_tokens != pad_id
    last = jnp.sum(real, axis=-1, keepdims=True) - 1  # [batch, 1]: the final [SEP]
    return real & (token_types == 1) & (jnp.arange(input_tokens.shape[-1])[None, :] < last)


def head_predictions(kind: str, batch, outputs, *, pad_id: int = 0, max_answer_length: int = 30,
                     scores_fn=None) -> dict[str, jax.Array]:
    """The predictions of one batch from the model's outputs (inside the jitted step)."""
    if kind == "classification":
        scores = scores_fn(batch, outputs) if scores_fn is not None else outputs["classification_logits"]
        return {"prediction": jnp.argmax(scores, axis=-1), "confidence": _confidence(scores)}
    if kind == "regression":
        return {"prediction": outputs["classification_logits"][:, 0].astype(jnp.float32)}
    if kind == "multiple_choice":
        return {"prediction": jnp.argmax(outputs["choice_logits"], axis=-1),
                "confidence": _confidence(outputs["choice_logits"])}
    if kind == "tagging":
        return {"prediction": jnp.argmax(outputs["tag_logits"], axis=-1)}  # [batch, length]
    if kind == "span_extraction":
        allowed = context_mask(batch["encoder_input_tokens"], batch["encoder_token_types"], pad_id)
        start, end = best_span(outputs["start_logits"], outputs["end_logits"], allowed, max_answer_length)
        return {"start": start, "end": end}
    raise ValueError(f"No prediction rule for task kind {kind!r}; plmjax.evaluation.predict handles {KINDS}.")


def _confidence(scores: jax.Array) -> jax.Array:
    """[batch, classes] scores -> [batch] the softmax probability of the predicted class."""
    return jnp.max(jax.nn.softmax(scores.astype(jnp.float32), axis=-1), axis=-1)


def jit_predict_step(run, kind: str, param_shardings, *, max_answer_length: int = 30):
    """`(params, batch) -> {name: [batch, ...]}` jitted like the trainer's eval step, replicated outputs.

    It is `step.jit_eval_step` with an objective whose "metrics" are the head's predictions.
    """
    scores_fn = getattr(run.objective, "pet_scores", None)
    if run.objective.name == "pet" and scores_fn is None:
        raise ValueError("Objective 'pet' has no `pet_scores(batch, outputs)`: the fine-tuning contract "
                         "(section 6) needs it for predictions.")

    def predictions_fn(batch, outputs):
        return None, head_predictions(kind, batch, outputs, pad_id=run.model_config.pad_id,
                                      max_answer_length=max_answer_length, scores_fn=scores_fn)

    predicting = dataclasses.replace(run.objective, loss_fn=predictions_fn)
    return step_lib.jit_eval_step(run.module, predicting, run.mesh, param_shardings, rules=run.rules)


# The jitted steps of recent runs: a trainer evaluating every `eval_every` steps compiles once.
_STEPS: dict[tuple, tuple[Any, Any]] = {}


def _cached_step(run, kind: str, param_shardings, max_answer_length: int):
    key = (id(run), kind, max_answer_length, id(param_shardings))
    if key not in _STEPS or _STEPS[key][0] is not run:  # the entry holds `run`, so its id is not reused
        if len(_STEPS) >= 8:
            _STEPS.pop(next(iter(_STEPS)))
        _STEPS[key] = (run, jit_predict_step(run, kind, param_shardings or param_shardings_for(run),
                                             max_answer_length=max_answer_length))
    return _STEPS[key][1]


def param_shardings_for(run):
    """The parameters' shardings on the run's mesh (as the trainer creates them)."""
    architecture = getattr(run, "architecture", "") or run.objective.architecture
    _, shardings = state_lib.state_shardings(run.module, optax.identity(), architecture, run.task_feature_lengths,
                                             run.mesh, run.rules)
    return shardings.params


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _decode(vocabulary: seqio.Vocabulary, ids: np.ndarray) -> str:
    """Token ids -> text; WordPiece puts spaces between CJK characters, which the answer text does not have."""
    return _SPACE_NEXT_TO_CJK.sub("", _text(vocabulary.decode([int(i) for i in ids])).strip())


def _inputs_vocabulary(task: str) -> seqio.Vocabulary:
    features = seqio.get_mixture_or_task(task).output_features
    return (features["inputs"] if "inputs" in features else next(iter(features.values()))).vocabulary


def _read_examples(task: str, split: str) -> dict[int, dict] | None:
    """A file-based task's raw examples by `idx` (plmjax.data.finetune.read_examples), None when it has none."""
    from plmjax.data.finetune import info
    try:
        return {int(example["idx"]): example for example in info.read_examples(task, split)}
    except ValueError:  # no file reader: TFDS or in-memory tasks
        return None


class SpanTexts:
    """Answer texts of predicted spans and the gold answers of a span-extraction split, from the best source:

    1. the task's raw features `context` (string) and `context_offsets` ([length, 2]: each input token's
       character start and end in `context`), gold `answers` ([n] strings);
    2. the task's file reader (`read_examples`: CMRC2018's `question`, `context`, every gold `answers`, the
       official string `id`) with the task encoder's own `span_text` (character offsets of the pieces);
    3. else the tokens decoded with the task's vocabulary; gold: the gold span's tokens.
    """

    def __init__(self, task: str, split: str, length: int):
        self.vocabulary = _inputs_vocabulary(task)
        self.examples = _read_examples(task, split)
        self.length = length
        self._encoder = None
        if self.examples is not None:
            from plmjax.data.finetune import encoding
            self._encoder = encoding.encoder_format(self.vocabulary)

    def official_id(self, example_id: int):
        return self.examples[example_id].get("id", example_id) if self.examples is not None else example_id

    def prediction(self, example_id: int, ids, start: int, end: int, raw: dict) -> str:
        if "context" in raw and "context_offsets" in raw:
            offsets = raw["context_offsets"]  # [length, 2]
            return _text(raw["context"])[int(offsets[start][0]):int(offsets[end][1])]
        if self.examples is not None:
            example = self.examples[example_id]
            return self._encoder.span_text(example["question"], example["context"], start, end, self.length)
        return _decode(self.vocabulary, ids[start:end + 1])

    def gold(self, example_id: int, ids, start: int, end: int, raw: dict) -> list[str] | None:
        """Every gold answer; None for an unlabeled (test) question."""
        if "answers" in raw:
            return [_text(a) for a in np.atleast_1d(raw["answers"])] or None
        if self.examples is not None:
            return list(self.examples[example_id].get("answers") or []) or None
        return [_decode(self.vocabulary, ids[start:end + 1])]


def _rows(kind: str, batch: dict, outputs: dict, extras: list[dict], example_ids: list[int],
          spans: SpanTexts | None) -> Iterator[tuple[Any, Any]]:
    """(prediction, target) of each real example of a batch."""
    for row, (raw, example_id) in enumerate(zip(extras, example_ids)):
        if kind in ("classification", "multiple_choice"):
            label = int(batch["labels"][row, 0])
            yield int(outputs["prediction"][row]), (label if label >= 0 else None)
        elif kind == "regression":
            labeled = "labels" not in batch or int(batch["labels"][row, 0]) >= 0
            yield float(outputs["prediction"][row]), (float(batch["label_values"][row, 0]) if labeled else None)
        elif kind == "tagging":
            words = batch["tag_weights"][row] > 0  # [length]: each word's first piece
            yield outputs["prediction"][row][words], batch["tag_labels"][row][words]
        else:  # span_extraction
            ids = batch["encoder_input_tokens"][row]
            text = spans.prediction(example_id, ids, int(outputs["start"][row]), int(outputs["end"][row]), raw)
            yield text, spans.gold(example_id, ids, int(batch["start_positions"][row, 0]),
                                   int(batch["end_positions"][row, 0]), raw)


def predict(params, run, task: str, split: str, batch_size: int = 32, *, task_info=None,
            param_shardings=None, max_answer_length: int = 30) -> Predictions:
    """Predictions over the whole split of `task` (see the module docstring for what each kind predicts).

    Args:
      params: the model's parameters (the trainer's sharded arrays, or host arrays).
      run: plmjax.train.setup.RunSetup (module, objective, model_config, mesh, task_feature_lengths).
      task, split: a registered seqio task and one of its splits.
      batch_size: the global batch size; a multiple of the mesh's data-parallel size (it need not divide the
        split).
      task_info: the task's TaskInfo (default: plmjax.data.finetune.info.get_task_info(task)).
      param_shardings: the parameters' shardings (default: as the trainer creates them for `run`).
      max_answer_length: span extraction only: the longest answer in tokens.
    """
    if task_info is None:
        from plmjax.data.finetune.info import get_task_info
        task_info = get_task_info(task)
    kind = task_info.kind
    if kind not in KINDS:
        raise ValueError(f"Task {task!r} is of kind {kind!r}; predict handles {KINDS} (text-to-text tasks need "
                         "generation or rank classification, not provided by plmjax.evaluation yet).")
    batching.check_batch_size(batch_size, run.mesh, run.rules)
    step = _cached_step(run, kind, param_shardings, max_answer_length)
    spans = SpanTexts(task, split, run.task_feature_lengths["inputs"]) if kind == "span_extraction" else None
    raw_features = SPAN_TEXT_FEATURES if kind == "span_extraction" else ()
    converter_options = {"num_choices": task_info.num_choices} if kind == "multiple_choice" else {}
    converter = feature_converters.make_feature_converter(run.objective.feature_converter, **converter_options)
    example_ids, predictions, targets, confidences = [], [], [], []
    for batch in batching.split_batches(task, split, run.task_feature_lengths, converter, batch_size,
                                        raw_features=raw_features):
        features = batch.features
        outputs = jax.device_get(step(params, batching.on_mesh(features, run.mesh, run.rules)))
        if "example_ids" in features:
            batch_ids = [int(i) for i in features["example_ids"][:batch.num_real, 0]]
        else:
            batch_ids = list(range(len(example_ids), len(example_ids) + batch.num_real))
        example_ids.extend(batch_ids)
        if "confidence" in outputs:
            confidences.extend(float(c) for c in outputs["confidence"][:batch.num_real])
        for prediction, target in _rows(kind, features, outputs, batch.extras, batch_ids, spans):
            predictions.append(prediction)
            targets.append(target)
    if not example_ids:
        raise ValueError(f"Split {split!r} of task {task!r} has no examples.")
    official = [spans.official_id(i) for i in example_ids] if spans and spans.examples is not None else None
    return Predictions(np.asarray(example_ids, np.int64), predictions, targets, official, confidences or None)
