"""BART denoising on the embedded corpus: infilling reconstructs the original exactly, 30% noise, Poisson(3)
spans; sentence permutation keeps every sentence."""
import collections
import functools
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import seqio
import tensorflow as tf

import plmjax.tasks  # noqa: F401
from plmjax.data import denoising, objective_tasks, pipeline, sources

LENGTH = 128


@functools.cache
def examples(permute: bool, num_examples: int = 1000):
    vocab = pipeline.vocabulary("pydoc_bart_denoising")
    task = seqio.Task(f"test_bart_permute_{permute}", **objective_tasks.task_kwargs(
        "bart_denoising", sources.pydoc_source(), vocab, permute=permute))
    ds = task.get_dataset({"inputs": LENGTH, "targets": LENGTH}, split="train", shuffle=False)
    return list(ds.take(num_examples).as_numpy_iterator()), vocab


def infilling_alignment(inputs, targets, mask_id):
    """The noise segments of `targets` that the [MASK]s of `inputs` stand for, or None if none exists."""
    pattern = "".join(r"((?: \d+)*?)" if t == mask_id else re.escape(f" {t}") for t in inputs)
    match = re.fullmatch(pattern, "".join(f" {t}" for t in targets))
    return None if match is None else [len(g.split()) for g in match.groups()]


def test_infilling_reconstructs_the_original_exactly():
    exs, vocab = examples(permute=False)
    mask_id = vocab.mask_id
    noise_fractions, segments = [], []
    for ex in exs:
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs[-1] == targets[-1] == vocab.eos_id and len(inputs) <= len(targets) <= LENGTH
        assert mask_id not in targets
        noise = infilling_alignment(inputs[:-1].tolist(), targets[:-1].tolist(), mask_id)
        assert noise is not None, "inputs are not the targets with spans replaced by [MASK]"
        noise_fractions.append(sum(noise) / (len(targets) - 1))
        segments.extend(noise)
    assert len(exs) > 800
    # round(0.3 * n) noise tokens per chunk; one [MASK] per (merged) span, a zero-length span inserts one.
    assert abs(np.mean(noise_fractions) - 0.3) < 0.005 and max(abs(np.array(noise_fractions) - 0.3)) < 0.1
    segments = np.array(segments)
    assert 0.02 < np.mean(segments == 0) < 0.06  # Poisson(3) gives e^-3 = 5% zero-length spans (fewer after merges)
    assert 2.8 < segments.mean() < 3.6  # Poisson(3), lengthened a little where touching spans merge


def test_poisson_span_lengths_before_trimming():
    draws = tf.random.stateless_poisson([200_000], seed=[1, 2], lam=3.0, dtype=tf.int32).numpy()
    counts = collections.Counter(draws.tolist())
    assert abs(draws.mean() - 3.0) < 0.02 and abs(counts[0] / len(draws) - np.exp(-3)) < 0.003


def test_sentence_permutation_keeps_every_sentence():
    exs, vocab = examples(permute=True, num_examples=600)
    mask_id = vocab.mask_id
    reordered = 0
    for ex in exs:
        inputs, targets = ex["inputs"][:-1], ex["targets"][:-1]
        # Every non-[MASK] input token comes from the targets (as a multiset).
        left = collections.Counter(targets.tolist())
        left.subtract(inputs[inputs != mask_id].tolist())
        assert min(left.values()) >= 0
        reordered += infilling_alignment(inputs.tolist(), targets.tolist(), mask_id) is None
    assert reordered > 300  # most chunks hold several sentences, and their order changed


def test_permute_sentences_is_a_permutation_of_whole_sentences():
    tokens = tf.range(100, 140)
    ends = tf.constant([i in (4, 9, 20, 21, 33) for i in range(40)])
    out = denoising.permute_sentences(tokens, ends, tf.constant([3, 4])).numpy()
    sentences = [list(range(100, 105)), list(range(105, 110)), list(range(110, 121)), [121],
                 list(range(122, 134)), list(range(134, 140))]
    starts = np.cumsum([0] + [len(s) for s in sentences])
    pieces, position = [], 0
    while position < len(out):  # cut `out` back into the sentences, each must appear whole
        sentence = next(s for s in sentences if s[0] == out[position])
        assert out[position:position + len(sentence)].tolist() == sentence
        pieces.append(sentence)
        position += len(sentence)
    assert sorted(map(tuple, pieces)) == sorted(map(tuple, sentences)) and len(starts) == 7
    assert out.tolist() != list(range(100, 140))
