"""SpanBERT span masking on the embedded corpus: 15% of tokens, spans of whole words with the clipped geometric
length distribution (mean 3.8 words, at most 10), 80/10/10 decided per span, and the SBO boundary features."""
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
from scipy import stats

import plmjax.tasks  # noqa: F401
from plmjax.data import pipeline, span_masking, vocabularies

LENGTH = 128


@functools.cache
def examples():
    task = plmjax.tasks.pretraining.seqio.get_mixture_or_task("pydoc_span_masking")
    ds = task.get_dataset({"inputs": LENGTH, "targets": LENGTH}, split="train", shuffle=False)
    return list(ds.take(1000).as_numpy_iterator())


def spans_of(example):
    """[(start, end)] of the masked spans, from the SBO features (left + 1 .. right - 1)."""
    selected = np.flatnonzero(example["masked_lm_weights"])
    return sorted({(int(example["span_left"][i]) + 1, int(example["span_right"][i])) for i in selected})


def test_truncated_geometric_sampler():
    probs = span_masking.truncated_geometric_probs(0.2, 10)
    mean = float(np.sum(probs * np.arange(1, 11)))
    assert abs(mean - 3.8) < 0.01  # SpanBERT: "yielding a mean span length of 3.8"
    draws = span_masking.sample_span_lengths(100_000, [3, 4]).numpy()
    assert draws.min() == 1 and draws.max() == 10
    observed = np.bincount(draws, minlength=11)[1:]
    assert stats.chisquare(observed, probs * len(draws)).pvalue > 0.01


def test_rate_spans_of_whole_words_and_span_level_replacement():
    vocab = pipeline.vocabulary("pydoc_span_masking")
    special = vocabularies.special_tokens(vocab)
    begins_word = np.array([vocab.tokenizer.IdToPiece(i).startswith("▁") for i in range(vocab.vocab_size)])
    begins_word[list(special.special_ids)] = True
    selected_total = candidates_total = 0
    span_words, actions, budgets, single_document_spans = [], [], [], []
    for ex in examples():
        targets, inputs, selected = ex["targets"], ex["inputs"], ex["masked_lm_weights"] == 1
        candidates = ~np.isin(targets, special.special_ids)
        assert not (selected & ~candidates).any()
        selected_total += selected.sum()
        candidates_total += candidates.sum()
        starts = begins_word[targets]
        starts[1:] |= ~candidates[:-1]  # the token after a special one begins a word (packing cuts mid-word)
        covered = np.zeros_like(selected)
        for start, end in spans_of(ex):
            covered[start:end] = True
            assert starts[start] and starts[end], "a span cuts a word"
            assert (ex["span_position"][start:end] == np.minimum(np.arange(end - start),
                                                               span_masking.MAX_SPAN_POSITION)).all()
            span_words.append(int(starts[start:end].sum()))
            tokens_in, tokens_out = inputs[start:end], targets[start:end]
            if (tokens_in == special.mask_id).all():
                actions.append("mask")
            elif (tokens_in == tokens_out).all():
                actions.append("keep")
            else:
                assert not (tokens_in == special.mask_id).any(), "one decision per span"
                actions.append("random")
        np.testing.assert_array_equal(covered, selected)
        if (~candidates).sum() == 2 + (targets == 0).sum():  # [CLS] one document [SEP] (+ padding)
            budgets.append(int(max(1, round(0.15 * int(starts[candidates].sum())))))
            single_document_spans.extend(span_words[len(span_words) - len(spans_of(ex)):])
    assert len(span_words) > 3000
    assert abs(selected_total / candidates_total - 0.15) < 0.01
    span_words = np.array(span_words)
    assert span_words.max() <= 10
    # Mean 3.8 for drawn spans; the last span of each sequence is cut to the word budget, which lowers the mean.
    # The expected mean under that cut, simulated with numpy for the same budgets (single-document examples):
    rng = np.random.default_rng(0)
    pmf = 0.2 * 0.8 ** np.arange(10)
    simulated = []
    for budget in budgets * 20:
        lengths = rng.choice(np.arange(1, 11), size=budget, p=pmf / pmf.sum())
        lengths = lengths[:np.searchsorted(np.cumsum(lengths), budget) + 1]
        lengths[-1] = budget - lengths[:-1].sum()
        simulated.extend(lengths)
    single_document_spans = np.array(single_document_spans)
    assert len(single_document_spans) > 1000
    assert abs(single_document_spans.mean() - np.mean(simulated)) < 0.1, (single_document_spans.mean(),
                                                                           np.mean(simulated))
    assert abs(np.mean(simulated) - 3.8) > 0.2  # the cut matters: comparing with 3.8 itself would be wrong
    actions = np.array(actions)
    for action, rate in (("mask", 0.8), ("keep", 0.1), ("random", 0.1)):
        assert abs(np.mean(actions == action) - rate) < 0.02, (action, np.mean(actions == action))
