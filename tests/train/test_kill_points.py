"""kill -9 at 10 points of a `plmjax train` run chosen by a seeded generator (issue 18): between steps, while an
asynchronous save is being written, right after a resume restored its checkpoint, and on a timer that lands
wherever the run then is. Each kill is followed by a resume (which the next point kills again); every
resume starts from the newest checkpoint committed before the kill, no committed checkpoint is lost, and every
checkpoint the chain writes is bit-identical to the same step of a run that was never killed."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import reliability
from tests.conftest import REPO_ROOT
from tests.train.saved_state import load_saved_state

STEPS, EVERY = 40, 4


def kill_points(seed: int = 0) -> list[tuple[str, int, float]]:
    """10 (phase, step, delay_ms) points in run order: 3 during a save, 3 after a step, 2 on a timer, 2 right
    after a restore (never first: the first run has nothing to restore)."""
    rng = np.random.default_rng(seed)
    # Every point before step 33, so that a timer kill that runs on for a few steps still leaves room.
    saves = [int(s) for s in rng.choice(np.arange(EVERY, 33, EVERY), 3, replace=False)]
    others = [int(s) for s in rng.choice([s for s in range(1, 33) if s not in saves], 5, replace=False)]
    kinds = {s: "save" for s in saves}
    for s, kind in zip(others, rng.permutation(["step", "step", "step", "timer", "timer"])):
        kinds[s] = str(kind)
    points = [(kinds[s], s, float(rng.uniform(1, 40)) if kinds[s] == "timer" else 0.0) for s in sorted(kinds)]
    for where in sorted(rng.choice(np.arange(1, len(points) + 1), 2, replace=False), reverse=True):
        points.insert(int(where), ("restore", -1, 0.0))
    return points


def _env(point=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("PLMJAX_TEST_CRASH_AFTER_STEP", None)
    if point is not None:
        phase, step, delay = point
        env["PLMJAX_TEST_CRASH_AT"] = {"restore": "restore", "timer": f"timer:{step}:{delay}"}.get(phase,
                                                                                                   f"{phase}:{step}")
    return env


def _train(model_dir, point=None):
    cmd = [sys.executable, "-m", "plmjax.cli", "train", "--gin_file=gin_configs/experiments/tiny_bert_mlm.gin",
           f"--model_dir={model_dir}", f"--gin_param=NUM_STEPS = {STEPS}",
           f"--gin_param=train.checkpoint_every = {EVERY}", "--gin_param=train.log_every = 2",
           "--gin_param=train.progress = False", "--gin_param=train.keep_checkpoints = 100",
           "--gin_param=train.eval_batches = 1"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(point), capture_output=True, text=True, timeout=600)


def _state_bytes(model_dir, step):
    leaves = jax.tree.leaves(load_saved_state(model_dir, step))
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            .tobytes() for x in leaves]


def test_kill_points_are_seeded_and_cover_every_phase():
    points = kill_points(0)
    assert points == kill_points(0) and len(points) == 10
    assert points[0][0] != "restore"
    assert sorted(p[0] for p in points) == ["restore"] * 2 + ["save"] * 3 + ["step"] * 3 + ["timer"] * 2
    steps = [s for phase, s, _ in points if phase != "restore"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert all(s % EVERY == 0 for phase, s, _ in points if phase == "save")


def _reachable(point, newest):
    """A step point at or before the step a resume starts from (a timer kill ran past it) moves just after it."""
    if point is None or point[0] == "restore" or point[1] > newest:
        return point
    return (point[0], newest + (EVERY if point[0] == "save" else 1), point[2])


def _describe(point):
    phase, step, delay = point
    return {"restore": "right after a resume restored its checkpoint", "save": f"while saving step {step}",
            "step": f"after step {step}", "timer": f"{delay:.0f} ms after step {step}"}[phase]


@pytest.mark.slow
def test_ten_kills_each_resume_bit_exactly(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = _train(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = {step: _state_bytes(straight, step) for step in range(EVERY, STEPS + 1, EVERY)}

    points = kill_points(0)
    current = points[0]
    result = _train(killed, current)
    assert result.returncode == -9, (result.returncode, result.stderr[-3000:])
    for i in range(len(points)):
        before = reliability.committed(killed)
        newest = max(before, default=0)
        names = os.listdir(killed / "checkpoints") if (killed / "checkpoints").exists() else []
        unfinished = [name for name in names
                      if ".orbax-checkpoint-tmp" in name or (name.isdigit() and int(name) not in before)]
        following = _reachable(points[i + 1], newest) if i + 1 < len(points) else None
        result = _train(killed, following)  # the resume, killed at the next point
        label = _describe(current) + (f" (left unfinished: {', '.join(sorted(unfinished))})" if unfinished else "")
        with reliability.case("kill -9, then resume", f"seeded point {i + 1}: {label}") as case:
            case.data_lost = len(reliability.lost(before, killed))
            assert case.data_lost == 0, (label, reliability.lost(before, killed))
            if newest:
                resumed = re.search(r"Resumed from .* at step (\d+) \(batch (\d+)\)", result.stdout)
                assert resumed and int(resumed.group(1)) == newest == int(resumed.group(2)), \
                    (label, newest, result.stdout[-2000:])
            assert result.returncode == (0 if following is None else -9), (label, result.returncode,
                                                                             result.stderr[-3000:])
            after = reliability.committed(killed)
            for step in sorted(set(after) - set(before)):  # what this resume wrote
                assert _state_bytes(killed, step) == reference[step], (label, step)
        print(f"kill {i + 1}: {label}; resumed from step {newest}")
        current = following
    assert max(reliability.committed(killed)) == STEPS and (killed / "summary.json").exists()
    for step, expected in reference.items():
        assert _state_bytes(killed, step) == expected, step
