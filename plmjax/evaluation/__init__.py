"""Fine-tuning evaluation: official metrics (`metrics`), predictions over a split (`predict.predict`), results
tables and submission files (`report`), and `evaluate_params` (`run`), which ties them together."""

from plmjax.evaluation.metrics import METRICS, compute_metrics, get_metric
from plmjax.evaluation.predict import Predictions
from plmjax.evaluation.run import evaluate_params, score

__all__ = ["METRICS", "Predictions", "compute_metrics", "evaluate_params", "get_metric", "score"]
