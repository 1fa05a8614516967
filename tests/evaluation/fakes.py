"""Tiny in-memory fine-tuning tasks for the evaluation tests: a seqio task per kind whose examples already hold
the contract's batch features, and a pass-through feature converter that only pads them (DATA's converters are
built in parallel; these tests need nothing but the batch contract)."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import seqio
import tensorflow as tf

from plmjax import sharding
from plmjax.data import feature_converters
from plmjax.data.finetune.info import TaskInfo
from plmjax.models import build_model, tiny_encoder
from plmjax.objectives import get_objective
from plmjax.train import state as state_lib
from plmjax.train.setup import RunSetup

LENGTH = L = 16
NUM_EXAMPLES = 13
VOCAB_SIZE = 64
CLS, SEP = 2, 3
_Spec = seqio.FeatureConverter.FeatureSpec
# Per-example features ([1] per example) of the contract, with their dtypes.
PER_EXAMPLE = {"labels": tf.int32, "label_values": tf.float32, "example_ids": tf.int32, "start_positions": tf.int32,
               "end_positions": tf.int32}
PER_POSITION = {"encoder_token_types": tf.int32, "tag_labels": tf.int32, "tag_weights": tf.float32}


class CharVocabulary(seqio.Vocabulary):
    """Ids 4.. are Chinese characters; decodes with spaces between tokens, as WordPiece does."""

    CHARS = "北京上海是中国的首都城市大学图书馆有很多人在读书今天天气很好我们去公园散步吧他说这本书非常有意思"

    @property
    def _base_vocab_size(self):
        return VOCAB_SIZE

    def _encode(self, s):
        return [4 + self.CHARS.index(c) for c in s]

    def _decode(self, ids):
        return " ".join(self.CHARS[i - 4] for i in ids if 4 <= i < 4 + len(self.CHARS))

    def _encode_tf(self, s):
        raise NotImplementedError

    def _decode_tf(self, ids):
        raise NotImplementedError

    @property
    def eos_id(self):
        return None

    @property
    def unk_id(self):
        return 1


def pass_through_converter(model_features: dict) -> type:
    """A converter class: 'inputs' -> encoder_input_tokens, every other feature kept, sequences padded."""

    class PassThrough(seqio.FeatureConverter):
        TASK_FEATURES = {"inputs": _Spec(dtype=tf.int32)}
        MODEL_FEATURES = {name: _Spec(dtype=dtype) for name, dtype in model_features.items()}
        PACKING_FEATURE_DTYPES = None

        def _convert_features(self, ds, task_feature_lengths):
            length = task_feature_lengths["inputs"]
            lengths = {name: (1 if name in PER_EXAMPLE else length) for name in self.MODEL_FEATURES}
            ds = ds.map(lambda ex: {"encoder_input_tokens" if k == "inputs" else k: v for k, v in ex.items()
                                    if k == "inputs" or k in self.MODEL_FEATURES})
            return seqio.utils.trim_and_pad_dataset(ds, lengths)

        def get_model_feature_lengths(self, task_feature_lengths):
            length = task_feature_lengths["inputs"]
            return {name: (1 if name in PER_EXAMPLE else length) for name in self.MODEL_FEATURES}

        def __init__(self, pack=False, num_choices=None, **kwargs):
            super().__init__(pack=False, **kwargs)

    return PassThrough


def register_task(monkeypatch, name: str, examples: list[dict], *, vocabulary=None, splits=("validation",)):
    """Registers a seqio task over `examples` (numpy features; list-valued string features allowed) and a
    pass-through converter family `test_<name>` for its features; returns the family name."""
    keys = list(examples[0])
    signature = {}
    for key in keys:
        value = np.asarray(examples[0][key])
        dtype = tf.string if value.dtype.kind in "US" else tf.as_dtype(value.dtype)
        signature[key] = tf.TensorSpec([None] * value.ndim, dtype)

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocabulary = vocabulary or seqio.PassThroughVocabulary(VOCAB_SIZE)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
        output_features={"inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)})
    family = f"test_{name}"
    model_features = {"encoder_input_tokens": tf.int32}
    model_features.update({k: v for k, v in {**PER_EXAMPLE, **PER_POSITION}.items() if k in keys})
    monkeypatch.setitem(feature_converters._FAMILIES, family, pass_through_converter(model_features))
    return family


def with_converter(objective, family: str):
    return dataclasses.replace(objective, feature_converter=family)


def sentence(rng, length, second=0):
    """`[CLS] a [SEP] (b [SEP])` ids and token types."""
    a = rng.integers(4, VOCAB_SIZE, length).tolist()
    ids, types = [CLS] + a + [SEP], [0] * (length + 2)
    if second:
        ids += rng.integers(4, VOCAB_SIZE, second).tolist() + [SEP]
        types += [1] * (second + 1)
    return np.asarray(ids, np.int32), np.asarray(types, np.int32)


def task_info(name, kind, label_names=(), metrics=("accuracy",), submission_name="", benchmark="glue", **kw):
    return TaskInfo(name=name, benchmark=benchmark, kind=kind, label_names=tuple(label_names),
                    metrics=tuple(metrics), submission_name=submission_name, **kw)


def make_run(arch, objective, family, lengths, vocab_size=VOCAB_SIZE, **head_options):
    module, config, mesh, params = _model(arch, tuple(sorted(lengths.items())), tuple(sorted(head_options.items())),
                                          vocab_size)
    return RunSetup(module, with_converter(get_objective(objective), family), config, mesh, dict(lengths)), params


@functools.cache
def _model(arch, lengths, head_options, vocab_size):
    """A tiny model of `arch` with its parameters created sharded on the 8-device mesh, as the trainer does."""
    config = tiny_encoder(vocab_size=vocab_size, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64)
    module = build_model(arch, config, **dict(head_options))
    mesh = sharding.create_mesh()
    state, _ = state_lib.create_train_state(module, optax.identity(), arch, dict(lengths), mesh, seed=1)
    return module, config, mesh, state.params


def reference_outputs(run, params, examples):
    """The model on all examples in one batch of their own: unsharded, no mesh, no padding rows."""
    ids = np.stack([pad(ex["inputs"], max(L, len(ex["inputs"]))) for ex in examples])
    types = np.stack([pad(ex["encoder_token_types"], ids.shape[1]) for ex in examples])
    return jax.device_get(run.module.apply({"params": jax.device_get(params)}, ids, token_type_ids=types))


def spread_classifier(run, params, examples):
    """A freshly initialized encoder gives nearly the same pooled output for every input, so its classifier
    predicts one label everywhere; this classifier (host arrays) is rescaled and centred on these examples' pooled
    outputs so that its scores vary by about 1 between them."""
    host = jax.device_get(params)
    pooled = np.asarray(reference_outputs(run, host, examples)["pooled"])  # [rows, emb]
    kernel = np.random.default_rng(0).normal(size=host["classifier"]["dense"]["kernel"].shape)
    kernel /= ((pooled - pooled.mean(0)) @ kernel).std()
    host["classifier"]["dense"] = {"kernel": kernel.astype(np.float32),
                                   "bias": (-pooled.mean(0) @ kernel).astype(np.float32)}
    return host


def pad(x, length=L):
    return np.pad(x, (0, length - len(x)))


def classification_examples(rng, label=True):
    examples = []
    for i in range(NUM_EXAMPLES):
        ids, types = sentence(rng, int(rng.integers(2, 6)), int(rng.integers(1, 6)))
        examples.append({"inputs": ids, "encoder_token_types": types,
                         "labels": np.asarray([rng.integers(0, 3) if label else -1], np.int32),
                         "label_values": np.asarray([rng.uniform(0, 5)], np.float32),
                         "example_ids": np.asarray([200 - 7 * i], np.int32)})  # ids out of order
    return examples


def brute_force_span(start_logits, end_logits, ids, types, max_answer_length):
    """The best (start, end) in the context (segment 1 before the final [SEP]) by trying every pair."""
    last = int(np.sum(ids != 0)) - 1
    best, span = -np.inf, (0, 0)
    for s in range(len(ids)):
        for e in range(s, min(s + max_answer_length, len(ids))):
            if types[s] == types[e] == 1 and s < last and e < last and ids[s] and ids[e]:
                if start_logits[s] + end_logits[e] > best:
                    best, span = start_logits[s] + end_logits[e], (s, e)
    return span
