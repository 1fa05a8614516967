"""metrics.py: (total, count) reduction, the JSON-lines and TensorBoard writers, the bar and the loss plot."""

import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from plmjax.train import metrics as metrics_lib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_reduction_weights_batches_by_their_counts():
    # Two batches: mean loss 2.0 over 3 tokens and 5.0 over 1 token. The token mean is (6 + 5) / 4 = 2.75,
    # not the mean of batch means (3.5).
    a = {"loss": (jnp.float32(6.0), jnp.float32(3.0)), "accuracy": (jnp.float32(2.0), jnp.float32(3.0))}
    b = {"loss": (jnp.float32(5.0), jnp.float32(1.0)), "accuracy": (jnp.float32(0.0), jnp.float32(1.0))}
    reduced = metrics_lib.reduce_metrics(metrics_lib.add_metrics(a, b))
    assert reduced == {"loss": pytest.approx(2.75), "accuracy": pytest.approx(0.5)}
    assert all(type(v) is float for v in reduced.values())


def test_reduction_of_empty_count_is_nan_and_names_must_match():
    assert math.isnan(metrics_lib.reduce_metrics({"loss": (jnp.float32(0.0), jnp.float32(0.0))})["loss"])
    with pytest.raises(ValueError, match="different names"):
        metrics_lib.add_metrics({"loss": (1.0, 1.0)}, {"acc": (1.0, 1.0)})


def test_jsonl_records_and_resume_keeps_the_last_record(tmp_path):
    with metrics_lib.MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(10, "train", {"loss": jnp.float32(2.5), "tokens_per_second": 1234.5})
        writer.write(10, "validation", {"loss": np.float32(3.0), "most_frequent_token": np.int64(7)})
    with metrics_lib.MetricsWriter(str(tmp_path), enabled=True) as writer:  # a resumed run appends
        writer.write(10, "train", {"loss": 2.25})
        writer.write(20, "train", {"loss": 2.0})
    lines = [json.loads(line) for line in open(writer.jsonl_path)]
    assert lines == [
        {"step": 10, "split": "train", "loss": 2.5, "tokens_per_second": 1234.5},
        {"step": 10, "split": "validation", "loss": 3.0, "most_frequent_token": 7},
        {"step": 10, "split": "train", "loss": 2.25},
        {"step": 20, "split": "train", "loss": 2.0},
    ]
    assert metrics_lib.read_metrics(writer.jsonl_path) == [
        {"step": 10, "split": "train", "loss": 2.25},
        {"step": 10, "split": "validation", "loss": 3.0, "most_frequent_token": 7},
        {"step": 20, "split": "train", "loss": 2.0},
    ]


def test_writer_is_a_no_op_when_disabled(tmp_path):
    writer = metrics_lib.MetricsWriter(str(tmp_path / "run"), enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_writer_rejects_non_scalars(tmp_path):
    with metrics_lib.MetricsWriter(str(tmp_path), enabled=True) as writer:
        with pytest.raises(TypeError, match="'logits' must be a numeric scalar"):
            writer.write(1, "train", {"logits": np.zeros(3)})


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    with metrics_lib.MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(5, "train", {"loss": 1.5})
        writer.write(10, "train", {"loss": 1.25})
        writer.write(10, "validation", {"loss": 1.75})
    for split, expected in (("train", [(5, 1.5), (10, 1.25)]), ("validation", [(10, 1.75)])):
        logdir = os.path.join(writer.tensorboard_dir, split)
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(logdir))
        acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
        acc.Reload()
        events = acc.Tensors("loss")  # TF2 summaries store scalars as tensors
        got = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events]
        assert got == expected


def test_progress_bar_shows_step_loss_and_throughput():
    out = io.StringIO()
    bar = metrics_lib.ProgressBar(total=100, initial=10, file=out)
    bar.update(20, {"loss": 2.3456, "tokens_per_second": 12345.0})
    bar.update(30, num_tokens=0)
    bar.close()
    text = out.getvalue()
    assert "30/100" in text and "loss=2.3456" in text and "tok/s=12,345" in text


def test_loss_curve_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with metrics_lib.MetricsWriter(str(tmp_path), enabled=True) as writer:
        for step in range(1, 11):
            writer.write(step, "train", {"loss": 5.0 / step})
        writer.write(10, "validation", {"loss": 0.8})
    png = metrics_lib.plot_loss_curve(str(path), str(tmp_path / "plots" / "loss.png"))
    data = open(png, "rb").read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (700, 450)


def test_loss_curve_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="No metrics file"):
        metrics_lib.plot_loss_curve(str(tmp_path / "missing.jsonl"), str(tmp_path / "x.png"))
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split"\n')
    with pytest.raises(ValueError, match="line 2"):
        metrics_lib.plot_loss_curve(str(bad), str(tmp_path / "x.png"))
    bad.write_text('{"step": 1, "split": "train", "accuracy": 1.0}\n')
    with pytest.raises(ValueError, match="no 'loss' values"):
        metrics_lib.plot_loss_curve(str(bad), str(tmp_path / "x.png"))


def test_padding_fraction_counts_by_hand():
    """Zeros of encoder_input_tokens and decoder_target_tokens are padding; decoder_input_tokens (0 first) and
    other features are not counted. Hand count: 3 of 8 encoder positions, 5 of 6 decoder targets."""
    batch = {"encoder_input_tokens": np.array([[5, 6, 0, 0], [7, 8, 9, 0]]),
             "decoder_target_tokens": np.array([[4, 0, 0], [0, 0, 0]]),
             "decoder_input_tokens": np.array([[0, 4, 0], [0, 0, 0]]),
             "decoder_loss_weights": np.zeros((2, 3), np.float32)}
    assert metrics_lib.padding_counts(batch) == (8.0, 14.0)
    step = {"loss": (np.float32(2.0), np.float32(1.0))}
    totals = metrics_lib.accumulate(None, step, batch)
    totals = metrics_lib.accumulate(totals, step, {"decoder_target_tokens": np.array([[1, 2, 3, 0]])})
    reduced = metrics_lib.reduce_metrics(totals)
    assert reduced["padding_fraction"] == pytest.approx((8 + 1) / (14 + 4), rel=1e-7)
    assert reduced["loss"] == 2.0
