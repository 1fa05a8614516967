"""The official metrics against sklearn/scipy and closed forms on random inputs, and the span metrics of SQuAD
v1.1 and CMRC2018 on hand-computed cases."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from plmjax.evaluation import metrics


@pytest.fixture(params=range(5))
def rng(request):
    return np.random.default_rng(request.param)


def _labels(rng, n, k):
    return rng.integers(0, k, n), rng.integers(0, k, n)


def test_accuracy_counts_hits(rng):
    targets, predictions = _labels(rng, 57, 3)
    expected = 100 * np.mean(targets == predictions)
    assert metrics.accuracy(targets, predictions)["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(100 * sk_metrics.accuracy_score(targets, predictions))


def test_binary_f1_is_the_positive_class_f1(rng):
    targets, predictions = _labels(rng, 61, 2)
    tp = np.sum((targets == 1) & (predictions == 1))
    fp, fn = np.sum((targets == 0) & (predictions == 1)), np.sum((targets == 1) & (predictions == 0))
    closed_form = 100 * 2 * tp / (2 * tp + fp + fn)
    assert metrics.f1(targets, predictions)["f1"] == pytest.approx(closed_form, abs=1e-9)
    assert closed_form == pytest.approx(100 * sk_metrics.f1_score(targets, predictions))


def test_multiclass_f1_is_the_macro_average(rng):
    targets, predictions = _labels(rng, 80, 4)
    per_class = []
    for c in range(4):
        tp = np.sum((targets == c) & (predictions == c))
        denominator = np.sum(targets == c) + np.sum(predictions == c)
        per_class.append(2 * tp / denominator if denominator else 0.0)
    assert metrics.f1(targets, predictions)["f1"] == pytest.approx(100 * np.mean(per_class), abs=1e-9)
    assert metrics.f1_macro(targets, predictions)["f1_macro"] == pytest.approx(
        100 * sk_metrics.f1_score(targets, predictions, average="macro"))


def test_matthews_corrcoef_closed_form(rng):
    targets, predictions = _labels(rng, 90, 2)
    tp = np.sum((targets == 1) & (predictions == 1))
    tn = np.sum((targets == 0) & (predictions == 0))
    fp, fn = np.sum((targets == 0) & (predictions == 1)), np.sum((targets == 1) & (predictions == 0))
    closed_form = 100 * (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert metrics.matthews_corrcoef(targets, predictions)["matthews_corrcoef"] == pytest.approx(closed_form)
    assert closed_form == pytest.approx(100 * sk_metrics.matthews_corrcoef(targets, predictions))


def test_pearson_and_spearman(rng):
    targets = rng.uniform(0, 5, 40)
    predictions = targets + rng.normal(0, 1.5, 40)
    assert metrics.pearson(targets, predictions)["pearson"] == pytest.approx(
        100 * np.corrcoef(targets, predictions)[0, 1])
    # Spearman = Pearson of the ranks (no ties in continuous random data).
    ranks = [np.argsort(np.argsort(x)) for x in (targets, predictions)]
    assert metrics.spearman(targets, predictions)["spearman"] == pytest.approx(100 * np.corrcoef(*ranks)[0, 1])
    assert metrics.spearman(targets, predictions)["spearman"] == pytest.approx(
        100 * stats.spearmanr(targets, predictions)[0])


def test_registry_and_compute_metrics():
    assert metrics.get_metric("matthews_corrcoef") is metrics.matthews_corrcoef
    with pytest.raises(ValueError, match="Unknown metric 'mcc'.*matthews_corrcoef"):
        metrics.get_metric("mcc")
    scores = metrics.compute_metrics(("f1", "accuracy"), [1, 0, 1, 1], [1, 1, 1, 0])
    assert scores == pytest.approx({"f1": 100 * 2 * 2 / (2 * 2 + 1 + 1), "accuracy": 50.0})
    assert list(scores) == ["f1", "accuracy"]


# ----------------------------------------------------------------------------------- SQuAD v1.1 (English)

@pytest.mark.parametrize("gold, prediction, em, f1", [
    ("Eiffel Tower", "the Eiffel tower!", 100.0, 100.0),  # case, article and punctuation do not count
    ("the Eiffel Tower", "Eiffel Tower in Paris", 0.0, 100 * 2 * 0.5 * 1 / 1.5),  # p = 2/4, r = 2/2
    ("Denver Broncos", "Carolina Panthers", 0.0, 0.0),
    ("1,000 km", "1000 km", 100.0, 100.0),  # the comma is punctuation: both normalise to "1000 km"
    ("x b b c", "b b d", 0.0, 100 * 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)),  # bags: "b" counted twice
])
def test_squad_em_and_f1(gold, prediction, em, f1):
    assert metrics.exact_match([gold], [prediction], language="en")["exact_match"] == pytest.approx(em)
    assert metrics.span_f1([gold], [prediction], language="en")["span_f1"] == pytest.approx(f1)


def test_span_scores_take_the_best_gold_answer_and_average_over_questions():
    targets = [["Broncos", "Denver Broncos"], ["Santa Clara"]]
    predictions = ["Denver Broncos", "Clara"]
    # Question 1 matches its second answer exactly; question 2: p = 1, r = 1/2, F1 = 2/3.
    assert metrics.exact_match(targets, predictions)["exact_match"] == pytest.approx(50.0)
    assert metrics.span_f1(targets, predictions)["span_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


# ----------------------------------------------------------------------------------- CMRC2018 (Chinese)

@pytest.mark.parametrize("gold, prediction, em, f1", [
    ("北京", "北京。", 100.0, 100.0),  # the script's punctuation is removed
    ("北京", "北京市", 0.0, 100 * 2 * (2 / 3) / (2 / 3 + 1)),  # characters: p = 2/3, r = 1
    ("1998年7月", "1998年", 0.0, 100 * 2 * 0.5 / 1.5),  # segments [1998, 年, 7, 月] vs [1998, 年]
    ("《红楼梦》", "红楼梦", 100.0, 100.0),
    ("上海交通大学", "交通大学上海", 0.0, 100 * 2 * (4 / 6) * (4 / 6) / (8 / 6)),  # longest common run: 交通大学
    ("3.5亿元", "3.5亿", 0.0, 100 * 2 * (2 / 2) * (2 / 3) / (1 + 2 / 3)),  # 3.5 is one segment
])
def test_cmrc2018_em_and_f1(gold, prediction, em, f1):
    assert metrics.exact_match([gold], [prediction])["exact_match"] == pytest.approx(em)
    assert metrics.span_f1([gold], [prediction])["span_f1"] == pytest.approx(f1)


def test_cmrc2018_is_chosen_for_chinese_gold_answers():
    # English rules would drop "the" and match; CMRC2018's keep it, and its EM keeps spaces.
    assert metrics.exact_match([["北京", "the Beijing"]], ["Beijing"])["exact_match"] == 0.0
    assert metrics.exact_match([["北京", "the Beijing"]], ["Beijing"], language="en")["exact_match"] == 100.0
    assert metrics.exact_match([["北京"]], ["北 京"])["exact_match"] == 0.0  # as the official script
    assert metrics.span_f1([["北京"]], ["北 京"])["span_f1"] == 100.0


def test_span_metric_errors():
    with pytest.raises(ValueError, match="no gold answer"):
        metrics.exact_match([[]], ["x"])
    with pytest.raises(ValueError, match="language 'fr'"):
        metrics.span_f1(["x"], ["x"], language="fr")
