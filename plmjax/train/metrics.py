"""Metrics: `(total, count)` reduction, writers (JSON lines + TensorBoard), a progress bar and the loss plot.

Objectives return metrics as `{name: (total, count)}` pairs of float32 scalars (docs/interfaces.md); pairs add
up over micro-batches, steps, devices and eval batches with `add_metrics`, and `reduce_metrics` divides once
at the end, so a mean over batches with different numbers of tokens is exact.

`MetricsWriter(model_dir)` writes, on process 0 only:
  * `model_dir/metrics.jsonl`: one JSON object per `write` call, `{"step": 100, "split": "train", "loss": ...}`
    (appended to, so a resumed run continues the file; readers keep the last record per (split, step));
  * TensorBoard event files under `model_dir/tensorboard/<split>/` (clu's SummaryWriter), one run per split so
    TensorBoard overlays the train and eval curves of a metric.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def add_metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sums two `{name: (total, count)}` dicts pairwise; both must have the same names."""
    if set(a) != set(b):
        raise ValueError(f"Cannot add metrics with different names: {sorted(a)} vs {sorted(b)}.")
    return {name: (a[name][0] + b[name][0], a[name][1] + b[name][1]) for name in a}


# The token features whose zeros (seqio's padding id) are padding: decoder inputs start with 0, so the targets.
PADDING_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")


def padding_counts(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The `padding_fraction` pair of a host batch: (padding positions, positions) over its PADDING_FEATURES."""
    rows = [np.asarray(batch[name]) for name in PADDING_FEATURES if name in batch]
    padding = sum(int(np.sum(row == 0)) for row in rows)
    return np.float32(padding), np.float32(sum(row.size for row in rows))


def accumulate(totals: Optional[Mapping[str, Any]], step_metrics: Mapping[str, Any],
               batch: Mapping[str, Any]) -> dict[str, Any]:
    """`totals` (None at the start of a log interval) plus a train step's metrics and `padding_fraction`, the
    fraction of padded token positions in its batch (counted on the host, over this host's rows; packing
    lowers it)."""
    step_metrics = dict(step_metrics, padding_fraction=padding_counts(batch))
    return step_metrics if totals is None else add_metrics(totals, step_metrics)


def reduce_metrics(totals: Mapping[str, Any]) -> dict[str, float]:
    """`{name: (total, count)}` -> `{name: total / count}` as Python floats (NaN where count is 0)."""
    host = jax.device_get(dict(totals))
    reduced = {}
    for name, (total, count) in host.items():
        total, count = float(np.asarray(total)), float(np.asarray(count))
        reduced[name] = total / count if count != 0 else math.nan
    return reduced


def _scalar(name: str, value: Any) -> int | float:
    value = jax.device_get(value)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    array = np.asarray(value)
    if array.shape != () or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"Metric {name!r} must be a numeric scalar, got {type(value).__name__} "
                        f"with shape {array.shape} and dtype {array.dtype}.")
    return int(array) if np.issubdtype(array.dtype, np.integer) else float(array)


class MetricsWriter:
    """Writes scalar metrics per step to `metrics.jsonl` and TensorBoard, on process 0 only.

    On other processes every method is a no-op, so the loop calls it unconditionally.
    """

    def __init__(self, model_dir: str, *, enabled: Optional[bool] = None):
        self.model_dir = os.fspath(model_dir)
        self.jsonl_path = os.path.join(self.model_dir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(self.model_dir, TENSORBOARD_DIR)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._summary_writers = {}
        if self.enabled:
            os.makedirs(self.model_dir, exist_ok=True)
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        """Writes `scalars` (name -> numeric scalar; jax/numpy scalars are fetched) at `step` of `split`."""
        if not self.enabled:
            return
        if self._jsonl is None:
            raise ValueError(f"MetricsWriter for {self.model_dir} is closed.")
        values = {name: _scalar(name, value) for name, value in scalars.items()}
        for reserved in ("step", "split"):
            if reserved in values:
                raise ValueError(f"A metric may not be named {reserved!r}: it is a field of every record.")
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        self._jsonl.flush()  # a crash loses no written line
        self._summary_writer(split).write_scalars(int(step), values)

    def _summary_writer(self, split: str):
        if split not in self._summary_writers:
            from clu import metric_writers  # imports TensorFlow: only when a writer is used
            self._summary_writers[split] = metric_writers.SummaryWriter(os.path.join(self.tensorboard_dir, split))
        return self._summary_writers[split]

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        for writer in self._summary_writers.values():
            writer.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for writer in self._summary_writers.values():
            writer.close()
        self._summary_writers = {}

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressBar:
    """A tqdm bar over training steps showing the step, the loss and tokens/s (on process 0 only).

    `update(step, metrics)` moves the bar to `step` (the number of steps done); `metrics` may hold 'loss' and
    'tokens_per_second' (shown as tok/s), e.g. the reduced metrics of the last logging interval. Without
    'tokens_per_second', tok/s is computed from `num_tokens` (tokens processed since the previous update).
    """

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = "train", file=None):
        self.enabled = bool(enabled) and jax.process_index() == 0
        self._last_time = time.perf_counter()
        self._bar = None
        if self.enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                             file=file if file is not None else sys.stderr)

    def update(self, step: int, metrics: Optional[Mapping[str, float]] = None, *, num_tokens: int = 0) -> None:
        if self._bar is None:
            return
        now = time.perf_counter()
        postfix = {}
        metrics = dict(metrics or {})
        if "loss" in metrics:
            postfix["loss"] = f"{float(metrics['loss']):.4f}"
        rate = metrics.get("tokens_per_second")
        if rate is None and num_tokens:
            rate = num_tokens / max(now - self._last_time, 1e-9)
        if rate is not None:
            postfix["tok/s"] = f"{float(rate):,.0f}"
        self._last_time = now
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(int(step) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_metrics(metrics_jsonl_path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; for a (split, step) written more than once (a resumed run), the last."""
    if not os.path.exists(metrics_jsonl_path):
        raise FileNotFoundError(f"No metrics file at {metrics_jsonl_path}: pass the metrics.jsonl a training run "
                                "wrote into its model dir.")
    records = {}
    with open(metrics_jsonl_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (str(record["split"]), int(record["step"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{metrics_jsonl_path}, line {number}: not a metrics record with 'step' and "
                                 f"'split' ({e}): fix or delete that line.") from None
            records[key] = record
    return [records[key] for key in sorted(records, key=lambda k: (k[1], k[0]))]


def plot_loss_curve(metrics_jsonl_path: str, png_path: str, *, metric: str = "loss",
                    title: Optional[str] = None) -> str:
    """Plots `metric` against step for every split (train, eval) found in a metrics.jsonl file into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in read_metrics(metrics_jsonl_path):
        if metric in record and record[metric] is not None:
            steps, values = curves.setdefault(record["split"], ([], []))
            steps.append(record["step"])
            values.append(float(record[metric]))
    if not curves:
        raise ValueError(f"{metrics_jsonl_path} has no {metric!r} values to plot.")

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for split in sorted(curves, key=lambda s: (s != "train", s)):
        steps, values = curves[split]
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=split)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(title or f"{metric} ({os.path.basename(os.path.dirname(os.path.abspath(metrics_jsonl_path)))})")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    figure.savefig(png_path, format="png")
    return png_path
