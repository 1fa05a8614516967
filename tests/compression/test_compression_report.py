"""The compression table: official metric, retention, sizes and side-by-side throughput of saved models; the int8
post-training baseline evaluates as the quantized forward pass of the teacher's weights."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models, sharding
from plmjax.compression import quantize
from plmjax.evaluation import compression_report
from plmjax.train import saved_model
from plmjax.train.setup import setup
from tests.train import tiny_classification
from tests.train.finetune_checkpoint import tiny


@pytest.fixture(scope="module", autouse=True)
def tiny_task():
    tiny_classification.register()
    yield
    tiny_classification.remove()


def _save(path, config, seed):
    model = models.build_model("encoder_classifier", config, num_labels=2)
    params = jax.tree.map(np.asarray, nn.meta.unbox(model.init(jax.random.key(seed), np.ones((1, 8), np.int32))[
        "params"]))
    saved_model.save_model(str(path), "encoder_classifier", config, params,
                           metadata={"head_options": {"num_labels": 2}})
    return str(path), params


def test_table_rows_sizes_retention_and_the_int8_baseline(tmp_path):
    teacher, params = _save(tmp_path / "teacher", tiny(), 1)
    student, _ = _save(tmp_path / "student", tiny(num_encoder_layers=1), 2)
    sizes = compression_report.post_training_quantize(teacher, str(tmp_path / "int8"), "int8", activation_bits=8)
    assert sizes["packed_bytes"] < sizes["float32_bytes"]
    # a second report reuses the same baseline; another model's baseline in that directory is one clear error
    assert compression_report.post_training_quantize(teacher, str(tmp_path / "int8"), "int8", 8) == sizes
    with pytest.raises(ValueError, match="already holds another model"):
        compression_report.post_training_quantize(teacher, str(tmp_path / "int8"), "int8", None)
    rows = compression_report.report({"teacher": teacher, "student": student, "int8": str(tmp_path / "int8")},
                                     tiny_classification.TASK, sequence_length=16, batch_size=8, repeats=2, steps=1,
                                     eval_batch_size=16)
    by_name = {r["name"]: r for r in rows}
    assert by_name["teacher"]["retention"] == 1.0 and by_name["teacher"]["speedup"] == 1.0
    assert by_name["student"]["parameters"] < by_name["teacher"]["parameters"]
    assert by_name["int8"]["quantize"] == "int8" and by_name["int8"]["packed_bytes"] < by_name["teacher"][
        "checkpoint_bytes"]
    for r in rows:
        assert r["num_examples"] == 64 and 0 < r["examples_per_s"]["min"] <= r["examples_per_s"]["max"]
        assert r["retention"] == pytest.approx(r["accuracy"] / by_name["teacher"]["accuracy"])
    # the baseline's accuracy is the quantized forward pass of the teacher's weights
    from plmjax import evaluation
    run = setup(tiny(), "encoder_classifier", "classification", {"inputs": 16},
                sharding.create_mesh(devices=jax.devices()[:1]), task=tiny_classification.TASK)
    import dataclasses
    run = dataclasses.replace(run, module=quantize.quantized_model(run.module, "int8", activation_bits=8))
    expected = evaluation.evaluate_params(params, run, tiny_classification.TASK, "validation", batch_size=16)
    assert by_name["int8"]["accuracy"] == expected["accuracy"]
    assert "| int8 |" in compression_report.markdown(rows)
