"""NSP and SOP sentence pairs: labels mean what they say (checked on documents whose tokens name their place),
and the real-text pipeline gives [CLS] A [SEP] B [SEP] with token types and BERT masking."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

import plmjax.tasks  # noqa: F401
from plmjax.data import feature_converters, pipeline, sentence_pairs, vocabularies


def numbered_documents(num_documents=100, seed=0):
    """Documents of 2-12 sentences of 3-9 tokens; token 100_000 * doc + 100 * sentence + i: its origin."""
    rng = np.random.default_rng(seed)
    return [[np.arange(rng.integers(3, 10)) + 100_000 * d + 100 * s for s in range(rng.integers(2, 13))]
            for d in range(num_documents)]


def origin(tokens):
    return [(t // 100_000, (t % 100_000) // 100, t % 100) for t in tokens]


@pytest.mark.parametrize("task", sentence_pairs.TASKS)
def test_labels_mean_random_next_or_swapped(task):
    pairs = sentence_pairs.make_pairs(numbered_documents(), 24, task, np.random.default_rng(1), short_seq_prob=0.0)
    labels = np.array([label for _, _, label in pairs])
    assert len(pairs) > 100 and 0.3 < labels.mean() < 0.7
    for a, b, label in pairs:
        assert 2 <= len(a) + len(b) <= 24 and a and b
        docs_a, docs_b = {d for d, _, _ in origin(a)}, {d for d, _, _ in origin(b)}
        assert len(docs_a) == len(docs_b) == 1
        if task == "nsp":
            if label == 0:  # the true continuation (truncation may drop tokens at A's end or B's start)
                assert docs_a == docs_b and origin(a)[-1] < origin(b)[0]
            else:
                assert docs_a != docs_b
        else:
            assert docs_a == docs_b
            first, second = (a, b) if label == 0 else (b, a)
            assert origin(first)[-1] < origin(second)[0]  # label 0: in order; 1: swapped


def test_nsp_pipeline_on_real_text():
    vocab = pipeline.vocabulary("pydoc_nsp")
    special = vocabularies.special_tokens(vocab)
    ds = pipeline.get_dataset("pydoc_nsp", task_feature_lengths={"inputs": 64, "targets": 64},
                              feature_converter=feature_converters.make_feature_converter("encoder_sentence_pair"),
                              split="validation", batch_size=50, shuffle=False, repeat=False)
    batches = list(ds.take(10).as_numpy_iterator())
    b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
    targets, types = b["encoder_target_tokens"], b["encoder_token_types"]
    assert b["encoder_sentence_labels"].shape == (500, 1)
    labels = b["encoder_sentence_labels"][:, 0]
    assert set(labels) == {0, 1}
    for row, tokens in enumerate(targets):
        n = int((tokens != 0).sum())
        seps = np.flatnonzero(tokens == special.sep_id)
        assert tokens[0] == special.cls_id and len(seps) == 2 and seps[1] == n - 1
        np.testing.assert_array_equal(types[row], (np.arange(len(tokens)) > seps[0]) & (np.arange(len(tokens)) < n))
    selected = b["encoder_loss_weights"] == 1
    candidates = ~np.isin(targets, special.special_ids)
    assert abs(selected.sum() / candidates.sum() - 0.15) < 0.02
