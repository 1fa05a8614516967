"""Restoring `plmjax train` onto another mesh or process count, end to end through the CLI (issue 18).

A run checkpoints on one topology; the checkpoint directory of one step is copied to a fresh model dir (as a
user moves a run to other hardware) and `plmjax train` resumes there on another topology. Every run goes through
`tests/train/topology_probe.py`, which is `plmjax.cli.main` plus two recorders that only observe: each batch the
training loop's data iterator returns, and the state `restore_newest_good` returned (on the new mesh).

What is bitwise and what is not (measured on CPU, jax 0.10.2, the tiny BERT MLM recipe):
* Across a restore, whatever the mesh: the restored state equals the saved one bit for bit, the step counter and
  the rng are equal, and the batches the resumed run consumes are bit-identical to the ones the uninterrupted run
  consumed at the same steps (the same data position).
* One device vs 8 devices (data=8) vs the (2, 2, 2) mesh: NOT bitwise. float32 reductions (the data-parallel
  gradient sum, the fsdp/tensor partial sums) run in another order, so from the first step on a different mesh
  the parameters differ in the last bits: an uninterrupted 1-device run vs an uninterrupted 8-device run differs
  in 40 of 44 parameter arrays after 12 steps, by up to 1.6e-7 absolute (one token-embedding element of
  -0.0025; the Adam update divides by sqrt(nu), which magnifies the rounding of a small gradient sum), already
  more than test_multiprocess.py's atol=1e-7. The final state of the run that moved 8 -> 1 -> (2, 2, 2)
  devices is therefore compared with the uninterrupted 8-device run at the sharded-equals-unsharded tolerances:
  losses 1e-6 relative (as README's Distribution tests), parameters and optimizer moments rtol 1e-5 plus
  atol 1e-5 times each array's largest magnitude (the README's 1e-5 relative for gradients, taken per array as
  tests/train/test_layerwise_lr.py does; the uninterrupted 1-device vs 8-device runs use 1/8 of it).
  The attention key biases are the exception: their gradient is exactly zero in exact arithmetic (softmax is
  invariant to adding q.b to every score), so their values and moments are accumulated rounding noise (~1e-8,
  ~1e-13, ~1e-26) that no relative tolerance fits; they are checked to stay at rounding-noise size.
* Two processes with one device each vs one process with two devices (the same (2, 1, 1) mesh): bitwise, so a
  2-process run resumed by one process must end bit-identical to the uninterrupted 2-process run; it does with
  train.input_sharding='slice'. With 'shard' (each process reads its own data shard) the resumed process would
  read another data stream (this test found that it silently did: every batch after the resume differed); the
  trainer now refuses such a resume unless train.allow_data_order_change = True
  (tests/train/test_faults.py::test_resume_on_another_process_count_with_shard_input_is_one_error).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from plmjax.train import checkpoint as checkpoint_lib
from tests import reliability
from tests.conftest import REPO_ROOT
from tests.train.saved_state import load_saved_state

EVERY = 4  # checkpoint_every


def _cmd(model_dir, steps, *extra):
    return [sys.executable, "-m", "tests.train.topology_probe", "train",
            "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin", f"--model_dir={model_dir}",
            f"--gin_param=NUM_STEPS = {steps}", "--gin_param=WARMUP_STEPS = 2",
            f"--gin_param=train.checkpoint_every = {EVERY}", "--gin_param=train.keep_checkpoints = 10",
            "--gin_param=train.log_every = 1", "--gin_param=train.progress = False",
            "--gin_param=train.eval_batches = 1", *extra]


def _env(devices, probe_dir):
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PLMJAX_TEST_PROBE_DIR=str(probe_dir))


def _train(model_dir, probe_dir, devices, steps, *extra):
    result = subprocess.run(_cmd(model_dir, steps, *extra), cwd=REPO_ROOT, env=_env(devices, probe_dir),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(model_dir, probe_dir, steps, *extra):
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen(_cmd(model_dir, steps, *extra, f"--coordinator_address={address}",
                                   "--num_processes=2", f"--process_id={i}"),
                              cwd=REPO_ROOT, env=_env(1, probe_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]


def _copy_checkpoint(src, step, dst):
    """A fresh model dir holding only `src`'s checkpoint of `step` (what a user copies to other hardware)."""
    shutil.copytree(src / "checkpoints" / str(step), dst / "checkpoints" / str(step))


def _assert_resumed(stdout, model_dir, step):
    expected = f"Resumed from {model_dir / 'checkpoints'} at step {step} (batch {step})."
    assert expected in stdout, stdout[-2000:]


def _key(path):
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _saved(model_dir, step):
    """{path: numpy array} of a saved state (prng keys as their key data)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(load_saved_state(model_dir, step)):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[_key(path)] = np.asarray(leaf)
    return out


def _restored(probe_dir):
    """(the state the resumed run restored, {path: array}; its restore record: step, layout, ...)."""
    with np.load(probe_dir / "restored.npz") as z:
        arrays = {name: z[name] for name in z.files}
    return arrays, json.loads((probe_dir / "restored.json").read_text())


def _assert_bitwise(a, b, what):
    assert sorted(a) == sorted(b), what
    differ = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
    assert not differ, f"{what}: {len(differ)} of {len(a)} arrays differ, e.g. {differ[:3]}"


def _batches(probe_dir, process=0):
    """The batches one process's training loop read, in order (numbered from that run's start)."""
    names = sorted(n for n in os.listdir(probe_dir) if n.startswith(f"batch_p{process}_"))
    out = []
    for name in names:
        with np.load(probe_dir / name) as z:
            out.append({k: z[k] for k in z.files})
    return out


def _global_batches(probe_dir, sharding):
    """The global batches of a 2-process run: with 'slice' both processes read the global batch (checked equal);
    with 'shard' it is process 0's rows then process 1's (the batch sharding's order)."""
    first, second = _batches(probe_dir, 0), _batches(probe_dir, 1)
    assert len(first) == len(second)
    if sharding == "slice":
        for n, (a, b) in enumerate(zip(first, second)):
            _assert_batch_equal(a, b, f"batch {n + 1} of processes 0 and 1")
        return first
    return [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(first, second)]


def _assert_batch_equal(a, b, what):
    assert sorted(a) == sorted(b), what
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), \
            f"{what}: feature {k} differs"


def _assert_same_batches(resumed, straight, first_step, what):
    """`resumed[n]` (the resumed run's n-th batch) is the batch of step first_step + n of the straight run."""
    assert resumed, what
    for n, batch in enumerate(resumed):
        step = first_step + n
        assert step <= len(straight), f"{what}: read more batches than the straight run"
        _assert_batch_equal(batch, straight[step - 1], f"{what}: the batch of step {step}")


def _losses(model_dir):
    with open(model_dir / "metrics.jsonl") as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f) if row["split"] == "train"}


def _meta(model_dir, step):
    return checkpoint_lib.Checkpointer(str(model_dir / "checkpoints")).read_metadata(step)


def _is_key_bias(path):
    return path.endswith("self_attention/key/bias")


def _assert_close_across_meshes(moved, straight):
    """The final states of runs whose steps ran on different meshes (see the module docstring)."""
    assert sorted(moved) == sorted(straight)
    for path in ("step", "rng"):
        _assert_bitwise({path: moved[path]}, {path: straight[path]}, path)
    for path, a in moved.items():
        b = straight[path]
        if path in ("step", "rng") or a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=path)
            continue
        if _is_key_bias(path):  # zero gradient: rounding noise, ~1e-8 (params), ~1e-13 (mu), ~1e-26 (nu)
            bound = {"params": 1e-6, "mu": 1e-10, "nu": 1e-20}[
                "params" if path.startswith("params") else path.split("/")[3]]
            assert np.abs(a).max() < bound and np.abs(b).max() < bound, path
        else:  # parameters and optimizer moments: 1e-5 relative to the array's largest magnitude
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()), err_msg=path)


@pytest.mark.slow
@reliability.fault_case("restore onto another topology", "8 devices -> 1 device -> (2, 2, 2) mesh")
def test_8_devices_to_1_device_to_222_mesh_continue_from_the_same_step_and_data(tmp_path):
    """8 devices (data=8) save at step 4; 1 device resumes from that checkpoint and saves at 8; a (2, 2, 2) mesh
    of 8 devices resumes from that one to step 12. At each switch: the resume line names the step and the
    batch, the restored state is the saved one bit for bit (laid out on the new mesh), and every batch consumed
    afterwards is bit-identical to the uninterrupted 8-device run's batch of the same step. The end state
    matches the uninterrupted run: step and rng bitwise, the floats to the sharded-equals-unsharded
    tolerances (another mesh sums in another order, so bitwise is not possible there)."""
    steps = 12
    straight, one, mesh222 = tmp_path / "straight8", tmp_path / "one", tmp_path / "mesh222"
    probe_straight, probe_one, probe_222 = tmp_path / "p_straight8", tmp_path / "p_one", tmp_path / "p_222"

    _train(straight, probe_straight, 8, steps)  # the default mesh: data=8
    straight_batches = _batches(probe_straight)
    assert len(straight_batches) == steps

    # 8 devices -> 1 device, from step 4.
    _copy_checkpoint(straight, EVERY, one)
    stdout = _train(one, probe_one, 1, steps)
    _assert_resumed(stdout, one, EVERY)
    restored, record = _restored(probe_one)
    assert (record["step"], record["data_position"], record["device_count"]) == (EVERY, EVERY, 1)
    assert record["data_state"] is not None  # one process wrote it, one process reads it: the iterator state
    one_device = '{"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, "stage": 1}'
    assert {json.dumps(v["mesh"]) for v in record["layout"].values()} == {one_device}
    _assert_bitwise(restored, _saved(straight, EVERY), "1 device: restored vs saved at step 4 (8 devices)")
    batches_one = _batches(probe_one)
    assert len(batches_one) == steps - EVERY
    _assert_same_batches(batches_one, straight_batches, EVERY + 1, "1 device after resuming at step 4")
    assert (_meta(one, 2 * EVERY)["step"], _meta(one, 2 * EVERY)["data_position"]) == (2 * EVERY, 2 * EVERY)

    # 1 device -> (2, 2, 2) mesh of 8 devices, from the 1-device run's step 8.
    _copy_checkpoint(one, 2 * EVERY, mesh222)
    stdout = _train(mesh222, probe_222, 8, steps, "--gin_file=gin_configs/mesh/data2_fsdp2_tensor2.gin")
    _assert_resumed(stdout, mesh222, 2 * EVERY)
    restored, record = _restored(probe_222)
    assert (record["step"], record["data_position"], record["device_count"]) == (2 * EVERY, 2 * EVERY, 8)
    assert record["data_state"] is not None
    layouts = record["layout"].values()
    assert {json.dumps(v["mesh"]) for v in layouts} == {'{"data": 2, "fsdp": 2, "tensor": 2, "expert": 1, "stage": 1}'}
    assert any("fsdp" in v["spec"] and "tensor" in v["spec"] for v in layouts)  # really split, not replicated
    _assert_bitwise(restored, _saved(one, 2 * EVERY), "(2,2,2): restored vs saved at step 8 (1 device)")
    batches_222 = _batches(probe_222)
    assert len(batches_222) == steps - 2 * EVERY
    _assert_same_batches(batches_222, straight_batches, 2 * EVERY + 1, "(2,2,2) after resuming at step 8")

    # The end: bitwise where the computation is the same (step, rng, data position), close elsewhere.
    assert _meta(mesh222, steps)["data_position"] == _meta(straight, steps)["data_position"] == steps
    _assert_close_across_meshes(_saved(mesh222, steps), _saved(straight, steps))
    losses = {**{s: l for s, l in _losses(one).items() if s <= 2 * EVERY}, **_losses(mesh222)}
    expected = _losses(straight)
    assert sorted(losses) == list(range(EVERY + 1, steps + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [expected[s] for s in sorted(losses)],
                               rtol=1e-6)


@pytest.mark.slow
@reliability.fault_case("restore onto another topology", "2 processes -> 1 process (input_sharding='slice')")
def test_2_processes_to_1_process_continue_bitwise(tmp_path, sharding="slice"):
    """2 processes (1 device each, data=2) save at step 4; 1 process with 2 devices (the same mesh, the same
    reductions) resumes from that checkpoint: the restored state is the saved one, the batches are the
    2-process run's global batches of the same steps, and the end state is bit-identical to the uninterrupted
    2-process run's (and, with 'slice', to an uninterrupted 1-process 2-device run's)."""
    steps = 2 * EVERY
    option = f"--gin_param=train.input_sharding = '{sharding}'"
    two, resumed = tmp_path / "two", tmp_path / "resumed"
    probe_two, probe_resumed = tmp_path / "p_two", tmp_path / "p_resumed"

    _train_two_processes(two, probe_two, steps, option)
    straight_batches = _global_batches(probe_two, sharding)
    assert len(straight_batches) == steps and len(straight_batches[0]["encoder_input_tokens"]) == 16
    assert sorted(os.listdir(two / "checkpoints" / str(EVERY) / "data")) == [
        "commit_success.txt", "process_0-of-2.bin", "process_1-of-2.bin"]

    _copy_checkpoint(two, EVERY, resumed)
    stdout = _train(resumed, probe_resumed, 2, steps, option)
    _assert_resumed(stdout, resumed, EVERY)
    restored, record = _restored(probe_resumed)
    assert (record["step"], record["data_position"], record["device_count"]) == (EVERY, EVERY, 2)
    # The two processes' iterator states do not fit one process: the loop replays data_position batches.
    assert record["data_state"] is None
    _assert_bitwise(restored, _saved(two, EVERY), "1 process: restored vs saved at step 4 (2 processes)")
    _assert_same_batches(_batches(probe_resumed), straight_batches, EVERY + 1, "1 process after resuming")
    assert len(_batches(probe_resumed)) == steps - EVERY

    _assert_bitwise(_saved(resumed, steps), _saved(two, steps), "final state: resumed on 1 process vs 2 processes")
    assert _losses(resumed) == {s: l for s, l in _losses(two).items() if s > EVERY}
    assert _meta(resumed, steps)["data_position"] == steps

    if sharding == "slice":  # one process with two devices, never interrupted: the same numbers
        one, probe_one = tmp_path / "one", tmp_path / "p_one"
        _train(one, probe_one, 2, steps, option)
        for n, (a, b) in enumerate(zip(_batches(probe_one), straight_batches)):
            _assert_batch_equal(a, b, f"uninterrupted 1 process vs 2 processes, the batch of step {n + 1}")
        _assert_bitwise(_saved(one, steps), _saved(two, steps), "final state: 1 process (2 devices) vs 2 processes")
