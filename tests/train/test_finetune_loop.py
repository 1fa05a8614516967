"""The trainer fine-tunes: a tiny classifier initialized from a saved encoder learns a tiny in-memory seqio
classification task (loss falls, dev accuracy far above chance); with LoRA (`train.peft`) only the adapter and
the head change, every frozen encoder weight is bit-identical to the checkpoint's, and the adapter is saved."""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest
from flax import traverse_util

from plmjax import sharding
from plmjax import launch
from plmjax.train import optim
from tests.train import tiny_classification
from tests.train.finetune_checkpoint import save_random_encoder, tiny
from tests.train.saved_state import load_saved_state

TASK = tiny_classification.TASK
LENGTHS = {"inputs": 16}


@pytest.fixture(scope="module", autouse=True)
def tiny_task():
    tiny_classification.register()
    yield
    tiny_classification.remove()


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory):
    return save_random_encoder(tmp_path_factory.mktemp("pretrained"), seed=7)


def _train(model_dir, steps, checkpoint, **kwargs):
    return launch.train(
        str(model_dir), model_config=tiny(), architecture="encoder_classifier", objective="classification",
        task=TASK, task_feature_lengths=LENGTHS, batch_size=16, num_steps=steps,
        optimizer=optim.make_optimizer("adamw", learning_rate=kwargs.pop("learning_rate", 3e-3), warmup_ratio=0.1,
                                       total_steps=steps),
        mesh=sharding.create_mesh(devices=jax.devices()[:1]), log_every=5, eval_batches=None,
        checkpoint_every=steps, progress=False, init_checkpoint=checkpoint, **kwargs)


def _train_losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if row["split"] == "train"]


def test_tiny_classifier_fine_tunes_from_a_checkpoint(tmp_path, encoder_checkpoint, capsys):
    final = _train(tmp_path, 60, encoder_checkpoint[0])
    assert "freshly initialized: classifier" in capsys.readouterr().out
    losses = _train_losses(tmp_path)
    assert losses[0] > 0.6 and losses[-1] < 0.5 * losses[0], losses  # from ln 2 = 0.69 (chance)
    assert final["accuracy"] > 0.85, final  # the whole validation split (64 examples), chance is ~0.5
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "most_frequent_token_accuracy" not in summary


def test_lora_trains_only_its_parameters_and_saves_the_adapter(tmp_path, encoder_checkpoint):
    path, saved = encoder_checkpoint
    steps = 6
    _train(tmp_path, steps, path, peft="lora")
    state = load_saved_state(tmp_path, steps)
    params = state["params"]
    assert set(params) == {"base", "lora"} and set(params["base"]) == {"bert", "classifier"}
    bert = traverse_util.flatten_dict(params["base"]["bert"], sep="/")
    for name, value in traverse_util.flatten_dict(saved, sep="/").items():
        np.testing.assert_array_equal(np.asarray(bert[name]), value, err_msg=name)  # frozen: bit-identical
    lora = jax.tree.leaves(params["lora"])
    assert lora and any(np.abs(np.asarray(x)).max() > 0 for x in lora)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "adapter").is_dir() and 0 < summary["adapter_bytes"] < summary["full_bytes"] / 3
