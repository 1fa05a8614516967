"""The trainer's answers to faults (docs/reliability.md): non-finite steps, preemption (SIGTERM / Ctrl-C).

* Non-finite losses and gradients: the jitted step (`step.train_step`) never applies an update whose loss or
  gradient norm is not finite and reports a per-step flag; `NonFiniteMonitor` reads those flags on the host only
  where the loop already waits for the devices (a log step, a checkpoint step, the end) and, with
  `nonfinite='stop'`, raises `NonFiniteError` naming the first bad step before any checkpoint after it is
  written; with 'skip' it counts the skipped steps and raises when more than `max_consecutive_skips` follow
  each other.
* One run per model dir: `lock_model_dir` creates the directory and holds an exclusive `flock` on
  `<model_dir>/.plmjax.lock` (process 0) until the run ends or the process dies, so a second run started on the
  same directory refuses with `ModelDirInUseError`; a directory that cannot be created or written gives one
  `ModelDirNotWritableError`.
* Preemption: `PreemptionWatcher` turns SIGTERM and the first SIGINT into a request to stop after the current
  step; the loop then saves that step synchronously and raises `Preempted` (`plmjax train` exits with
  `PREEMPTED_EXIT_STATUS`). A second SIGINT aborts at once (KeyboardInterrupt). Several processes agree on the
  step through jax's preemption sync manager (`CheckpointManager.reached_preemption`, i.e.
  `multihost_utils.reached_preemption_sync_point`), whose own SIGTERM notifier is then left in place; a SIGINT
  is forwarded to it as a SIGTERM. A watchdog ends the process with `GRACE_EXPIRED_EXIT_STATUS` when the step
  and its save take longer than the grace period.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

import jax
import numpy as np

NONFINITE_STOPPED_EXIT_STATUS = 3   # `plmjax train` stopped at a non-finite loss or gradient
PREEMPTED_EXIT_STATUS = 75          # SIGTERM / Ctrl-C: the current step was checkpointed; rerun to resume
GRACE_EXPIRED_EXIT_STATUS = 76      # the grace period ended before the preemption checkpoint was written
CHECKPOINT_WRITE_FAILED_EXIT_STATUS = 74  # a checkpoint could not be written (disk full, ...): sysexits' EX_IOERR

NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient (nonfinite='stop'), or too many in a row ('skip')."""


class Preempted(Exception):
    """The run stopped on SIGTERM / SIGINT after checkpointing `step` in `checkpoint`."""

    def __init__(self, step: int, checkpoint: str, signal_name: str):
        super().__init__(f"{signal_name}: stopped after step {step}; its checkpoint is {checkpoint}. Run the same "
                         "command again to resume from it.")
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class ModelDirInUseError(ValueError):
    """Another process holds the model directory's lock (a run is training there)."""


class ModelDirNotWritableError(ValueError):
    """The model directory cannot be created or written."""


LOCK_FILE = ".plmjax.lock"
_held_locks: dict[str, int] = {}  # model dir -> the open lock file descriptor of this process


def lock_model_dir(model_dir: str) -> None:
    """Creates `model_dir` and takes its lock (process 0; the others share it). A second call from the process
    that holds it (a run trained again from the same Python session) keeps it."""
    path = os.path.abspath(model_dir)
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        os.makedirs(path, exist_ok=True)
        if jax.process_index() != 0 or path in _held_locks:
            return
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ModelDirNotWritableError(
            f"Cannot write to the model dir {path}: {error.strerror or error} ({error.filename or path}). Pick a "
            "writable --model_dir, or fix the permissions of that directory.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ModelDirInUseError(
            f"{path} is in use by another run (pid {owner}, lock {lock_path}): two runs on one model dir would "
            "overwrite each other's checkpoints. Wait for it to end, or use another --model_dir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held_locks[path] = fd


def unlock_model_dir(model_dir: str) -> None:
    fd = _held_locks.pop(os.path.abspath(model_dir), None)
    if fd is not None:
        os.close(fd)  # releases the flock


def check_settings(nonfinite: str, max_consecutive_skips: int, preemption_grace_s: float) -> None:
    from plmjax.train.setup import ConfigError
    if nonfinite not in NONFINITE_MODES:
        raise ConfigError(f"train.nonfinite={nonfinite!r}: use 'stop' (default) or 'skip'.")
    if int(max_consecutive_skips) != max_consecutive_skips or max_consecutive_skips < 0:
        raise ConfigError(f"train.max_consecutive_skips={max_consecutive_skips!r}: use a non-negative integer.")
    if not preemption_grace_s > 0:
        raise ConfigError(f"train.preemption_grace_s={preemption_grace_s!r}: use a positive number of seconds.")


class CrashPoint:
    """Test-only fault injection: SIGKILL this process (no clean-up, as `kill -9`) at one point of the loop.

    Read from the environment when the loop starts (`from_env`):
      PLMJAX_TEST_CRASH_AFTER_STEP=10   right after step 10 (= PLMJAX_TEST_CRASH_AT='step:10')
      PLMJAX_TEST_CRASH_AT='save:8'     right after the asynchronous save of step 8 began (its files are being
                                        written by orbax's background thread)
      PLMJAX_TEST_CRASH_AT='restore'    right after a resumed run restored its checkpoint, before its next step
      PLMJAX_TEST_CRASH_AT='timer:5:120'  120 ms after step 5, wherever the run then is (a later step, a save)
    """

    PHASES = ("step", "save", "restore", "timer")

    def __init__(self, phase: Optional[str] = None, step: int = -1, delay_ms: float = 0.0):
        if phase is not None and phase not in self.PHASES:
            raise ValueError(f"PLMJAX_TEST_CRASH_AT phase {phase!r}: use one of {self.PHASES}.")
        self.phase, self.step, self.delay_ms = phase, int(step), float(delay_ms)

    @classmethod
    def from_env(cls, environ=os.environ) -> "CrashPoint":
        if environ.get("PLMJAX_TEST_CRASH_AFTER_STEP", "").strip():
            return cls("step", int(environ["PLMJAX_TEST_CRASH_AFTER_STEP"]))
        spec = environ.get("PLMJAX_TEST_CRASH_AT", "").strip()
        if not spec:
            return cls()
        phase, *rest = spec.split(":")
        return cls(phase, *(float(x) if i else int(x) for i, x in enumerate(rest)))

    def at(self, phase: str, step: int) -> None:
        """The loop passed `phase` of `step`: die now (or arm the timer) when this is the crash point."""
        if self.phase is None or (phase != self.phase and not (self.phase == "timer" and phase == "step")):
            return
        if phase == "restore":
            _kill_self()
        elif step == self.step:
            if self.phase == "timer":
                timer = threading.Timer(self.delay_ms / 1000.0, _kill_self)
                timer.daemon = True
                timer.start()
                self.phase = None  # armed once
            else:
                _kill_self()


def _kill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def poison_batch(batch: dict) -> dict:
    """The batch with its float features (loss weights) made NaN: the tests' non-finite fault injection."""
    return {name: value * np.nan if np.issubdtype(np.asarray(value).dtype, np.floating) else value
            for name, value in batch.items()}


# ------------------------------------------------------------------------------------------- non-finite steps


class NonFiniteMonitor:
    """Collects the jitted step's `nonfinite` flags (device scalars) and checks them where the loop syncs."""

    def __init__(self, mode: str, max_consecutive_skips: int):
        self.mode, self.max_consecutive = mode, int(max_consecutive_skips)
        self.skipped = 0        # non-finite steps so far (their updates were not applied)
        self.consecutive = 0    # the current run of them
        self._pending: list[tuple[int, Any]] = []

    def add(self, step: int, flag) -> None:
        self._pending.append((step, flag))

    def check(self, last_checkpoint: Callable[[], str]) -> None:
        """Reads the pending flags (one device_get); raises NonFiniteError as the mode says."""
        if not self._pending:
            return
        flags = jax.device_get([flag for _, flag in self._pending])
        steps = [step for step, _ in self._pending]
        self._pending = []
        for step, flag in zip(steps, flags):
            if not bool(np.asarray(flag)):
                self.consecutive = 0
                continue
            self.skipped += 1
            self.consecutive += 1
            if self.mode == "stop":
                raise NonFiniteError(
                    f"Non-finite loss or gradient at step {step}: its update was not applied and training stopped "
                    f"(train.nonfinite='stop'). No checkpoint after it was written; the last good one is "
                    f"{last_checkpoint()}. Lower the learning rate or clip gradients, check the data of that step, "
                    "or set train.nonfinite='skip' to skip such steps.")
            if self.consecutive > self.max_consecutive:
                raise NonFiniteError(
                    f"{self.consecutive} consecutive non-finite steps (to step {step}), more than "
                    f"train.max_consecutive_skips={self.max_consecutive}: training stopped. The last good "
                    f"checkpoint is {last_checkpoint()}; the run is diverging (lower the learning rate, check the "
                    "data).")


# ------------------------------------------------------------------------------------------------ preemption


def _preemption_service_running() -> bool:
    from jax._src import distributed
    return (distributed.global_state.client is not None
            and distributed.global_state.preemption_sync_manager is not None)


class PreemptionWatcher:
    """Installs the SIGTERM / SIGINT handlers for the loop's lifetime (a context manager).

    `should_stop(step)` is called once per step on every process, after the step: True means save this step
    and stop. With one process it reads the flag the handlers set; with several, jax's preemption sync point
    (every process returns True at the same step).
    """

    def __init__(self, grace_s: float, reached_preemption: Callable[[int], bool]):
        self.grace_s = float(grace_s)
        self._reached_preemption = reached_preemption
        self._multi = _preemption_service_running()
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}
        self._watchdog: Optional[threading.Timer] = None

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        if not self._multi:  # several processes: jax's notifier owns SIGTERM
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt("second Ctrl-C: aborting without a checkpoint")
        if self.signal_name is None:
            self.signal_name = name
            print(f"{name} received: finishing the current step and checkpointing it (within "
                  f"{self.grace_s:g} s; Ctrl-C again aborts).", file=sys.stderr, flush=True)
            self._start_watchdog()
            if self._multi and signum == signal.SIGINT:
                os.kill(os.getpid(), signal.SIGTERM)  # jax's notifier tells the other processes

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.grace_s, _grace_expired, args=(self.grace_s,))
            self._watchdog.daemon = True
            self._watchdog.start()

    def should_stop(self, step: int) -> bool:
        if self._multi:
            if self._reached_preemption(step):
                self.signal_name = self.signal_name or "SIGTERM"
                self._start_watchdog()
                return True
            return False
        return self.signal_name is not None


def _grace_expired(grace_s: float) -> None:
    print(f"Preemption grace period (train.preemption_grace_s={grace_s:g}) expired before the checkpoint was "
          f"written: exiting with status {GRACE_EXPIRED_EXIT_STATUS}; the previous checkpoints are intact.",
          file=sys.stderr, flush=True)
    os._exit(GRACE_EXPIRED_EXIT_STATUS)
