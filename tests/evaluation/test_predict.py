"""predict over a whole split on an 8-device mesh: every example exactly once (13 examples, batches of 8), each
prediction equal to the unsharded model's on that example alone, for every kind of head."""

import numpy as np
import pytest

from plmjax.evaluation import metrics, predict as predict_lib
from plmjax.evaluation.predict import predict
from tests.evaluation import fakes
from tests.evaluation.fakes import L, classification_examples, make_run, pad, reference_outputs, spread_classifier

NUM_EXAMPLES, BATCH = fakes.NUM_EXAMPLES, 8  # 8 does not divide 13: the second batch has 5 padding rows


def test_classification_covers_every_example_once(monkeypatch):
    rng = np.random.default_rng(0)
    examples = classification_examples(rng)
    family = fakes.register_task(monkeypatch, "eval_test_cls", examples)
    run, params = make_run("encoder_classifier", "classification", family, {"inputs": L}, num_labels=3)
    params = spread_classifier(run, params, examples)
    info = fakes.task_info("eval_test_cls", "classification", ("a", "b", "c"))
    preds = predict(params, run, "eval_test_cls", "validation", BATCH, task_info=info)

    assert sorted(preds.example_ids) == sorted(200 - 7 * i for i in range(NUM_EXAMPLES))
    assert len(preds.predictions) == len(preds.targets) == NUM_EXAMPLES
    logits = reference_outputs(run, params, examples)["classification_logits"]
    for i, (example_id, prediction, target) in enumerate(zip(preds.example_ids, preds.predictions, preds.targets)):
        assert example_id == examples[i]["example_ids"][0] and target == examples[i]["labels"][0]  # split order
        assert prediction == int(np.argmax(logits[i]))
    assert len(set(preds.predictions)) > 1  # the comparison is not against a constant
    # one confidence per example (their values: test_confidence_is_the_softmax_probability_of_the_prediction)
    assert len(preds.confidences) == NUM_EXAMPLES and all(1 / 3 <= c <= 1 for c in preds.confidences)


def test_confidence_is_the_softmax_probability_of_the_prediction():
    from plmjax.evaluation.predict import head_predictions
    logits = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32) * 3
    z = logits.astype(np.float64)
    softmax = np.exp(z - z.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    for kind, key in (("classification", "classification_logits"), ("multiple_choice", "choice_logits")):
        out = head_predictions(kind, {}, {key: logits})
        np.testing.assert_array_equal(np.asarray(out["prediction"]), softmax.argmax(-1))
        np.testing.assert_allclose(np.asarray(out["confidence"]), softmax.max(-1), rtol=1e-6)


def test_regression_values_equal_the_unsharded_model(monkeypatch):
    examples = classification_examples(np.random.default_rng(1))
    family = fakes.register_task(monkeypatch, "eval_test_reg", examples)
    run, params = make_run("encoder_classifier", "regression", family, {"inputs": L}, num_labels=1)
    info = fakes.task_info("eval_test_reg", "regression", metrics=("pearson", "spearman"))
    preds = predict(params, run, "eval_test_reg", "validation", BATCH, task_info=info)
    expected = reference_outputs(run, params, examples)["classification_logits"][:, 0]
    np.testing.assert_allclose(preds.predictions, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preds.targets, [ex["label_values"][0] for ex in examples])


def test_multiple_choice_argmax_over_choices(monkeypatch):
    rng, choices = np.random.default_rng(2), 3
    examples = []
    for i in range(NUM_EXAMPLES):
        pairs = [fakes.sentence(rng, int(rng.integers(2, 5)), int(rng.integers(1, 5))) for _ in range(choices)]
        examples.append({"inputs": np.concatenate([pad(ids) for ids, _ in pairs]),  # choice-major [c * L]
                         "encoder_token_types": np.concatenate([pad(types) for _, types in pairs]),
                         "labels": np.asarray([rng.integers(0, choices)], np.int32),
                         "example_ids": np.asarray([i], np.int32)})
    family = fakes.register_task(monkeypatch, "eval_test_mc", examples)
    run, params = make_run("encoder_multiple_choice", "multiple_choice", family, {"inputs": choices * L},
                           num_choices=choices)
    params = spread_classifier(run, params, examples)
    info = fakes.task_info("eval_test_mc", "multiple_choice", num_choices=choices, benchmark="clue")
    preds = predict(params, run, "eval_test_mc", "validation", BATCH, task_info=info)
    assert list(preds.example_ids) == list(range(NUM_EXAMPLES))
    scores = reference_outputs(run, params, examples)["choice_logits"]  # [examples, choices]
    assert preds.predictions == np.argmax(scores, -1).tolist()
    assert len(set(preds.predictions)) > 1


def span_examples(rng, with_offsets):
    chars = fakes.CharVocabulary.CHARS
    examples = []
    for i in range(NUM_EXAMPLES):
        question = rng.integers(4, 4 + len(chars), int(rng.integers(2, 4)))
        context = rng.integers(4, 4 + len(chars), int(rng.integers(5, L - len(question) - 3)))
        ids = np.asarray([fakes.CLS, *question, fakes.SEP, *context, fakes.SEP], np.int32)
        start = len(question) + 2  # the context's first position
        types = np.asarray([0] * start + [1] * (len(context) + 1), np.int32)
        gold_start = start + int(rng.integers(0, len(context) - 1))
        example = {"inputs": ids, "encoder_token_types": types,
                   "start_positions": np.asarray([gold_start], np.int32),
                   "end_positions": np.asarray([gold_start + 1], np.int32),
                   "example_ids": np.asarray([i], np.int32)}
        text = "".join(chars[t - 4] for t in context)
        if with_offsets:
            offsets = np.zeros((len(ids), 2), np.int32)
            offsets[start:start + len(context), 0] = np.arange(len(context))
            offsets[start:start + len(context), 1] = np.arange(1, len(context) + 1)
            example.update(context=text, context_offsets=offsets,
                           answers=np.asarray([text[gold_start - start:gold_start - start + 2], text[:1]]))
        examples.append(example)
    return examples


@pytest.mark.parametrize("with_offsets", [True, False])
def test_span_extraction_best_span_and_text(monkeypatch, with_offsets):
    examples = span_examples(np.random.default_rng(3), with_offsets)
    name = f"eval_test_span_{with_offsets}"
    family = fakes.register_task(monkeypatch, name, examples, vocabulary=fakes.CharVocabulary())
    run, params = make_run("encoder_span", "span_extraction", family, {"inputs": L})
    info = fakes.task_info(name, "span_extraction", metrics=("exact_match", "span_f1"), benchmark="clue")
    preds = predict(params, run, name, "validation", BATCH, task_info=info, max_answer_length=3)
    chars = fakes.CharVocabulary.CHARS
    lengths = []
    out = reference_outputs(run, params, examples)
    for i, (prediction, target, ex) in enumerate(zip(preds.predictions, preds.targets, examples)):
        ids, types = pad(ex["inputs"]), pad(ex["encoder_token_types"])
        s, e = fakes.brute_force_span(out["start_logits"][i], out["end_logits"][i], ids, types, max_answer_length=3)
        assert prediction == "".join(chars[t - 4] for t in ids[s:e + 1])  # no spaces between characters
        lengths.append(e - s + 1)
        gold = ids[ex["start_positions"][0]:ex["end_positions"][0] + 1]
        assert target[0] == "".join(chars[t - 4] for t in gold)
        if with_offsets:
            assert target == [a for a in ex["answers"]]
    assert len(set(lengths)) > 1  # both single- and multi-character answers were chosen
    # Scored with CMRC2018's exact match: the share of predictions equal to one of their gold answers.
    targets, predicted = preds.labeled()
    hits = sum(p in t for t, p in zip(targets, predicted))
    assert metrics.exact_match(targets, predicted)["exact_match"] == pytest.approx(100 * hits / NUM_EXAMPLES)


def test_tagging_predicts_each_tagged_word(monkeypatch):
    rng, num_tags = np.random.default_rng(4), 5
    examples = []
    for i in range(NUM_EXAMPLES):
        ids, types = fakes.sentence(rng, int(rng.integers(3, L - 2)))
        weights = (rng.uniform(size=len(ids)) < 0.6).astype(np.float32)
        weights[[0, -1]] = 0  # [CLS], [SEP]
        examples.append({"inputs": ids, "encoder_token_types": types, "tag_weights": weights,
                         "tag_labels": (rng.integers(0, num_tags, len(ids)) * weights).astype(np.int32)})
    family = fakes.register_task(monkeypatch, "eval_test_tag", examples)
    run, params = make_run("encoder_tagger", "tagging", family, {"inputs": L}, num_labels=num_tags)
    info = fakes.task_info("eval_test_tag", "tagging", benchmark="ud")
    preds = predict(params, run, "eval_test_tag", "validation", BATCH, task_info=info)
    assert list(preds.example_ids) == list(range(NUM_EXAMPLES))  # running index: tagging has no example ids
    logits = reference_outputs(run, params, examples)["tag_logits"]
    for i, (prediction, target, ex) in enumerate(zip(preds.predictions, preds.targets, examples)):
        words = ex["tag_weights"] > 0
        np.testing.assert_array_equal(prediction, np.argmax(logits[i][:len(words)], -1)[words])
        np.testing.assert_array_equal(target, ex["tag_labels"][words])


def test_best_span_respects_order_length_and_mask():
    start = np.asarray([[0.0, 5.0, 1.0, 0.0, 9.0]])
    end = np.asarray([[0.0, 0.0, 4.0, 6.0, 0.0]])
    allowed = np.asarray([[False, True, True, True, False]])
    s, e = predict_lib.best_span(start, end, allowed, max_answer_length=2)
    assert (int(s[0]), int(e[0])) == (1, 2)  # (1, 3) scores 11 but is 3 long; position 4 is masked
    s, e = predict_lib.best_span(start, end, allowed, max_answer_length=3)
    assert (int(s[0]), int(e[0])) == (1, 3)


def test_batch_size_must_split_over_the_data_parallel_devices(monkeypatch):
    examples = classification_examples(np.random.default_rng(5))
    family = fakes.register_task(monkeypatch, "eval_test_bad_batch", examples)
    run, params = make_run("encoder_classifier", "classification", family, {"inputs": L}, num_labels=3)
    info = fakes.task_info("eval_test_bad_batch", "classification", ("a", "b", "c"))
    with pytest.raises(ValueError, match="batch_size=12 must be a multiple of the mesh's 8 data-parallel"):
        predict(params, run, "eval_test_bad_batch", "validation", 12, task_info=info)
    text_info = fakes.task_info("eval_test_bad_batch", "text_to_text", ("a", "b", "c"))
    with pytest.raises(ValueError, match="kind 'text_to_text'"):
        predict(params, run, "eval_test_bad_batch", "validation", 8, task_info=text_info)
