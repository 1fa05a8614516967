"""The benchmarks' official metrics as seqio-style functions `fn(targets, predictions) -> {name: score}`.

Scores are on the leaderboards' 0-100 scale. Classification and correlation metrics are sklearn's and scipy's;
the span metrics (exact match and F1 over answer strings, the best over the gold answers of each question) follow
the official evaluation scripts: SQuAD v1.1 for English (lower-case, drop ASCII punctuation and the articles
a/an/the, compare whitespace tokens as bags) and CMRC2018 for Chinese (lower-case, drop the script's punctuation
list, split CJK text into characters and other text into words, F1 from the longest common run of segments).

GLUE's metric sets per task (CoLA: matthews_corrcoef; MRPC, QQP: f1 + accuracy; STS-B: pearson + spearman; others
accuracy) are the names in each task's `TaskInfo.metrics` (plmjax.data.finetune.info); `get_metric(name)` finds
the function here.
"""

from __future__ import annotations

import collections
import difflib
import re
import string
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

MetricFn = Callable[[Sequence, Sequence], dict[str, float]]


def _scale(value) -> float:
    return float(100.0 * value)


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {"accuracy": _scale(sk_metrics.accuracy_score(targets, predictions))}


def f1(targets: Sequence, predictions: Sequence, *, average: str | None = None) -> dict[str, float]:
    """F1 of the positive class 1 for binary labels (GLUE MRPC, QQP), else the macro average over classes.

    average: force sklearn's `average` ('binary', 'macro', 'micro', ...); None picks binary when every target and
      prediction is 0 or 1.
    """
    if average is None:
        labels = set(np.unique(np.asarray(targets))) | set(np.unique(np.asarray(predictions)))
        average = "binary" if labels <= {0, 1} else "macro"
    return {"f1": _scale(sk_metrics.f1_score(targets, predictions, average=average))}


def f1_macro(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {"f1_macro": f1(targets, predictions, average="macro")["f1"]}


def matthews_corrcoef(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {"matthews_corrcoef": _scale(sk_metrics.matthews_corrcoef(targets, predictions))}


def pearson(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {"pearson": _scale(stats.pearsonr(np.asarray(targets, float), np.asarray(predictions, float))[0])}


def spearman(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {"spearman": _scale(stats.spearmanr(np.asarray(targets, float), np.asarray(predictions, float))[0])}


# ----------------------------------------------------------------------------------------------- span metrics

# CJK characters as the CMRC2018 script matches them, and its punctuation list (its two-character "……" entry can
# never equal one character, so it is left out).
_CJK = re.compile("[\u4e00-\u9fa5]")
_CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_SQUAD_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# The words of non-CJK text as nltk's word_tokenize gives them: numbers with their decimal point and thousands
# commas whole, other words, each remaining mark alone.
_WORD = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")


def _squad_tokens(text: str) -> list[str]:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, whitespace tokens."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def _cmrc_text(text: str) -> str:
    """CMRC2018's exact-match normalisation: lower case, stripped, its punctuation removed (spaces kept)."""
    return "".join(ch for ch in text.lower().strip() if ch not in _CMRC_PUNCTUATION)


def _cmrc_segments(text: str) -> list[str]:
    """CMRC2018's mixed segmentation without punctuation: each CJK character alone, other runs split into words.

    The official script splits non-CJK runs with nltk's word_tokenize; `_WORD` gives the same words for the
    numbers, Latin words and units found in CMRC answers (English contractions such as "n't" aside).
    """
    segments, run = [], []
    for ch in _cmrc_text(text):
        if _CJK.match(ch):
            segments += _WORD.findall("".join(run)) + [ch]
            run = []
        else:
            run.append(ch)
    return segments + _WORD.findall("".join(run))


def _overlap_f1(num_same: int, num_predicted: int, num_gold: int) -> float:
    if num_same == 0:
        return 0.0
    precision, recall = num_same / num_predicted, num_same / num_gold
    return 2 * precision * recall / (precision + recall)


def _squad_f1(gold: str, prediction: str) -> float:
    gold_tokens, predicted_tokens = _squad_tokens(gold), _squad_tokens(prediction)
    num_same = sum((collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)).values())
    return _overlap_f1(num_same, len(predicted_tokens), len(gold_tokens))


def _cmrc_f1(gold: str, prediction: str) -> float:
    gold_segments, predicted_segments = _cmrc_segments(gold), _cmrc_segments(prediction)
    # The longest common substring of the two segment lists (difflib without its junk heuristic).
    matcher = difflib.SequenceMatcher(None, gold_segments, predicted_segments, autojunk=False)
    num_same = matcher.find_longest_match(0, len(gold_segments), 0, len(predicted_segments)).size
    return _overlap_f1(num_same, len(predicted_segments), len(gold_segments))


def _answers(target) -> list[str]:
    answers = [target] if isinstance(target, str) else list(target)
    if not answers:
        raise ValueError("A span target has no gold answer; give each question at least one answer string.")
    return answers


def _language(targets: Sequence) -> str:
    return "zh" if any(_CJK.search(a) for t in targets for a in _answers(t)) else "en"


def _span_scores(targets, predictions, language: str) -> tuple[float, float]:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} span targets but {len(predictions)} predictions.")
    if language == "auto":
        language = _language(targets)
    if language not in ("en", "zh"):
        raise ValueError(f"Span metric language {language!r}: use 'en' (SQuAD v1.1), 'zh' (CMRC2018) or 'auto'.")
    em = f1_total = 0.0
    for target, prediction in zip(targets, predictions):
        answers = _answers(target)
        if language == "en":
            em += max(_squad_tokens(a) == _squad_tokens(prediction) for a in answers)
            f1_total += max(_squad_f1(a, prediction) for a in answers)
        else:
            em += max(_cmrc_text(a) == _cmrc_text(prediction) for a in answers)
            f1_total += max(_cmrc_f1(a, prediction) for a in answers)
    n = max(len(targets), 1)
    return _scale(em / n), _scale(f1_total / n)


def exact_match(targets: Sequence[str | Sequence[str]], predictions: Sequence[str], *,
                language: str = "auto") -> dict[str, float]:
    """Exact match of predicted answer strings (each target: one gold string or a list of them).

    language: 'en' (SQuAD v1.1), 'zh' (CMRC2018), or 'auto': 'zh' when any gold answer holds a CJK character.
    """
    return {"exact_match": _span_scores(targets, predictions, language)[0]}


def span_f1(targets: Sequence[str | Sequence[str]], predictions: Sequence[str], *,
            language: str = "auto") -> dict[str, float]:
    """Answer-string F1 (SQuAD v1.1 bag-of-words or CMRC2018 longest common segment run), best gold answer."""
    return {"span_f1": _span_scores(targets, predictions, language)[1]}


# ----------------------------------------------------------------------------------------------- registry

METRICS: dict[str, MetricFn] = {fn.__name__: fn for fn in (
    accuracy, f1, f1_macro, matthews_corrcoef, pearson, spearman, exact_match, span_f1)}


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; plmjax.evaluation.metrics has {sorted(METRICS)}.")
    return METRICS[name]


def compute_metrics(names: Iterable[str], targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """All the named metrics of one task on one split, in the order given."""
    results: dict[str, float] = {}
    for name in names:
        results.update(get_metric(name)(targets, predictions))
    return results
