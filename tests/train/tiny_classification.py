"""A tiny in-memory seqio classification task with official scoring (a TaskInfo) for the trainer's fine-tuning and
distillation tests: [CLS] w_1 .. w_n [SEP] over the `finetune_checkpoint.VOCAB`-token vocabulary, label 1 when most
words come from the upper half of the vocabulary. `register()` / `remove()` around a test module."""
import numpy as np
import seqio
import tensorflow as tf

from plmjax.data.finetune import TaskInfo, register_task_info
from tests.train.finetune_checkpoint import VOCAB

TASK, CLS, SEP = "test_tiny_lexicon_sentiment", 1, 2
LENGTHS = {"inputs": 16}


def _examples(count: int, seed: int) -> dict[str, np.ndarray]:
    """[CLS] w_1 .. w_n [SEP], a sentiment task with two lexicons: label 1 when most words come from the upper half
    of the vocabulary (each word is drawn from its label's half with probability 0.8)."""
    rng = np.random.default_rng(seed)
    inputs = np.zeros((count, 14), np.int32)
    labels = rng.integers(0, 2, size=(count, 1)).astype(np.int32)
    half = (VOCAB + 3) // 2
    for i in range(count):
        size = rng.integers(4, 12)
        own = rng.random(size) < 0.8
        upper = own if labels[i, 0] else ~own
        words = np.where(upper, rng.integers(half, VOCAB, size=size), rng.integers(3, half, size=size))
        inputs[i, :size + 2] = [CLS, *words, SEP]
    return {"inputs": inputs, "token_types": np.zeros_like(inputs), "labels": labels,
            "label_values": labels.astype(np.float32), "example_ids": np.arange(count, dtype=np.int32)[:, None]}


def _dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    examples = _examples(512, 0) if split == "train" else _examples(64, 1)

    def trim(example):  # drop the padding: seqio tasks hold unpadded examples
        length = tf.reduce_sum(tf.cast(example["inputs"] > 0, tf.int32))
        return {**example, "inputs": example["inputs"][:length], "token_types": example["token_types"][:length]}

    return tf.data.Dataset.from_tensor_slices(examples).map(trim)


def register():
    if TASK in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(TASK)
    seqio.TaskRegistry.add(
        TASK, source=seqio.FunctionDataSource(_dataset_fn, splits=("train", "validation")),
        output_features={"inputs": seqio.Feature(seqio.PassThroughVocabulary(VOCAB), add_eos=False)})
    register_task_info(TaskInfo(name=TASK, benchmark="glue", kind="classification", label_names=("neg", "pos"),
                                metrics=("accuracy",), submission_name=""))


def remove():
    seqio.TaskRegistry.remove(TASK)
