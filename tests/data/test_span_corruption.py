"""T5 span corruption on the embedded corpus: exact reconstruction, density, span lengths, T5's lengths."""
import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import seqio

from plmjax.data import corpora, feature_converters, pipeline, pretraining, preprocessors, sources, vocabularies
from plmjax.data.span_corruption import span_corruption_lengths

INPUTS_LENGTH = 128


@functools.cache
def task() -> seqio.Task:
    vocab = vocabularies.CorpusSentencePieceVocabulary("pydoc", functools.partial(corpora.pydoc_paragraphs, "train"))
    return seqio.Task("test_pydoc_span_corruption",
                      **pretraining.task_kwargs("span_corruption", sources.pydoc_source(), vocab))


def vocab():
    return task().output_features["targets"].vocabulary


@functools.cache
def validation_examples(seed=0):
    tokens_length, targets_length = span_corruption_lengths(INPUTS_LENGTH)
    ds = task().get_dataset({"inputs": INPUTS_LENGTH, "targets": targets_length}, split="validation",
                            shuffle=False, seed=seed)
    return [(ex["inputs"].tolist(), ex["targets"].tolist()) for ex in ds.as_numpy_iterator()]


def reconstruct(inputs, targets, vocab_size, extra_ids):
    """Puts the targets' noise spans back in place of the inputs' sentinels (drops the EOS of both)."""
    is_sentinel = lambda t: t >= vocab_size - extra_ids
    spans, current = {}, None
    for token in targets[:-1]:
        if is_sentinel(token):
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in inputs[:-1]:
        out.extend(spans[token] if is_sentinel(token) else [token])
    return out


def expected_chunks():
    """The packing spec in plain Python: groups of 128 documents, concatenated, cut into tokens_length."""
    tokens_length, _ = span_corruption_lengths(INPUTS_LENGTH)
    # encode_tf, as the pipeline: tf_text's SentencePiece breaks exact Viterbi ties ("0/0.0.") unlike Python's.
    documents = [vocab().encode_tf(text).numpy().tolist() for text in corpora.pydoc_documents("validation")]
    chunks = []
    for start in range(0, len(documents), preprocessors.DOCS_PER_GROUP):
        stream = [t for doc in documents[start:start + preprocessors.DOCS_PER_GROUP] for t in doc]
        chunks += [stream[i:i + tokens_length] for i in range(0, len(stream), tokens_length)]
    return [c for c in chunks if len(c) >= 2]


def test_t5_lengths():
    assert span_corruption_lengths(512) == (568, 114)  # T5's C4 setting: inputs 512, targets 114


def test_inputs_and_targets_reconstruct_the_original_exactly():
    examples = validation_examples()
    v = vocab()
    rebuilt = [reconstruct(i, t, v.vocab_size, v.extra_ids) for i, t in examples]
    expected = expected_chunks()
    assert len(rebuilt) == len(expected) > 300
    for got, want in zip(rebuilt, expected):
        assert got == want
    # And as text: the decoded stream is the decoded original documents.
    assert v.decode(rebuilt[0]) == v.decode(expected[0])


def test_sentinels_and_eos_follow_t5():
    v = vocab()
    for inputs, targets in validation_examples()[:50]:
        assert inputs[-1] == v.eos_id and targets[-1] == v.eos_id
        in_sentinels = [t for t in inputs if t >= v.vocab_size - v.extra_ids]
        out_sentinels = [t for t in targets if t >= v.vocab_size - v.extra_ids]
        assert in_sentinels == list(range(v.vocab_size - 1, v.vocab_size - 1 - len(in_sentinels), -1))
        assert out_sentinels == in_sentinels and targets[0] == v.vocab_size - 1  # <extra_id_0> first
        assert v.tokenizer.id_to_piece(in_sentinels[0]) == "▁<extra_id_0>"
        assert len(inputs) <= INPUTS_LENGTH


def test_noise_density_and_mean_span_length():
    v = vocab()
    tokens_length, _ = span_corruption_lengths(INPUTS_LENGTH)
    noise, total, span_lengths = 0, 0, []
    for inputs, targets in validation_examples():
        spans = []
        for token in targets[:-1]:
            if token >= v.vocab_size - v.extra_ids:
                spans.append(0)
            else:
                spans[-1] += 1
        noise += sum(spans)
        total += len(reconstruct(inputs, targets, v.vocab_size, v.extra_ids))
        span_lengths += spans
    assert abs(noise / total - 0.15) < 0.005
    assert abs(np.mean(span_lengths) - 3.0) < 0.1
    assert min(span_lengths) >= 1 and max(span_lengths) >= 6  # random lengths, not all equal to 3
    full = [i for i, _ in validation_examples() if len(i) == INPUTS_LENGTH]
    assert len(full) > 0.9 * len(validation_examples())  # chunks fill the inputs exactly


def test_different_seeds_give_different_noise():
    a, b = validation_examples(0), validation_examples(1)
    assert sum(x != y for x, y in zip(a, b)) > 0.9 * len(a)


def test_encoder_decoder_batch_and_too_short_targets():
    _, targets_length = span_corruption_lengths(INPUTS_LENGTH)
    lengths = {"inputs": INPUTS_LENGTH, "targets": targets_length}
    batch = next(pipeline.get_dataset(
        task(), task_feature_lengths=lengths, feature_converter=feature_converters.make_feature_converter(
            "encoder_decoder"), split="validation", batch_size=2, shuffle=False).as_numpy_iterator())
    assert set(batch) == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                          "decoder_loss_weights"}
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
    assert batch["decoder_loss_weights"].dtype == np.float32
    with pytest.raises(ValueError, match="too short for span corruption"):
        task().get_dataset({"inputs": INPUTS_LENGTH, "targets": targets_length - 1}, split="validation")


def test_prefix_lm_batch_from_span_corruption():
    lengths = pretraining.task_feature_lengths("span_corruption", INPUTS_LENGTH)
    assert lengths == {"inputs": INPUTS_LENGTH, "targets": span_corruption_lengths(INPUTS_LENGTH)[1]}
    batch = next(pipeline.get_dataset(
        task(), task_feature_lengths=lengths, feature_converter=feature_converters.make_feature_converter(
            "prefix_lm"), split="validation", batch_size=2, shuffle=False).as_numpy_iterator())
    total = lengths["inputs"] + lengths["targets"]
    assert all(v.shape == (2, total) for v in batch.values())
    inputs, targets = validation_examples()[0]
    row = batch["decoder_target_tokens"][0].tolist()
    assert row[:len(inputs) + len(targets)] == inputs + targets  # prefix = corrupted inputs, then targets
    assert batch["decoder_causal_attention"][0].tolist()[:len(inputs) + 1] == [1] * (len(inputs) + 1)
    np.testing.assert_array_equal(batch["decoder_loss_weights"][0][:len(inputs)], 0)  # loss on targets only
