"""The one checkpoint wrapper (DESIGN.md decision 6): an Orbax `CheckpointManager` with two items per step.

    <directory>/<step>/state/      the state pytree (params, optimizer state, step, rng), `StandardSave`
    <directory>/<step>/metadata/   JSON: step, data position, the run's config, the state's fingerprint
    <directory>/<step>/data/       optional: each process's input iterator state (`process_<i>-of-<n>.bin`)
    <directory>/<step>/commit_success.txt

* Async: `save` returns once the arrays are copied off the devices (so the caller may donate them to the next
  step); the files are written in a background thread. `wait()` blocks until they are on disk; the next `save`
  waits for the previous one.
* Atomic: orbax writes `<step>.orbax-checkpoint-tmp/` and renames it to `<step>/` after writing
  `commit_success.txt` (on GCS, where renames are not atomic, it writes in place and the commit file comes last).
  Only directories named `<step>` that hold `commit_success.txt` count as checkpoints, so a crash mid-save (a
  leftover tmp directory, or on GCS a step directory without the commit file) or an interrupted copy is never
  restored: the previous step is. The first `save` deletes what crashed saves left: tmp directories, and step
  directories that orbax began and never committed (their `_CHECKPOINT_METADATA` has no commit timestamp), so
  the resumed run writes those steps again. A step directory without the commit file whose metadata says it was
  committed is an interrupted copy of a finished step: it is refused, not deleted. (Not at construction: a
  `Checkpointer` opened to evaluate must not delete the files of a run that is saving right now.) The trainer,
  resuming, first moves all of these aside instead (`move_unfinished_saves_aside`).
* Damaged checkpoints: `restore_newest_good` restores the newest step that reads back whole, moving each one
  that does not (truncated, missing or garbled files) to `<directory>.corrupt/` with one line; none readable:
  `CheckpointCorruptError` naming the directory (docs/reliability.md).
* The data item: `save(..., data_state=bytes)` stores this process's input iterator state (the trainer's
  `pipeline.DataIterator`); every process writes its own file inside the same atomic step.
* Keep-N: orbax's preservation policy `LatestN(max_to_keep)` deletes the oldest steps in the directory after
  each save. Orbax counts EVERY step in the directory, whichever run wrote it; so this wrapper refuses to save
  into a directory holding checkpoints it did not restore from (`CheckpointDirectoryInUseError`), and refuses
  to save a step older than the newest one there. Keep-N thus only deletes older steps of the run itself.
* Restore onto any mesh: `restore(abstract_state=...)` reads each array straight into the shardings of the
  abstract target (a pytree of `jax.ShapeDtypeStruct` with `.sharding`), whatever mesh wrote it. Before reading
  arrays it compares the saved fingerprint (paths, shapes, dtypes of every leaf) with the target and raises one
  `CheckpointMismatchError` naming what differs. `restore(..., partial=True)` reads only some top-level fields,
  e.g. `{'params': ...}` for evaluation or to initialize fine-tuning without the optimizer state.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from plmjax.train.checkpoint_data import DataStateHandler, DataStateRestore, DataStateSave
from plmjax.train.checkpoint_metadata import (  # noqa: F401  (part of this module's interface)
    CHECKPOINT_FORMAT, _dtype, config_differences, fingerprint_differences, plmjax_version, tree_fingerprint)

COMMIT_FILE = ocp.path.atomicity.COMMIT_SUCCESS_FILE  # 'commit_success.txt'
_MAX_LISTED = 5  # differing paths named in a mismatch message


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays do not match the state they are restored into (another model config)."""


class CheckpointNotFoundError(FileNotFoundError):
    """No (finished) checkpoint where one was asked for."""


class CheckpointDirectoryInUseError(ValueError):
    """Saving would mix this run's checkpoints with (and let keep-N delete) checkpoints it did not write."""


class CheckpointCorruptError(ValueError):
    """No checkpoint of a run's directory could be read (each was moved aside)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota, a read-only or unwritable directory); the earlier
    checkpoints are untouched and the unfinished one is never restored."""


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how TensorStore reports the errno of a failed write


_STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's per-step file; `commit_timestamp_nsecs` set when committed


class Checkpointer:
    """Saves and restores a training state with its data position and config; see the module docstring.

    directory: where step directories go (local path or gs://...). Nothing is created until the first save.
    max_to_keep: keep the newest N steps of this run (None keeps all).
    save_interval_steps: `save` writes only when step % save_interval_steps == 0 (or force=True); the default 1
      writes on every call, leaving the choice of steps to the caller.
    async_save: write in a background thread (see `wait`).
    owns_directory: the steps already in the directory are the caller's (a PEFT adapter directory, where each
      save replaces the previous one); without it, saving next to steps this object did not restore is refused.
    """

    def __init__(self, directory: str, max_to_keep: Optional[int] = 3, save_interval_steps: int = 1,
                 async_save: bool = True, owns_directory: bool = False):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}.")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
        self._path = epath.Path(directory)
        if not self._path.is_absolute() and "://" not in os.fspath(directory):
            self._path = epath.Path(os.path.abspath(directory))
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(save_interval_steps),
            preservation_policy=policies.LatestN(max_to_keep),
            # A step counts only when its directory holds the commit file (see the module docstring).
            step_name_format=ocp.step.standard_name_format(
                temporary_path_cls=ocp.path.atomicity.CommitFileTemporaryPath),
            create=False,
            cleanup_tmp_directories=False,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self._path, options=options, item_names=("state", "metadata", "data"),
                                             item_handlers={"data": DataStateHandler()})
        # True once the steps in the directory are this run's: it restored from them, or it saved first.
        self._owns_directory = owns_directory
        self._tmp_dirs_removed = False
        self._partial_reader = None  # a read-only manager for `restore(partial=True)`, made on first use
        self._pending_step: Optional[int] = None  # the step of a save started and not yet waited for
        incomplete = self._incomplete_step_dirs()
        if incomplete:
            logging.warning("Ignoring unfinished checkpoint directories (no %s) in %s: %s", COMMIT_FILE,
                            self.directory, ", ".join(p.name for p in incomplete))

    @property
    def directory(self) -> str:
        return os.fspath(self._path)

    def all_steps(self) -> list[int]:
        """The finished steps in the directory, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def _incomplete_step_dirs(self) -> list[epath.Path]:
        if not self._path.exists():
            return []
        return sorted((p for p in self._path.iterdir()
                       if p.name.isdigit() and p.is_dir() and not (p / COMMIT_FILE).exists()),
                      key=lambda p: int(p.name))

    # ----------------------------------------------------------------------------------------------- saving

    def save(self, step: int, state: Any, *, data_position: int, config: dict, force: bool = False,
             data_state: Optional[bytes] = None) -> bool:
        """Starts saving `state` at `step`; returns whether a save was started.

        data_position: batches consumed so far (the input pipeline skips that many when resuming).
        data_state: this process's input iterator state after those batches (`read_data_state` gives it back);
          every process passes its own.
        config: JSON-able dict describing the run (model config as a dict, the operative gin config string);
          values JSON cannot hold are stored as their str().
        Returns False (and writes nothing) when `step` is not a multiple of save_interval_steps (unless force),
        or when this step is already saved, e.g. the step just restored.
        """
        step = int(step)
        if isinstance(data_position, bool) or int(data_position) != data_position or data_position < 0:
            raise ValueError(f"data_position must be a non-negative integer (batches consumed), got "
                             f"{data_position!r}.")
        self._check_can_write(step)
        if step in self._manager.all_steps():
            logging.info("Checkpoint for step %d already in %s; not saving it again.", step, self.directory)
            return False
        if not force and not self._manager.should_save(step):
            return False
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "plmjax_version": plmjax_version(),
            "step": step,
            "data_position": int(data_position),
            "config": json.loads(json.dumps(config, default=str)),
            "fingerprint": tree_fingerprint(state),
        }
        items = dict(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata))
        if data_state is not None:
            items["data"] = DataStateSave(bytes(data_state))
        args = ocp.args.Composite(**items)
        try:
            saved = self._manager.save(step, args=args, force=force)  # also finishes the previous save
        except Exception as error:  # noqa: BLE001  orbax / TensorStore errors of a failed write
            raise self._write_error(self._pending_step if self._pending_step is not None else step, error) from error
        self._pending_step = step if saved else self._pending_step
        self._owns_directory = self._owns_directory or saved
        return saved

    def _check_can_write(self, step: int) -> None:
        if not self._owns_directory:
            self._manager.reload()
            existing = self.all_steps()
            if existing:
                raise CheckpointDirectoryInUseError(
                    f"{self.directory} already holds checkpoints (steps {existing}) that this run did not restore "
                    "from; saving here would mix two runs and let keep-N delete the other run's checkpoints. "
                    "Resume from them (restore before saving), or start a fresh --model_dir.")
        if not self._tmp_dirs_removed:
            self._remove_crashed_saves()
            self._tmp_dirs_removed = True
        latest = self.latest_step()
        if latest is not None and step < latest and step not in self._manager.all_steps():
            raise CheckpointDirectoryInUseError(
                f"Cannot save step {step} into {self.directory}: it holds a newer step {latest} (restored from an "
                "older step?). Orbax never writes a step older than the newest one. Move the newer step "
                "directories elsewhere, or start a fresh --model_dir.")
        target = self._path / str(step)
        if target.exists() and not (target / COMMIT_FILE).exists():
            raise CheckpointDirectoryInUseError(
                f"{target} exists but is not a finished checkpoint (no {COMMIT_FILE}, yet its {_STEP_METADATA} "
                "says it was committed: an interrupted copy). Move or delete it, then rerun.")

    def _remove_crashed_saves(self) -> None:
        """Deletes what crashed saves left (process 0; the others wait): `<step>.orbax-checkpoint-tmp`
        directories and step directories orbax began writing in place and never committed."""
        if jax.process_index() == 0 and self._path.exists():
            for tmp in ocp.utils.tmp_checkpoints(self._path):
                logging.warning("Deleting the unfinished save %s.", tmp.get())
                tmp.get().rmtree()
            for step_dir in self._incomplete_step_dirs():
                if _never_committed(step_dir):
                    logging.warning("Deleting the unfinished save %s (no %s); its step is written again.",
                                    step_dir, COMMIT_FILE)
                    step_dir.rmtree()
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("plmjax_checkpointer_remove_crashed_saves")

    def reached_preemption(self, step: int) -> bool:
        """Orbax's (jax's) preemption sync point: True on every process at the same step after a preemption
        notice reached any of them (False without `jax.distributed`'s preemption service)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until every started save is on disk; raises CheckpointWriteError if a save failed."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as error:  # noqa: BLE001  orbax / TensorStore errors of a failed write
            raise self._write_error(self._pending_step, error) from error
        self._pending_step = None

    def _write_error(self, step: Optional[int], error: BaseException) -> CheckpointWriteError:
        """One message for a save that failed: what, where, why, what is safe, and the fix."""
        code = error.errno if isinstance(error, OSError) and error.errno else None
        found = _OS_ERROR_CODE.search(str(error))
        code = code or (int(found.group(1)) if found else None)
        reason = os.strerror(code) if code else (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        fix = {28: "Free space on that disk (or use a --model_dir on a larger one)",
               122: "Free space within your quota (or use another --model_dir)",
               30: "Use a writable --model_dir", 13: "Fix the directory's permissions (or use another --model_dir)"}
        try:
            self._manager.reload()
            finished = self.all_steps()
        except Exception:  # noqa: BLE001  the listing itself may fail on a broken disk
            finished = []
        newest = f"step {finished[-1]}" if finished else "none yet"
        failure = CheckpointWriteError(
            f"Could not write the checkpoint of step {step} to {self.directory}: {reason}. The earlier checkpoints "
            f"are untouched (the newest finished one: {newest}); the unfinished one is never restored and is moved "
            f"aside when the run resumes. {fix.get(code, 'Fix the cause')}, then run the same command again: it "
            f"resumes from {newest if finished else 'the start'}.")
        failure.errno = code
        return failure

    def close(self) -> None:
        """Waits for pending saves, then releases orbax's threads."""
        self.wait()
        self._manager.close()
        if self._partial_reader is not None:
            self._partial_reader.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- restoring

    def _resolve_step(self, step: Optional[int]) -> int:
        steps = self.all_steps()
        if not steps:
            incomplete = self._incomplete_step_dirs()
            what = "does not exist" if not self._path.exists() else "holds no finished checkpoint"
            extra = (f" (unfinished step directories without {COMMIT_FILE}: "
                     f"{', '.join(p.name for p in incomplete)})" if incomplete else "")
            raise CheckpointNotFoundError(
                f"Checkpoint directory {self.directory} {what}{extra}. Pass the model dir of a run that saved "
                "checkpoints, or train from scratch with a fresh --model_dir.")
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointNotFoundError(
                f"No finished checkpoint for step {step} in {self.directory}; available steps: {steps}.")
        return int(step)

    def read_metadata(self, step: Optional[int] = None) -> dict:
        """The JSON metadata of `step` (default: the latest): step, data_position, config, fingerprint."""
        step = self._resolve_step(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        except (FileNotFoundError, KeyError):  # orbax: KeyError('Item "metadata" was not found ...')
            restored = None
        metadata = None if restored is None else restored.metadata
        if not isinstance(metadata, dict) or "fingerprint" not in metadata:
            raise CheckpointNotFoundError(
                f"{self._path / str(step)} has no plmjax metadata: it was not written by plmjax's Checkpointer. "
                "Point --model_dir (or --checkpoint) at a plmjax run's checkpoints, or train from scratch with a "
                "fresh --model_dir.")
        written = metadata.get("format", 1)
        if not isinstance(written, int) or written > CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(
                f"{self._path / str(step)} was written by plmjax {metadata.get('plmjax_version', '(unknown)')} in "
                f"checkpoint format {written!r}; this plmjax {plmjax_version()} reads format {CHECKPOINT_FORMAT} and "
                "older. Upgrade plmjax (pip install -U plmjax), or read it with the version that wrote it.")
        return metadata

    def read_data_state(self, step: Optional[int] = None) -> Optional[bytes]:
        """This process's input iterator state saved at `step` (default: the latest), or None when the step has
        none (saved without one, or by another number of processes)."""
        step = self._resolve_step(step)
        if not (self._path / str(step) / "data").exists():
            return None
        return self._manager.restore(step, args=ocp.args.Composite(data=DataStateRestore())).data

    def data_writers(self, step: Optional[int] = None) -> Optional[int]:
        """How many processes wrote the input iterator states of `step` (`data/process_<i>-of-<n>.bin`), or None
        when it has none."""
        data = self._path / str(self._resolve_step(step)) / "data"
        counts = {int(m.group(1)) for p in (data.iterdir() if data.exists() else [])
                  if (m := re.fullmatch(r"process_\d+-of-(\d+)\.bin", p.name))}
        return max(counts) if counts else None

    def restore(self, step: Optional[int] = None, *, abstract_state: Any, partial: bool = False,
                config: Optional[dict] = None) -> tuple[Any, dict]:
        """Restores `step` (default: the latest) onto the shapes, dtypes and shardings of `abstract_state`.

        abstract_state: a pytree of `jax.ShapeDtypeStruct` (with `.sharding`; a leaf without one lands on the
          default device) or of arrays, with the structure of the saved state.
        partial: restore only part of the saved state: `abstract_state` is then a dict of some of the saved
          state's top-level fields, e.g. `{'params': abstract_params}` to evaluate or to start fine-tuning
          without reading the optimizer state; the result has that structure. A partial restore does not make
          the directory this run's (see `save`).
        config: the restoring run's config (as passed to `save`): a mismatch error then also names the model
          config fields that differ from the saved run's.
        Returns `(state, metadata)`, metadata as in `read_metadata`. After a full restore, this run owns the
        directory: its saves continue there and keep-N may delete the older steps.
        """
        step = self._resolve_step(step)
        metadata = self.read_metadata(step)
        abstract_state = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
            else jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=getattr(x, "sharding", None)),
            abstract_state)
        expected = tree_fingerprint(abstract_state)
        saved = metadata["fingerprint"]
        if partial:
            saved = {path: entry for path, entry in saved.items() if path in expected}
        differences = fingerprint_differences(saved, expected)
        if differences:
            listed = "\n  ".join(differences[:_MAX_LISTED])
            more = f"\n  ... and {len(differences) - _MAX_LISTED} more" if len(differences) > _MAX_LISTED else ""
            fields = config_differences(metadata.get("config", {}), json.loads(json.dumps(config, default=str))
                                        ) if config is not None else []
            named = (f"The run that wrote it differs in {len(fields)} config field(s):\n  "
                     + "\n  ".join(fields[:_MAX_LISTED]) + "\n") if fields else ""
            raise CheckpointMismatchError(
                f"Checkpoint {self._path / str(step)} does not match the state being restored: "
                f"{len(differences)} of its arrays differ in path, shape or dtype:\n  {listed}{more}\n{named}"
                "It was written with another model (or optimizer) configuration. Use the same model gin file as "
                "the run that wrote it, or start a fresh --model_dir.")
        if partial:
            return self._restore_partial(step, abstract_state), metadata
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        self._owns_directory = True
        return restored.state, metadata

    # ------------------------------------------------------------------------------------- damaged checkpoints

    @property
    def quarantine_directory(self) -> str:
        """Where `restore_newest_good` moves damaged checkpoints: `<directory>.corrupt`, beside the directory
        (inside it orbax would count, or delete, them)."""
        return os.fspath(self._path) + ".corrupt"

    def _move_aside(self, path: epath.Path) -> str:
        target = epath.Path(self.quarantine_directory) / path.name
        suffix = 1
        while target.exists():
            target, suffix = epath.Path(self.quarantine_directory) / f"{path.name}.{suffix}", suffix + 1
        if jax.process_index() == 0:  # the others wait at the caller's sync
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        return os.fspath(target)

    def _sync(self, name: str) -> None:
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"plmjax_checkpointer_{name}")

    def move_unfinished_saves_aside(self) -> None:
        """Moves what crashed saves left (`<step>.orbax-checkpoint-tmp`, step directories without the commit
        file) to `quarantine_directory`, one line each: the run that owns the directory calls it on resuming."""
        self._sync("list_unfinished")
        unfinished = [] if not self._path.exists() else (
            [tmp.get() for tmp in ocp.utils.tmp_checkpoints(self._path)] + self._incomplete_step_dirs())
        for path in unfinished:
            where = self._move_aside(path)
            print(f"Checkpoint {path} is an unfinished save (no {COMMIT_FILE}): moved it to {where}.")
        self._sync("moved_unfinished")

    def restore_newest_good(self, *, abstract_state: Any,
                            config: Optional[dict] = None) -> tuple[Any, dict, Optional[bytes]]:
        """Restores the newest checkpoint that reads back whole: `(state, metadata, data_state)`.

        A damaged one (a truncated, missing or garbled file; a leftover temporary or uncommitted directory) is
        named in one line and moved to `quarantine_directory` (never deleted), and the next older one is tried.
        Raises CheckpointCorruptError naming the directory when none is good, CheckpointNotFoundError when there
        is none, and CheckpointMismatchError (another model config) as `restore` does.
        """
        self.move_unfinished_saves_aside()
        self._manager.reload()
        steps = self.all_steps()
        if not steps:
            self._resolve_step(None)  # raises CheckpointNotFoundError
        for step in reversed(steps):
            try:
                state, metadata = self.restore(step, abstract_state=abstract_state, config=config)
                return state, metadata, self.read_data_state(step)
            except CheckpointMismatchError:
                raise
            except Exception as error:  # noqa: BLE001  orbax / tensorstore / JSON errors of a damaged file
                first_line = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore")[0][:160]
                where = self._move_aside(self._path / str(step))
                self._sync(f"moved_damaged_{step}")
                self._owns_directory = False
                print(f"Checkpoint {self._path / str(step)} is damaged ({type(error).__name__}: {first_line}): "
                      f"moved it to {where}; trying the previous one.")
                self._manager.reload()
        raise CheckpointCorruptError(
            f"No readable checkpoint in {self.directory}: every one (steps {steps}) was damaged and moved to "
            f"{self.quarantine_directory}. Restore a copy of the checkpoints, or start a fresh --model_dir.")

    def _restore_partial(self, step: int, abstract_state: Any) -> Any:
        # StandardRestore reads whole trees only; orbax's PyTree handler restores a subtree of the same files.
        if self._partial_reader is None:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0, step_name_format=ocp.step.standard_name_format(
                    temporary_path_cls=ocp.path.atomicity.CommitFileTemporaryPath))
            self._partial_reader = ocp.CheckpointManager(
                self._path, options=options, item_names=("state", "metadata"),
                item_handlers={"state": ocp.PyTreeCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()})
        self._partial_reader.reload()
        args = ocp.args.PyTreeRestore(abstract_state, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
        return self._partial_reader.restore(step, args=ocp.args.Composite(state=args)).state



class _ReadOnlyNotice(logging.Filter):
    """Orbax warns 'Given directory is read only' whenever a read-only manager opens (every partial restore, every
    `plmjax parse` or `convert` load): nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_ReadOnlyNotice())

def _never_committed(step_dir: epath.Path) -> bool:
    """Whether orbax began this step directory and never committed it (a crashed save, not a copy)."""
    try:
        info = json.loads((step_dir / _STEP_METADATA).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(info, dict) and info.get("commit_timestamp_nsecs") is None


def checkpoint_root(path: str) -> str:
    """A model dir (holding `checkpoints/`), its `checkpoints` dir, or one step's dir -> the checkpoints dir."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints")
    if os.path.basename(path).isdigit():
        return os.path.dirname(path)
    return path


def checkpoint_step(path: str) -> Optional[int]:
    """The step a path names (`.../checkpoints/<step>`), or None for the latest."""
    base = os.path.basename(os.path.abspath(path))
    return int(base) if base.isdigit() else None
