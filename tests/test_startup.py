"""What a user sees at start (plmjax/__init__.py): no TensorFlow start-up lines, no libtpu probing, in a fresh
process with the user's environment (not the test suite's JAX_PLATFORMS / TF_CPP_MIN_LOG_LEVEL)."""

import os
import subprocess
import sys

import pytest

import plmjax

# Lines seen before the fix, none of which a user can act on: TensorFlow's import (twice), its GPU search, and
# libtpu probing for TPU hardware when jax initializes its backends.
NOISE = ("absl::InitializeLog", "cudart_stub", "Could not find cuda drivers", "oneDNN custom operations",
         "cpu_feature_guard", "To enable the following instructions", "failed call to cuInit",
         "could not determine TPU", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "Logging before InitGoogle")

no_accelerator = pytest.mark.skipif(plmjax._has_accelerator(), reason="this machine has an accelerator: jax uses it")


def _user_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    # libtpu refuses to load while another process holds /tmp/libtpu_lockfile, silently: allow it, so that a
    # libtpu that probes prints its warnings here whatever else runs on the machine.
    return {**env, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", **extra}


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=_user_env(), capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), **kwargs)


def _assert_quiet(output: str) -> None:
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert noisy == []


@no_accelerator
def test_jax_starts_on_the_cpu_without_probing_libtpu():
    proc = _run(["-c", "import os, plmjax, jax; print(os.environ['JAX_PLATFORMS'], jax.devices()[0].platform)"],
                timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu"]
    _assert_quiet(proc.stdout + proc.stderr)


def test_a_set_jax_platforms_is_left_alone():
    proc = subprocess.run([sys.executable, "-c", "import os, plmjax; print(os.environ['JAX_PLATFORMS'])"],
                          env=_user_env(JAX_PLATFORMS="cpu,tpu"), capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "cpu,tpu"


def test_stderr_filter_drops_only_the_named_lines(capfd):
    with plmjax._DroppedStderrLines((b"noise",)):
        os.write(2, b"keep 1\nsome noise here\nkeep 2\n")
    assert capfd.readouterr().err == "keep 1\nkeep 2\n"


@pytest.mark.slow  # a 2-step quickstart run in a fresh process: about a minute on 2 idle cores (10 min at load 18)
def test_training_run_prints_no_start_up_noise(tmp_path):
    proc = _run(["-m", "plmjax.cli", "train", "--gin_file=gin_configs/quickstart.gin",
                 "--gin_param=train.num_steps=2", f"--model_dir={tmp_path / 'run'}"], timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "most_frequent_token_accuracy" in proc.stdout
    _assert_quiet(proc.stdout + proc.stderr)
