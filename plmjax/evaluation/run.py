"""`evaluate_params`: predictions over a split, the task's official metrics, results and submission files.

The trainer calls it at the end of a fine-tuning run (and every `eval_every` steps), and `plmjax eval` on a
fine-tuning checkpoint calls it once per task and split.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from plmjax.evaluation import metrics as metrics_lib
from plmjax.evaluation import report
from plmjax.evaluation.predict import Predictions, predict


def score(task_info, predictions: Predictions) -> dict[str, float]:
    """The task's metrics (`TaskInfo.metrics`) on the labeled examples; {} when the split is unlabeled.

    Tagging is scored per word: every tagged word of every sentence is one prediction.
    """
    targets, predicted = predictions.labeled()
    if not targets:
        return {}
    if task_info.kind == "tagging":
        targets, predicted = np.concatenate(targets), np.concatenate(predicted)
    return metrics_lib.compute_metrics(task_info.metrics, targets, predicted)


def evaluate_params(params, run, task: str, split: str, *, batch_size: int = 32, out_dir: Optional[str] = None,
                    checkpoint: str = "", task_info=None, param_shardings=None) -> dict:
    """Predicts the whole split, scores it with the task's official metrics and optionally writes the files.

    Args:
      params, run: the parameters and plmjax.train.setup.RunSetup of a fine-tuning model.
      task, split: a registered fine-tuning task (it has a TaskInfo) and one of its splits.
      batch_size: global evaluation batch size (a multiple of the mesh's data-parallel devices).
      out_dir: when given, `results.md` / `results.json` there get this split's rows, and the task's submission
        file is written to `<out_dir>/submission/<split>/<TaskInfo.submission_name>`.
      checkpoint: the checkpoint path recorded in the results table.
      task_info: default `plmjax.data.finetune.info.get_task_info(task)`.
      param_shardings: default the trainer's shardings for `run`.

    Returns:
      {metric: score (0-100)} plus `num_examples` (every example of the split, counted once).
    """
    if task_info is None:
        from plmjax.data.finetune.info import get_task_info
        task_info = get_task_info(task)
    predictions = predict(params, run, task, split, batch_size, task_info=task_info,
                          param_shardings=param_shardings)
    scores = score(task_info, predictions)
    if out_dir and jax.process_index() == 0:
        report.write_results(out_dir, report.result_rows(task, split, scores, len(predictions), checkpoint))
        report.write_submission(os.path.join(out_dir, "submission", split), task_info, predictions)
    return {**scores, "num_examples": len(predictions)}
