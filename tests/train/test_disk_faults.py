"""Disk faults (issue 18, docs/reliability.md): a disk that fills during a save, a model dir that cannot be written
or turns read-only mid-run. Each ends in one `CheckpointWriteError` / `ModelDirNotWritableError` naming the
directory, the reason and the fix; the earlier checkpoints stay bit-identical; after the fix the same run
resumes and ends bit-identical to one that never failed.

The faults are real file systems, not mocks: a size-limited tmpfs (full disk) and a read-only bind mount. Both
need mount rights (root, as in CI); elsewhere the tests skip with that reason.
"""

import os
import subprocess
import sys

import pytest

from plmjax.train import checkpoint as checkpoint_lib
from plmjax.train import faults
from tests import reliability
from tests.train.test_faults import _assert_same_state, _steps, _train


def _mount(*args):
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    return result.returncode == 0, result.stderr.strip()


@pytest.fixture
def mounts():
    """Mounts made by a test (undone at its end, newest first); skips when this process may not mount."""
    made = []

    def mount(*args, target):
        ok, error = _mount(*args, str(target))
        if not ok:
            pytest.skip(f"these tests mount a tmpfs / a read-only bind mount, which needs root: {error}")
        made.append(str(target))

    yield mount
    for target in reversed(made):
        subprocess.run(["umount", "-l", target], capture_output=True)


def _used_bytes(path):
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    _train(root, 12)
    return root


@pytest.mark.slow
@reliability.fault_case("disk faults", "the disk fills during a save")
def test_a_disk_that_fills_during_a_save_is_one_error_and_loses_nothing(tmp_path, mounts, straight):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounts("-t", "tmpfs", "-o", "size=64m", "tmpfs", target=disk)
    run = disk / "run"
    _train(run, 8)  # checkpoints 4 and 8 (~7 MB each)
    before = reliability.committed(run)
    assert sorted(before) == [4, 8]
    one_checkpoint = sum(f.stat().st_size for f in (run / "checkpoints" / "8").rglob("*") if f.is_file())
    # Room for the metrics and half a checkpoint: the save of step 12 runs out of space.
    mounts("-o", f"remount,size={_used_bytes(disk) + one_checkpoint // 2}", "tmpfs", target=disk)
    with pytest.raises(checkpoint_lib.CheckpointWriteError, match=(
            r"Could not write the checkpoint of step 12 to .*disk/run/checkpoints: No space left on device\. The "
            r"earlier checkpoints are untouched \(the newest finished one: step 8\).*Free space on that disk")):
        _train(run, 12)
    assert _steps(run) == [4, 8]
    reliability.current().data_lost = len(reliability.lost(before, run))
    assert reliability.current().data_lost == 0

    mounts("-o", "remount,size=64m", "tmpfs", target=disk)  # space freed
    _train(run, 12)
    assert (run / "checkpoints.corrupt").exists()  # the unfinished step 12, kept aside
    _assert_same_state(straight, run, 12)
    assert reliability.lost(before, run) == []


@pytest.mark.slow
@reliability.fault_case("disk faults", "the model dir (holding checkpoints) is read-only")
def test_a_read_only_model_dir_is_one_error_and_resumes_once_writable(tmp_path, mounts, straight):
    run = tmp_path / "run"
    _train(run, 8)
    before = reliability.committed(run)
    mounts("--bind", str(run), target=run)
    mounts("-o", "remount,bind,ro", target=run)
    with pytest.raises(faults.ModelDirNotWritableError, match=(
            rf"Cannot write to the model dir {run}: Read-only file system .*Pick a writable --model_dir")):
        _train(run, 12)
    reliability.current().data_lost = len(reliability.lost(before, run))
    assert reliability.current().data_lost == 0
    subprocess.run(["umount", "-l", str(run)], check=True)  # writable again
    _train(run, 12)
    _assert_same_state(straight, run, 12)


def test_a_failed_write_ends_plmjax_train_with_its_own_status_and_one_line(monkeypatch, capsys):
    from plmjax import cli, launch
    failure = checkpoint_lib.CheckpointWriteError("Could not write the checkpoint of step 12 to /x: No space left")

    def fail(model_dir):
        raise failure
    monkeypatch.setattr(launch, "train", fail)
    monkeypatch.setattr(launch, "parse_gin", lambda *args, **kwargs: None)
    status = cli.main(["train", "--gin_file=gin_configs/quickstart.gin", "--model_dir=/tmp/unused"])
    err = capsys.readouterr().err
    assert status == faults.CHECKPOINT_WRITE_FAILED_EXIT_STATUS == 74
    assert err.strip().splitlines() == [f"plmjax train: error: CheckpointWriteError: {failure}"]
