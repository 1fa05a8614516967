"""Pre-training evaluation (`train.evaluate`, each family) on a split of 13 examples in batches of 4 over a 2-device
data-parallel mesh: the whole split (last batch 1 real row + 3 padding rows) gives the metrics of a brute-force
per-example computation in float64, and its first 3 (full) batches give the old path's numbers (the pipeline's
batches, last partial batch dropped). Two processes with one device each give one process's numbers."""

import itertools
import json
import math
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from plmjax import sharding
from plmjax.data import batching, feature_converters, pipeline
from plmjax.data.masking import MASKED_LM_WEIGHTS
from plmjax.train import evaluate, metrics as metrics_lib, setup, state as state_lib, step as step_lib
from tests.conftest import REPO_ROOT
from tests.train import families

NUM_EXAMPLES, BATCH, LENGTH = 13, 4, 16


def _examples(family, rng):
    examples = []
    for _ in range(NUM_EXAMPLES):
        n = int(rng.integers(5, LENGTH + 1))
        targets = rng.integers(3, families.VOCAB, n).astype(np.int32)
        if family == "decoder":
            examples.append({"targets": targets})
        else:
            weights = (rng.random(n) < 0.4).astype(np.int32)
            weights[0] = 1  # every example has a predicted position
            examples.append({"inputs": np.where(weights > 0, 2, targets).astype(np.int32), "targets": targets,
                             MASKED_LM_WEIGHTS: weights})
    return examples


def _register(name, family, examples):
    signature = {k: tf.TensorSpec([None], tf.int32) for k in examples[0]}
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    feature = seqio.Feature(seqio.PassThroughVocabulary(families.VOCAB), add_eos=False, dtype=tf.int32)
    names = ("targets",) if family == "decoder" else ("inputs", "targets")
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_generator(lambda: iter(examples),
                                                                               output_signature=signature),
        splits=["validation"]), output_features={n: feature for n in names})


def _run(family):
    lengths = {"targets": LENGTH} if family == "decoder" else {"inputs": LENGTH, "targets": LENGTH}
    mesh = sharding.create_mesh(devices=jax.devices()[:2])  # 2 rows of data parallelism
    run = setup.setup(families.tiny_config(family, dropout_rate=0.0), family, families.OBJECTIVE[family], lengths,
                      mesh)
    state, shardings = state_lib.create_train_state(run.module, optax.identity(), family, lengths, mesh, seed=3)
    return run, state.params, shardings.params


def _log_softmax64(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _brute_force(run, params, task, num_examples):
    """Loss and accuracy summed example by example (each alone, unpadded, no mesh) in float64."""
    converter = feature_converters.make_feature_converter(run.objective.feature_converter)
    converted, _ = batching.read_split(task, "validation", run.task_feature_lengths, converter)
    host = jax.device_get(params)
    forward = jax.jit(lambda p, batch: run.module.apply({"params": p}, **run.objective.model_inputs(batch),
                                                        deterministic=True)["logits"])
    loss = hits = weight = 0.0
    for example in itertools.islice(converted.as_numpy_iterator(), num_examples):
        batch = {k: v[None] for k, v in example.items()}  # [1, length]
        logits = np.asarray(forward(host, batch))  # [1, length, vocab]
        prefix = "decoder" if "decoder_target_tokens" in batch else "encoder"
        targets, weights = batch[f"{prefix}_target_tokens"][0], batch[f"{prefix}_loss_weights"][0].astype(np.float64)
        log_probs = _log_softmax64(logits[0])  # [length, vocab]
        ranked = np.sort(np.asarray(logits[0], np.float64), -1)
        # No near-tie (logits ~0.1, float32 rounding of batched vs single rows ~1e-7): the argmax is robust.
        assert np.all((ranked[:, -1] - ranked[:, -2])[weights > 0] > 1e-5)
        loss += float(np.sum(-log_probs[np.arange(len(targets)), targets] * weights))
        hits += float(np.sum((np.argmax(logits[0], -1) == targets) * weights))
        weight += float(np.sum(weights))
    return {"loss": loss / weight, "accuracy": hits / weight, "weight": weight}


def _old_path(run, param_shardings, params, task, batch_size):
    """The evaluation before plmjax.data.batching: the pipeline's batches, the last partial batch dropped."""
    step = step_lib.jit_eval_step(run.module, run.objective, run.mesh, param_shardings, rules=run.rules)
    dataset = pipeline.get_dataset(
        task, task_feature_lengths=run.task_feature_lengths,
        feature_converter=feature_converters.make_feature_converter(run.objective.feature_converter),
        split="validation", batch_size=batch_size, shuffle=False, seed=0, shard_info=None, repeat=False)
    totals, count = None, 0
    for batch in dataset.as_numpy_iterator():
        metrics = step(params, sharding.shard_batch(batch, run.mesh, run.rules))
        totals = metrics if totals is None else metrics_lib.add_metrics(totals, metrics)
        count += 1
    return metrics_lib.reduce_metrics(totals), count


@pytest.mark.parametrize("family", families.FAMILIES)
def test_whole_split_counts_every_example_once(family):
    task = f"eval_test_pretrain_{family}"
    _register(task, family, _examples(family, np.random.default_rng(0)))
    run, params, param_shardings = _run(family)
    eval_fn = evaluate.make_eval_fn(run, param_shardings, batch_size=BATCH)

    whole = eval_fn(params, task, "validation", None)
    expected = _brute_force(run, params, task, NUM_EXAMPLES)
    np.testing.assert_allclose(whole["loss"], expected["loss"], rtol=1e-5)
    assert whole["accuracy"] == pytest.approx(expected["accuracy"], rel=1e-6)
    full_batches = NUM_EXAMPLES // BATCH
    # num_tokens is (weight, 1) per batch: the 4 batches (the padded one included) hold exactly the split's weight.
    assert whole["num_tokens"] * (full_batches + 1) == pytest.approx(expected["weight"], rel=1e-6)
    if family == "decoder":
        assert whole["perplexity"] == pytest.approx(math.exp(whole["loss"]), rel=1e-12)

    old, old_batches = _old_path(run, param_shardings, params, task, BATCH)
    assert old_batches == full_batches
    first = eval_fn(params, task, "validation", full_batches)
    for name in old:
        np.testing.assert_allclose(first[name], old[name], rtol=1e-6, err_msg=name)
    expected_first = _brute_force(run, params, task, full_batches * BATCH)
    np.testing.assert_allclose(first["loss"], expected_first["loss"], rtol=1e-5)
    assert first["accuracy"] == pytest.approx(expected_first["accuracy"], rel=1e-6)


def test_most_frequent_token_baseline_counts_every_target_once():
    task = "eval_test_pretrain_baseline"
    examples = _examples("decoder", np.random.default_rng(1))
    for example in examples:
        example["targets"][:3] = 7  # one most frequent token, no tie
    _register(task, "decoder", examples)
    run, _, _ = _run("decoder")
    targets = np.concatenate([ex["targets"] for ex in examples])
    counts = np.bincount(targets)
    token = counts.argmax()
    assert np.sum(counts == counts[token]) == 1
    result = evaluate.most_frequent_token_baseline(task, run, split_train="validation", split_eval="validation",
                                                   num_batches=None, batch_size=BATCH)
    assert result["most_frequent_token"] == token
    assert result["most_frequent_token_accuracy"] == pytest.approx(np.mean(targets == token), rel=1e-12)


# The same evaluation in one process with 2 devices, or as one of 2 processes with 1 device each (argv: the
# coordinator's address and this process's id).
_EVALUATE = """
import json, sys
import jax
import numpy as np
if len(sys.argv) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from plmjax.train import evaluate
from tests.train import test_evaluate as t
results = {}
for family in ("encoder", "decoder"):
    task = f"eval_test_processes_{family}"
    t._register(task, family, t._examples(family, np.random.default_rng(0)))
    run, params, param_shardings = t._run(family)
    results[family] = evaluate.make_eval_fn(run, param_shardings, batch_size=t.BATCH)(params, task, "validation", None)
print("RESULTS " + json.dumps(results))
"""


def _results(stdout):
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULTS "))[len("RESULTS "):])


@pytest.mark.slow
def test_two_processes_evaluate_like_one():
    def env(devices):
        return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")

    one = subprocess.run([sys.executable, "-c", _EVALUATE], cwd=REPO_ROOT, env=env(2), capture_output=True,
                         text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"localhost:{s.getsockname()[1]}"
    procs = [subprocess.Popen([sys.executable, "-c", _EVALUATE, address, str(i)], cwd=REPO_ROOT, env=env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    expected = _results(one.stdout)
    for out, _ in outputs:  # every process ran the same 4 batches and has the global metrics
        results = _results(out)
        for family in expected:
            for name, value in expected[family].items():
                np.testing.assert_allclose(results[family][name], value, rtol=1e-6, err_msg=f"{family} {name}")
