"""u-PMLM masking on the embedded corpus: per-sequence ratios uniform on [0, 1] (Kolmogorov-Smirnov), BERT's
80/10/10 within, specials never selected."""
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
from scipy import stats

import plmjax.tasks  # noqa: F401
from plmjax.data import feature_converters, pipeline, vocabularies

LENGTH = 128


@functools.cache
def one_pass(split="train", seed=0):
    ds = pipeline.get_dataset("pydoc_pmlm", task_feature_lengths={"inputs": LENGTH, "targets": LENGTH},
                              feature_converter=feature_converters.MLMFeatureConverter(), split=split, batch_size=100,
                              shuffle=False, seed=seed, repeat=False)
    batches = list(ds.take(12).as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_per_sequence_ratios_are_uniform():
    b = one_pass()
    special = vocabularies.special_tokens(pipeline.vocabulary("pydoc_pmlm"))
    candidates = ~np.isin(b["encoder_target_tokens"], special.special_ids)
    selected = b["encoder_loss_weights"] == 1
    assert not (selected & ~candidates).any()
    full = candidates.sum(1) > 100  # long examples: the ratio's rounding is finer than 1%
    ratios = selected.sum(1)[full] / candidates.sum(1)[full]
    assert len(ratios) > 1000
    result = stats.kstest(ratios, "uniform")
    assert result.pvalue > 0.01, result
    assert abs(ratios.mean() - 0.5) < 0.02 and ratios.min() < 0.02 and ratios.max() > 0.98
    # BERT's 80/10/10 inside the selection.
    inputs, targets = b["encoder_input_tokens"], b["encoder_target_tokens"]
    n = selected.sum()
    assert abs((selected & (inputs == special.mask_id)).sum() / n - 0.8) < 0.01
    assert abs((selected & (inputs == targets)).sum() / n - 0.1) < 0.01


def test_ratios_are_not_constant_across_seeds():
    a, b = one_pass(seed=0), one_pass(seed=1)
    np.testing.assert_array_equal(a["encoder_target_tokens"], b["encoder_target_tokens"])
    per_example = lambda x: x["encoder_loss_weights"].sum(1)  # noqa: E731
    assert np.corrcoef(per_example(a), per_example(b))[0, 1] < 0.2  # the ratio is drawn per sequence and seed
