"""Each tiny recipe under gin_configs/experiments/ trains on CPU and its loss falls; a decoder's perplexity on
WikiText-2 test is what `plmjax eval` reports (checked against a numpy computation from the checkpoint)."""
import json
import math
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import optax
import pytest

import plmjax.tasks  # noqa: F401
from plmjax import sharding
from plmjax.data import corpora, feature_converters, pipeline
from plmjax.models import build_model
from plmjax.train import checkpoint as checkpoint_lib
from plmjax import launch
from plmjax.train import state as state_lib
from tests.conftest import REPO_ROOT

# recipe -> shared data it needs (None: the embedded corpus)
RECIPES = {
    "tiny_bert_nsp": None, "tiny_roberta_mlm": None, "tiny_electra": None, "tiny_pangu_lm": None,
    "tiny_bart_denoising": None, "tiny_bert_pmlm": None, "tiny_spanbert": None, "tiny_gpt_prefix_lm": None,
    "tiny_nezha_wwm": "fewclue/tnews/unlabeled.json", "tiny_bert_wwm_mixture": "fewclue/tnews/unlabeled.json",
}
STEPS = 20


@pytest.fixture
def gin_scope():
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO_ROOT))
    yield
    gin.clear_config()


def train_losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if row["split"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tiny_recipe_trains_and_its_loss_falls(name, tmp_path, gin_scope):
    if RECIPES[name] and not (corpora.shared_data_dir() / RECIPES[name]).is_file():
        pytest.skip(f"{RECIPES[name]} not found under {corpora.shared_data_dir()} (set PLMJAX_SHARED_DATA)")
    gin.parse_config_files_and_bindings(
        [str(REPO_ROOT / f"gin_configs/experiments/{name}.gin")],
        [f"NUM_STEPS = {STEPS}", "train.log_every = 5", f"train.checkpoint_every = {STEPS}", "train.progress = False",
         "train.eval_batches = 2"])
    final = launch.train(str(tmp_path), mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    losses = train_losses(tmp_path)
    assert len(losses) == STEPS // 5 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0] - 0.25, losses  # averaged over 5 steps each: a real fall, not noise
    assert math.isfinite(final["loss"])


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "plmjax.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_plmjax_eval_reports_decoder_perplexity_on_wikitext2_test(tmp_path, gin_scope):
    if not (corpora.shared_data_dir() / "wikitext-2" / "test.txt").is_file():
        pytest.skip(f"WikiText-2 not found under {corpora.shared_data_dir()} (set PLMJAX_SHARED_DATA)")
    params = ["TASK = 'wikitext2_lm'", "BATCH_SIZE = 8"]
    gin.parse_config_files_and_bindings([str(REPO_ROOT / "gin_configs/experiments/tiny_gpt_lm.gin")],
                                        params + ["NUM_STEPS = 30", "train.progress = False", "train.eval_batches = 2"])
    launch.train(str(tmp_path), mesh=sharding.create_mesh(devices=jax.devices()[:1]))
    config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    evaluated = _cli("eval", "--gin_file=gin_configs/experiments/tiny_gpt_lm.gin", f"--checkpoint={tmp_path}",
                     "--gin_param=evaluate.eval_batches = 4", *(f"--gin_param={p}" for p in params))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout[evaluated.stdout.rindex("{\n"):])
    assert report["split"] == "validation"  # WikiText-2's test.txt (tasks/pretraining.py)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]), rel=1e-9)
    assert 1.0 < report["perplexity"] < 4096 / 4  # far below the uniform model's 4096

    # The same number from the checkpoint's parameters, the same 4 batches and numpy's log-softmax.
    lengths = {"targets": 32}
    module = build_model("decoder", config)
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    abstract, _ = state_lib.state_shardings(module, optax.identity(), "decoder", lengths, mesh)
    restored, _ = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints")).restore(
        abstract_state={"params": abstract.params}, partial=True)
    ds = pipeline.get_dataset("wikitext2_lm", task_feature_lengths=lengths, split="validation", batch_size=8,
                              feature_converter=feature_converters.make_feature_converter("decoder"), shuffle=False,
                              repeat=False)
    nll = count = 0.0
    for batch in ds.take(4).as_numpy_iterator():
        logits = np.asarray(module.apply({"params": restored["params"]}, batch["decoder_input_tokens"])["logits"],
                            np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        picked = np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
        nll -= float(np.sum(picked * batch["decoder_loss_weights"]))
        count += float(np.sum(batch["decoder_loss_weights"]))
    assert report["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
