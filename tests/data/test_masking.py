"""BERT masking on the embedded corpus: rates, 80/10/10 split, specials, determinism, converter weights."""
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest
import seqio

from plmjax.data import corpora, feature_converters, pipeline, pretraining, sources, vocabularies

LENGTH = 128


@functools.cache
def pydoc_mlm_task() -> seqio.Task:
    vocab = vocabularies.CorpusSentencePieceVocabulary("pydoc", functools.partial(corpora.pydoc_paragraphs, "train"))
    return seqio.Task("test_pydoc_mlm", **pretraining.task_kwargs("mlm", sources.pydoc_source(), vocab))


def batches(seed=0, split="train", shuffle=False, num_batches=None, batch_size=64):
    ds = pipeline.get_dataset(
        pydoc_mlm_task(), task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
        feature_converter=feature_converters.MLMFeatureConverter(), split=split, batch_size=batch_size,
        shuffle=shuffle, seed=seed, repeat=False)
    if num_batches:
        ds = ds.take(num_batches)
    return list(ds.as_numpy_iterator())


@functools.cache
def one_pass_over_train():
    """One unshuffled pass over the train split: ~3000 examples of 128 tokens (~400k real tokens)."""
    stacked = {k: np.concatenate([b[k] for b in batches()]) for k in batches(num_batches=1)[0]}
    return stacked


def test_mlm_rates_on_real_text_match_bert():
    b = one_pass_over_train()
    vocab = pydoc_mlm_task().output_features["targets"].vocabulary
    special = vocabularies.special_tokens(vocab)
    inputs, targets, weights = b["encoder_input_tokens"], b["encoder_target_tokens"], b["encoder_loss_weights"]
    assert inputs.shape[0] > 2000, "expected thousands of examples"
    is_special = np.isin(targets, special.special_ids)
    selected = weights == 1.0
    masking_rate = selected.sum() / (~is_special).sum()
    masked = selected & (inputs == special.mask_id)
    randomized = selected & (inputs != targets) & (inputs != special.mask_id)
    kept = selected & (inputs == targets)
    n = selected.sum()
    assert abs(masking_rate - 0.15) < 0.01, masking_rate
    assert abs(masked.sum() / n - 0.80) < 0.01
    assert abs(randomized.sum() / n - 0.10) < 0.01
    assert abs(kept.sum() / n - 0.10) < 0.01
    # Per example: exactly round(0.15 * #non-special), at least one.
    per_example = np.round((~is_special).sum(1) * 0.15).clip(1)
    np.testing.assert_array_equal(selected.sum(1), per_example)


def test_specials_never_selected_and_only_selected_positions_change():
    b = one_pass_over_train()
    vocab = pydoc_mlm_task().output_features["targets"].vocabulary
    special = vocabularies.special_tokens(vocab)
    inputs, targets, weights = b["encoder_input_tokens"], b["encoder_target_tokens"], b["encoder_loss_weights"]
    is_special = np.isin(targets, special.special_ids)
    assert not (weights[is_special] != 0).any()
    np.testing.assert_array_equal(inputs[is_special], targets[is_special])
    assert ((inputs != targets) <= (weights == 1.0)).all()
    randomized = (weights == 1.0) & (inputs != targets) & (inputs != special.mask_id)
    assert not np.isin(inputs[randomized], special.special_ids).any()
    # Random replacements spread over the vocabulary (uniform over ~4000 regular ids).
    assert len(np.unique(inputs[randomized])) > 1500
    # Packing: every example is [CLS] text [SEP] (+ padding), full length except group tails.
    assert (targets[:, 0] == special.cls_id).all()
    lengths = (targets != 0).sum(1)
    assert (targets[np.arange(len(targets)), lengths - 1] == special.sep_id).all()
    assert np.mean(lengths == LENGTH) > 0.95


def test_same_seed_same_batches_different_seed_different_masks():
    first = batches(seed=7, split="validation", num_batches=3)
    again = batches(seed=7, split="validation", num_batches=3)
    other = batches(seed=8, split="validation", num_batches=3)
    for a, b, c in zip(first, again, other):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a["encoder_target_tokens"], c["encoder_target_tokens"])  # unshuffled text
        assert (a["encoder_loss_weights"] != c["encoder_loss_weights"]).mean() > 0.1


def test_feature_converter_contract():
    b = batches(split="validation", num_batches=1, batch_size=4)[0]
    assert set(b) == {"encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights"}
    assert b["encoder_input_tokens"].dtype == np.int32 and b["encoder_target_tokens"].dtype == np.int32
    assert b["encoder_loss_weights"].dtype == np.float32
    assert all(x.shape == (4, LENGTH) for x in b.values())


def test_mask_tokens_rejects_a_vocabulary_without_mask():
    vocab = seqio.PassThroughVocabulary(size=10)
    with pytest.raises(TypeError, match="No special-token table"):
        vocabularies.special_tokens(vocab)
