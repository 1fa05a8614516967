"""`train.pack = True` end to end: the loop reads seqio-packed batches (segment ids and positions reach the
jitted step through the batch sharding) and reports `padding_fraction`."""
import json

import jax
import numpy as np
import pytest

import plmjax.tasks  # noqa: F401
from plmjax import sharding
from plmjax.data import pipeline
from plmjax.train import loop, optim
from tests.train import families


@pytest.mark.slow
@pytest.mark.parametrize("family,task,lengths", [
    ("decoder", "pydoc_lm", {"targets": 32}),
    ("encoder_decoder", "pydoc_span_corruption", {"inputs": 32, "targets": 8})])
def test_packed_run_trains_and_reports_padding(family, task, lengths, tmp_path):
    config = families.tiny_config(family, vocab_size=pipeline.vocab_size(task), dropout_rate=0.0)
    loop.train(str(tmp_path), model_config=config, architecture=family, objective=families.OBJECTIVE[family],
               task=task, task_feature_lengths=lengths, batch_size=8, num_steps=2, pack=True,
               optimizer=optim.make_optimizer("adamw", learning_rate=1e-3, warmup_steps=1, total_steps=2),
               mesh=sharding.create_mesh(devices=jax.devices()[:2]), log_every=1, eval_batches=1,
               checkpoint_every=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert len(train) == 2
    for row in train:
        assert np.isfinite(row["loss"]) and 0.0 <= row["padding_fraction"] < 0.5


def test_pack_refused_for_mlm_with_the_fix(tmp_path):
    config = families.tiny_config("encoder", vocab_size=pipeline.vocab_size("pydoc_mlm"))
    with pytest.raises(ValueError, match="train.pack = False"):
        loop.train(str(tmp_path), model_config=config, architecture="encoder", objective="mlm", task="pydoc_mlm",
                   task_feature_lengths={"inputs": 16, "targets": 16}, batch_size=8, num_steps=1, pack=True,
                   mesh=sharding.create_mesh(devices=jax.devices()[:1]), progress=False)
