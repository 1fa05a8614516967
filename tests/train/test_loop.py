"""The trainer end to end on real seqio tasks: each family's loss falls; a killed run resumes bit-exactly."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import plmjax.tasks  # noqa: F401
from plmjax import sharding
from plmjax.data import pipeline
from plmjax.train import adapter as adapter_lib
from plmjax.train import loop, optim
from tests.conftest import REPO_ROOT
from tests.train.saved_state import load_saved_state
from tests.train import families

TASKS = {"encoder": "pydoc_mlm", "decoder": "pydoc_lm", "encoder_decoder": "pydoc_span_corruption"}
LENGTHS = {"encoder": {"inputs": 32, "targets": 32}, "decoder": {"targets": 32},
           "encoder_decoder": {"inputs": 32, "targets": 8}}


def _train_losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [row["loss"] for row in rows if row["split"] == "train"]


@pytest.mark.parametrize("family", families.FAMILIES)
def test_tiny_model_trains_and_loss_falls(family, tmp_path):
    task = TASKS[family]
    config = families.tiny_config(family, vocab_size=pipeline.vocab_size(task), dropout_rate=0.0)
    steps = 60
    final = loop.train(
        str(tmp_path), model_config=config, architecture=family, objective=families.OBJECTIVE[family], task=task,
        task_feature_lengths=LENGTHS[family], batch_size=16, num_steps=steps,
        optimizer=optim.make_optimizer("adamw", learning_rate=3e-3, warmup_steps=5, total_steps=steps),
        mesh=sharding.create_mesh(devices=jax.devices()[:1]), log_every=5, eval_batches=2,
        checkpoint_every=steps, progress=False)
    losses = _train_losses(tmp_path)
    assert len(losses) == steps // 5
    # From about ln(4096) = 8.3 nats (uniform) down by more than a nat: the model learns the corpus's tokens.
    assert losses[0] > 7.5 and losses[-1] < losses[0] - 1.0, losses
    assert np.isfinite(final["loss"]) and 0.0 <= final["accuracy"] <= 1.0
    for name in ("loss_curve.png", "summary.json", "config.gin", "checkpoints"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    examples = json.loads((tmp_path / "summary.json").read_text()).get("fill_mask_examples")
    if family != "encoder":  # the summary's fill-mask examples are an MLM encoder's
        assert examples is None
        return
    assert len(examples) == 3
    for example in examples:
        probs = [q for _, q in example["fills"]]
        assert example["text"].count("[MASK]") == 1 and example["answer"].isalpha()
        assert len(probs) == 3 and 1 > probs[0] >= probs[1] >= probs[2] > 0


def _cli_train(model_dir, steps, crash_after=None, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    if crash_after is not None:
        env["PLMJAX_TEST_CRASH_AFTER_STEP"] = str(crash_after)
    cmd = [sys.executable, "-m", "plmjax.cli", "train", "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin",
           f"--model_dir={model_dir}", f"--gin_param=NUM_STEPS = {steps}", "--gin_param=train.checkpoint_every = 4",
           "--gin_param=train.log_every = 2", "--gin_param=train.progress = False",
           "--gin_param=train.keep_checkpoints = 10", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_run_resumes_bit_exactly(tmp_path):
    """Kill -9 a run right after step 10 (checkpoints every 4 steps, saved asynchronously), resume, and compare
    with a run that never stopped: every parameter and optimizer moment bit-identical."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = _cli_train(straight, 16)
    assert result.returncode == 0, result.stderr[-3000:]
    result = _cli_train(killed, 16, crash_after=10)
    assert result.returncode == -9, (result.returncode, result.stderr[-3000:])
    assert not (killed / "summary.json").exists()
    result = _cli_train(killed, 16)
    assert result.returncode == 0, result.stderr[-3000:]
    # Step 8's asynchronous save may still have been in flight when the process died: then its half-written
    # directory is ignored and the run resumes from step 4. Either way it continues from a finished checkpoint.
    resumed = re.search(r"Resumed from .* at step (\d+) \(batch (\d+)\)", result.stdout)
    assert resumed and resumed.group(1) in ("4", "8") and resumed.group(1) == resumed.group(2), result.stdout[-2000:]

    a = load_saved_state(straight, 16)
    b = load_saved_state(killed, 16)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_killed_peft_run_resumes_to_the_same_adapter(tmp_path):
    """A LoRA run killed after step 10 and resumed writes the adapter the uninterrupted run writes, bit for bit."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    lora = "--gin_param=train.peft = 'lora'"
    result = _cli_train(straight, 12, None, lora)
    assert result.returncode == 0, result.stderr[-3000:]
    result = _cli_train(killed, 12, 10, lora)
    assert result.returncode == -9, (result.returncode, result.stderr[-3000:])
    assert not (killed / "adapter").exists()
    result = _cli_train(killed, 12, None, lora)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"Resumed from .* at step (4|8) \(batch \1\)", result.stdout), result.stdout[-2000:]
    method_a, a = adapter_lib.load_adapter(straight / "adapter")
    method_b, b = adapter_lib.load_adapter(killed / "adapter")
    assert method_a == method_b == "lora" and "lora" in a
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 2
    for x, y in zip(leaves_a, leaves_b):
        assert x.tobytes() == y.tobytes()
    summary = json.loads((killed / "summary.json").read_text())
    assert 0 < summary["adapter_parameters"] < summary["full_parameters"]
