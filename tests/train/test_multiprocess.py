"""Two processes on localhost (jax.distributed over gloo, one CPU device each) train exactly like one process
with two devices: the same losses at every step and the same final parameters.

With input_sharding='slice' every process reads the global batch, so the one-process run is the plain run. With
the default 'shard' each process reads its own shard of the data (seqio.ShardInfo), so the global batch is the
concatenation of the two shards' batches in process order: the one-process run it equals reads exactly those
(both shards, concatenated)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.train.saved_state import load_saved_state

STEPS = 6


def _cmd(model_dir, *extra, sharding="slice", program=("-m", "plmjax.cli")):
    return [sys.executable, *program, "train", "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin",
            f"--model_dir={model_dir}", f"--gin_param=NUM_STEPS = {STEPS}", "--gin_param=WARMUP_STEPS = 2",
            f"--gin_param=train.input_sharding = '{sharding}'", "--gin_param=train.log_every = 1",
            f"--gin_param=train.checkpoint_every = {STEPS}", "--gin_param=train.progress = False",
            "--gin_param=train.eval_batches = 2", *extra]


def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if row["split"] == "train"]


def _params(model_dir):
    return jax.tree.leaves(load_saved_state(model_dir, STEPS)["params"])


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = subprocess.run(_cmd(one), cwd=REPO_ROOT, env=_env(2), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen(_cmd(two, f"--coordinator_address={address}", "--num_processes=2",
                                   f"--process_id={i}"), cwd=REPO_ROOT, env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "Summary" in outputs[0][0] and "Summary" not in outputs[1][0]  # process 0 reports

    losses_one, losses_two = _losses(one), _losses(two)
    assert len(losses_one) == STEPS
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-6)
    for a, b in zip(_params(one), _params(two)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


# One process reading both shards of the training data and concatenating their batches (shard 0's rows first).
_BOTH_SHARDS = """
import sys
import seqio
import tensorflow as tf
from plmjax import cli
from plmjax.data import pipeline

get_dataset = pipeline.get_dataset

def both_shards(*args, split, shard_info=None, **kwargs):
    if split != "train":
        return get_dataset(*args, split=split, shard_info=shard_info, **kwargs)
    assert shard_info is None  # one process
    parts = [get_dataset(*args, split=split, shard_info=seqio.ShardInfo(i, 2), **kwargs) for i in range(2)]
    return tf.data.Dataset.zip(tuple(parts)).map(lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a})

pipeline.get_dataset = both_shards
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_reading_their_own_shards_train_like_one_reading_both(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = subprocess.run(_cmd(one, sharding="shard", program=("-c", textwrap.dedent(_BOTH_SHARDS))),
                            cwd=REPO_ROOT, env=_env(2), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen(_cmd(two, f"--coordinator_address={address}", "--num_processes=2",
                                   f"--process_id={i}", sharding="shard"), cwd=REPO_ROOT, env=_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    losses_one, losses_two = _losses(one), _losses(two)
    assert len(losses_one) == STEPS
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-6)
    for a, b in zip(_params(one), _params(two)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    # Each process saved its own input position inside the same atomic step.
    assert sorted(os.listdir(two / "checkpoints" / str(STEPS) / "data")) == [
        "commit_success.txt", "process_0-of-2.bin", "process_1-of-2.bin"]
