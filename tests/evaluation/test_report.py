"""Submission files in the leaderboards' formats, results tables, and evaluate_params end to end."""

import csv
import json

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from plmjax.evaluation import evaluate_params, report
from plmjax.evaluation.predict import Predictions
from tests.evaluation import fakes


def test_glue_tsv_has_the_header_index_order_and_label_strings(tmp_path):
    info = fakes.task_info("glue_mnli_matched", "classification", ("entailment", "neutral", "contradiction"),
                           submission_name="MNLI-m.tsv")
    preds = Predictions(np.asarray([2, 0, 1]), [1, 0, 2], [None] * 3)
    path = report.write_submission(str(tmp_path), info, preds)
    with open(path) as f:
        assert f.read() == "index\tprediction\n0\tentailment\n1\tcontradiction\n2\tneutral\n"
    assert report.read_glue_tsv(path)[1] == {"index": "1", "prediction": "contradiction"}


def test_glue_regression_writes_scores(tmp_path):
    info = fakes.task_info("glue_stsb", "regression", metrics=("pearson", "spearman"), submission_name="STS-B.tsv")
    path = report.write_submission(str(tmp_path), info, Predictions(np.asarray([0, 1]), [3.14159, 0.5], [None] * 2))
    with open(path) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows == [["index", "prediction"], ["0", "3.142"], ["1", "0.500"]]


def test_clue_json_lines(tmp_path):
    info = fakes.task_info("fewclue_eprstmt", "classification", ("Negative", "Positive"), benchmark="fewclue",
                           submission_name="eprstmt_predict.json")
    path = report.write_submission(str(tmp_path), info, Predictions(np.asarray([7, 3]), [1, 0], [None] * 2))
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert lines == [{"id": 3, "label": "Negative"}, {"id": 7, "label": "Positive"}]

    chinese = fakes.task_info("clue_cluewsc2020", "classification", ("真", "假"), benchmark="clue",
                              submission_name="cluewsc2020_predict.json")
    path = report.write_submission(str(tmp_path), chinese, Predictions(np.asarray([0]), [1], [None]))
    with open(path, encoding="utf-8") as f:
        assert f.read() == '{"id": 0, "label": "假"}\n'  # UTF-8, not \\u escapes


def test_clue_span_choice_and_chid_formats(tmp_path):
    cmrc = fakes.task_info("clue_cmrc2018", "span_extraction", metrics=("exact_match", "span_f1"),
                           benchmark="clue", submission_name="cmrc2018_predict.json")
    path = report.write_submission(str(tmp_path), cmrc, Predictions(np.asarray([5, 1]), ["北京", "1998年"], [None] * 2))
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"1": "1998年", "5": "北京"}
    c3 = fakes.task_info("clue_c3", "multiple_choice", benchmark="clue", num_choices=4,
                         submission_name="c3_predict.json")
    path = report.write_submission(str(tmp_path), c3, Predictions(np.asarray([0, 1]), [3, 0], [None] * 2))
    with open(path) as f:
        assert [json.loads(line) for line in f] == [{"id": 0, "label": 3}, {"id": 1, "label": 0}]
    chid = fakes.task_info("clue_chid", "multiple_choice", benchmark="clue", num_choices=10,
                           submission_name="chid_predict.json")
    path = report.write_submission(str(tmp_path), chid, Predictions(np.asarray([577980, 12]), [4, 9], [None] * 2))
    with open(path) as f:
        assert json.load(f) == {"#idiom577980#": 4, "#idiom000012#": 9}


def test_no_submission_file_and_bad_labels():
    assert report.write_submission("/nonexistent", fakes.task_info("ud_pos", "tagging", benchmark="ud"),
                                   Predictions(np.asarray([0]), [np.zeros(2)], [None])) is None
    info = fakes.task_info("glue_sst2", "classification", ("0", "1"), submission_name="SST-2.tsv")
    with pytest.raises(ValueError, match="Prediction 2 is outside the 2 labels of task 'glue_sst2'"):
        report.submission_text(info, Predictions(np.asarray([0]), [2], [None]))


def test_results_tables_merge(tmp_path):
    out = str(tmp_path)
    report.write_results(out, report.result_rows("glue_mrpc", "validation", {"f1": 80.0, "accuracy": 70.0}, 408,
                                                 "ckpt/1"))
    md, js = report.write_results(out, report.result_rows("glue_mrpc", "validation", {"f1": 85.5}, 408, "ckpt/1")
                                  + report.result_rows("glue_cola", "validation", {"matthews_corrcoef": 41.0}, 1043))
    with open(js) as f:
        rows = json.load(f)
    assert [(r["task"], r["metric"], r["value"]) for r in rows] == [
        ("glue_mrpc", "accuracy", 70.0), ("glue_mrpc", "f1", 85.5), ("glue_cola", "matthews_corrcoef", 41.0)]
    assert set(rows[0]) == set(report.FIELDS)
    with open(md) as f:
        table = f.read().splitlines()
    assert table[0] == "| task | split | metric | value | examples | checkpoint |"
    assert table[3] == "| glue_mrpc | validation | f1 | 85.50 | 408 | ckpt/1 |"


def test_evaluate_params_scores_and_writes_files(monkeypatch, tmp_path):
    """Validation: accuracy/F1 of the model's predictions equal sklearn's on the unsharded model's argmax;
    test (labels -1): no scores, and the submission file lists every example once."""
    rng = np.random.default_rng(7)
    labeled, unlabeled = fakes.classification_examples(rng), fakes.classification_examples(rng, label=False)
    for example in labeled:
        example["labels"] = example["labels"] % 2
    family = fakes.register_task(monkeypatch, "eval_test_mrpc", labeled)
    run, params = fakes.make_run("encoder_classifier", "classification", family, {"inputs": fakes.L}, num_labels=2)
    params = fakes.spread_classifier(run, params, labeled)
    info = fakes.task_info("eval_test_mrpc", "classification", ("not_equivalent", "equivalent"),
                           metrics=("f1", "accuracy"), submission_name="MRPC.tsv")
    out = str(tmp_path)
    results = evaluate_params(params, run, "eval_test_mrpc", "validation", batch_size=8, out_dir=out,
                              checkpoint="ckpt", task_info=info)
    expected = np.argmax(fakes.reference_outputs(run, params, labeled)["classification_logits"], -1)
    targets = [int(ex["labels"][0]) for ex in labeled]
    assert results == pytest.approx({"f1": 100 * sk_metrics.f1_score(targets, expected),
                                     "accuracy": 100 * sk_metrics.accuracy_score(targets, expected),
                                     "num_examples": fakes.NUM_EXAMPLES})
    assert len(set(expected)) > 1

    fakes.register_task(monkeypatch, "eval_test_mrpc", unlabeled, splits=("test",))
    results = evaluate_params(params, run, "eval_test_mrpc", "test", batch_size=8, out_dir=out, task_info=info)
    assert results == {"num_examples": fakes.NUM_EXAMPLES}
    rows = report.read_glue_tsv(str(tmp_path / "submission" / "test" / "MRPC.tsv"))
    assert [int(r["index"]) for r in rows] == sorted(int(ex["example_ids"][0]) for ex in unlabeled)
    assert {r["prediction"] for r in rows} <= {"not_equivalent", "equivalent"}
    with open(tmp_path / "results.json") as f:
        assert {(r["metric"], r["split"]) for r in json.load(f)} == {("f1", "validation"), ("accuracy", "validation")}
