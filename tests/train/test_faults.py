"""The trainer under faults (docs/reliability.md): NaN losses, SIGTERM / Ctrl-C, damaged checkpoints."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import plmjax.tasks  # noqa: F401
from plmjax import sharding
from plmjax.data import pipeline
from plmjax.train import faults, loop, optim
from tests import reliability
from tests.conftest import REPO_ROOT
from tests.train import families
from tests.train.saved_state import load_saved_state

TASK, LENGTHS = "pydoc_mlm", {"inputs": 32, "targets": 32}


def _train(model_dir, steps, **settings):
    """A tiny BERT on pydoc MLM in this process: checkpoints every 4 steps, metrics every 2."""
    config = families.tiny_config("encoder", vocab_size=pipeline.vocab_size(TASK), dropout_rate=0.0)
    return loop.train(
        str(model_dir), model_config=config, architecture="encoder", objective="mlm", task=TASK,
        task_feature_lengths=LENGTHS, batch_size=4, num_steps=steps,
        optimizer=optim.make_optimizer("adamw", learning_rate=1e-3, warmup_steps=2, total_steps=12),
        mesh=sharding.create_mesh(devices=jax.devices()[:1]), log_every=2, eval_batches=1, checkpoint_every=4,
        keep_checkpoints=10, progress=False, **settings)


def _leaves(model_dir, step):
    leaves = jax.tree.leaves(load_saved_state(model_dir, step))
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in leaves]


def _assert_same_state(dir_a, dir_b, step):
    a, b = _leaves(dir_a, step), _leaves(dir_b, step)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _steps(model_dir):
    root = os.path.join(model_dir, "checkpoints")
    return sorted(int(name) for name in os.listdir(root) if name.isdigit())


# ---------------------------------------------------------------------------------------------- non-finite


@reliability.fault_case("NaN loss", "default: stop at step 6, last checkpoint intact")
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """NaN loss weights at step 6 (checkpoints at 4, 8): the default stops at the step-6 check with a message
    naming step 6 and the step-4 checkpoint; step 8 is never written and step 4's parameters are finite."""
    monkeypatch.setattr(loop, "_NAN_AT_STEPS", {6})
    with pytest.raises(faults.NonFiniteError, match=r"at step 6\b.*last good one is .*checkpoints/4\b"):
        _train(tmp_path, 8)
    assert _steps(tmp_path) == [4]
    assert all(np.isfinite(x).all() for x in _leaves(tmp_path, 4) if x.dtype.kind == "f")
    assert not (tmp_path / "summary.json").exists()


@reliability.fault_case("NaN loss", "skip at steps 3 and 6, counted")
def test_nan_loss_skip_goes_on_and_counts(tmp_path, monkeypatch):
    """nonfinite='skip': steps 3 and 6 are skipped (not applied, not averaged), counted in the metrics and the
    summary; every checkpoint is finite."""
    monkeypatch.setattr(loop, "_NAN_AT_STEPS", {3, 6})
    final = _train(tmp_path, 8, nonfinite="skip")
    assert np.isfinite(final["loss"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["skipped_steps"] == 2 and summary["steps"] == 8
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert [row["skipped_steps"] for row in train_rows] == [0, 1, 2, 2]
    assert all(np.isfinite(row["loss"]) for row in train_rows)
    assert _steps(tmp_path) == [4, 8]
    for step in (4, 8):
        assert all(np.isfinite(x).all() for x in _leaves(tmp_path, step) if x.dtype.kind == "f")


@reliability.fault_case("NaN loss", "skip, 3 in a row over a cap of 2: stop")
def test_too_many_consecutive_skips_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_NAN_AT_STEPS", {5, 6, 7})
    with pytest.raises(faults.NonFiniteError, match=r"3 consecutive non-finite steps \(to step 7\).*"
                                                    r"max_consecutive_skips=2.*checkpoints/4\b"):
        _train(tmp_path, 8, nonfinite="skip", max_consecutive_skips=2)
    assert _steps(tmp_path) == [4]


def test_bad_nonfinite_setting_is_one_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"train.nonfinite='ignore': use 'stop' \(default\) or 'skip'"):
        _train(tmp_path, 2, nonfinite="ignore")


# ---------------------------------------------------------------------------------------------- preemption


@reliability.fault_case("Ctrl-C / SIGTERM (handlers)", "Ctrl-C once stops, twice aborts")
def test_sigint_once_requests_a_stop_and_twice_aborts():
    with faults.PreemptionWatcher(5.0, reached_preemption=lambda step: False) as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert watcher.should_stop(2) and watcher.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@reliability.fault_case("Ctrl-C / SIGTERM (handlers)", "SIGTERM stops; handlers restored")
def test_sigterm_requests_a_stop_and_handlers_are_restored():
    previous = signal.getsignal(signal.SIGTERM)
    with faults.PreemptionWatcher(5.0, reached_preemption=lambda step: False) as watcher:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert watcher.should_stop(3) and watcher.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous


def _cli(model_dir, steps, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "plmjax.cli", "train", "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin",
           f"--model_dir={model_dir}", f"--gin_param=NUM_STEPS = {steps}", "--gin_param=train.checkpoint_every = 4",
           "--gin_param=train.log_every = 2", "--gin_param=train.progress = False",
           "--gin_param=train.keep_checkpoints = 10", *extra]
    return cmd, env


@pytest.mark.slow
@reliability.fault_case("SIGTERM during a run", "1 process: status 75, resumed bitwise")
def test_sigterm_checkpoints_the_current_step_and_resumes_bit_exactly(tmp_path):
    """SIGTERM once step 4's checkpoint exists: the run checkpoints the step it is on, exits with status 75,
    and the resumed run ends bit-identical to one never interrupted."""
    steps = 400
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    cmd, env = _cli(stopped, steps, "--gin_param=train.preemption_grace_s = 60")
    process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while not (stopped / "checkpoints" / "4" / "commit_success.txt").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert time.time() - sent < 60
    assert process.returncode == faults.PREEMPTED_EXIT_STATUS, (process.returncode, err[-3000:])
    step = int(re.search(r"Preempted \(SIGTERM\) after step (\d+): checkpoint (\S+) written",
                                       out).group(1))
    assert 4 <= step < steps and _steps(stopped)[-1] == step, (step, _steps(stopped))
    assert not (stopped / "summary.json").exists()
    before = reliability.committed(stopped)

    cmd, env = _cli(stopped, step + 4)
    resumed = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step} (batch {step})" in resumed.stdout
    cmd, env = _cli(straight, step + 4)
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_state(straight, stopped, step + 4)
    reliability.current().data_lost = len(reliability.lost(before, stopped))
    assert reliability.current().data_lost == 0


def _two_processes(model_dir, steps, *extra):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"localhost:{s.getsockname()[1]}"
    processes = []
    for i in range(2):
        cmd, env = _cli(model_dir, steps, f"--coordinator_address={address}", "--num_processes=2",
                        f"--process_id={i}", *extra)
        processes.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    return processes


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    """jax's preemption sync point: SIGTERM to process 1 only; both processes checkpoint the same step (jax's
    notifier tells process 0) and exit with status 75; resumed by two processes, the run ends bit-identical to a
    two-process run never interrupted (the schedule's length is fixed, so runs of any NUM_STEPS agree)."""
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    schedule = "--gin_param=make_optimizer.total_steps = 400"
    with reliability.case("SIGTERM to one of two processes", "2 processes, resumed by 2") as case:
        processes = _two_processes(stopped, 400, schedule)
        deadline = time.time() + 300
        while not (stopped / "checkpoints" / "4" / "commit_success.txt").exists():
            assert all(p.poll() is None for p in processes) and time.time() < deadline, \
                [p.communicate()[1][-2000:] for p in processes]
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=180) for p in processes]
        for p, (_, err) in zip(processes, outputs):
            assert p.returncode == faults.PREEMPTED_EXIT_STATUS, (p.returncode, err[-3000:])
        step = int(re.search(r"Preempted \(SIGTERM\) after step (\d+)", outputs[0][0]).group(1))
        assert 4 <= step < 400 and _steps(stopped)[-1] == step
        assert (stopped / "checkpoints" / str(step) / "data" / "process_1-of-2.bin").exists()
        before = reliability.committed(stopped)

        for model_dir in (stopped, straight):
            processes = _two_processes(model_dir, step + 4, schedule)
            outputs = [p.communicate(timeout=600) for p in processes]
            for p, (_, err) in zip(processes, outputs):
                assert p.returncode == 0, err[-3000:]
            if model_dir == stopped:
                assert f"at step {step} (batch {step})" in outputs[0][0]
        case.data_lost = len(reliability.lost(before, stopped))
        assert case.data_lost == 0
        _assert_same_state(straight, stopped, step + 4)


# ------------------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 12-step run, and a run stopped after step 8 (checkpoints 4 and 8) to damage."""
    root = tmp_path_factory.mktemp("damaged")
    _train(root / "straight", 12)
    _train(root / "base", 8)
    return root


def _largest_file(directory):
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_file(step_dir / "state")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _delete(step_dir):
    os.remove(_largest_file(step_dir / "state"))


def _garble_metadata(step_dir):
    (step_dir / "metadata" / "metadata").write_text('{"step": 8, "data_po')


def _leftover_tmp(step_dir):
    (step_dir / "commit_success.txt").unlink()
    step_dir.rename(step_dir.parent / "8.orbax-checkpoint-tmp-1234")


def _uncommitted(step_dir):
    (step_dir / "commit_success.txt").unlink()


# One kind in the quick suite; the others (same path through restore_newest_good) are slow-marked.
@pytest.mark.parametrize("damage", [_truncate, *(pytest.param(f, marks=pytest.mark.slow) for f in (
    _delete, _garble_metadata, _leftover_tmp, _uncommitted))], ids=lambda f: f.__name__.strip("_"))
@reliability.fault_case("damaged latest checkpoint", lambda damage, **_: damage.__name__.strip("_"))
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(runs, tmp_path, damage, capsys):
    model_dir = tmp_path / "run"
    shutil.copytree(runs / "base", model_dir)
    damage(model_dir / "checkpoints" / "8")
    before = reliability.committed(model_dir)  # the damaged step too, as the damage left it
    _train(model_dir, 12)
    out = capsys.readouterr().out
    assert "Resumed from" in out and "at step 4 (batch 4)" in out, out[-2000:]
    assert any(("is damaged" in line or "is an unfinished save" in line) and "moved it to" in line
               for line in out.splitlines()), out[-2000:]
    aside = model_dir / "checkpoints.corrupt"
    assert len(os.listdir(aside)) == 1  # kept, not deleted
    reliability.current().data_lost = len(reliability.lost(before, model_dir))
    assert reliability.current().data_lost == 0
    _assert_same_state(runs / "straight", model_dir, 12)


@reliability.fault_case("damaged latest checkpoint", "every checkpoint damaged: one error")
def test_no_good_checkpoint_is_one_error_naming_the_directory(runs, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(runs / "base", model_dir)
    for step in (4, 8):
        _garble_metadata(model_dir / "checkpoints" / str(step))
    before = reliability.committed(model_dir)
    with pytest.raises(ValueError, match=r"No readable checkpoint in .*run/checkpoints: every one \(steps \[4, 8\]\)"):
        _train(model_dir, 12)
    assert sorted(os.listdir(model_dir / "checkpoints.corrupt")) == ["4", "8"]
    reliability.current().data_lost = len(reliability.lost(before, model_dir))
    assert reliability.current().data_lost == 0


@pytest.mark.slow
@reliability.fault_case("restore onto another topology", "2 'shard' processes -> 1: refused, or allowed")
def test_resume_on_another_process_count_with_shard_input_is_one_error(tmp_path, capsys):
    """A checkpoint whose data states were written by 2 processes reading their own shards ('shard'): one process
    would read another data order (tests/train/test_restore_topology.py saw it happen silently), so the resume is
    refused with one error naming both counts, unless train.allow_data_order_change says to go on."""
    _train(tmp_path, 4)
    data = tmp_path / "checkpoints" / "4" / "data"
    state = (data / "process_0-of-1.bin").read_bytes()
    (data / "process_0-of-1.bin").unlink()
    for i in range(2):  # as two processes write them
        (data / f"process_{i}-of-2.bin").write_bytes(state)
    with pytest.raises(ValueError, match=(
            r"checkpoints/4 was written by 2 process\(es\) with train.input_sharding='shard'; resuming it with 1 "
            r"process\(es\) and 'shard' reads another data order from batch 5 on .* Resume with 2 processes and "
            r"'shard'; or accept the new data order with train.allow_data_order_change = True")):
        _train(tmp_path, 8)
    assert _steps(tmp_path) == [4]
    capsys.readouterr()
    _train(tmp_path, 8, allow_data_order_change=True)
    assert "going on (train.allow_data_order_change = True)" in capsys.readouterr().out
    assert _steps(tmp_path) == [4, 8]


# ------------------------------------------------------------------------------------------------ model dir


@reliability.fault_case("two runs on one model dir", "the second refuses")
def test_second_run_on_a_model_dir_in_use_refuses(tmp_path):
    """Another process holds the model dir's lock: the run refuses before touching its checkpoints."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
        "time.sleep(120)"), str(tmp_path / faults.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(faults.ModelDirInUseError, match=rf"is in use by another run \(pid {holder.pid}"):
            _train(tmp_path, 2)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "checkpoints").exists()


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    faults.lock_model_dir(str(tmp_path))
    faults.lock_model_dir(str(tmp_path))  # the holder may take it again
    faults.unlock_model_dir(str(tmp_path))
    check = subprocess.run([sys.executable, "-c", (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX | "
        "fcntl.LOCK_NB)"), str(tmp_path / faults.LOCK_FILE)])
    assert check.returncode == 0


@reliability.fault_case("model dir not writable", "cannot be created")
def test_a_model_dir_that_cannot_be_created_is_one_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(faults.ModelDirNotWritableError, match=r"Cannot write to the model dir .*file/run"):
        _train(tmp_path / "file" / "run", 2)
