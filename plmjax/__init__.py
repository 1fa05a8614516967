"""plmjax: pre-trained language models in JAX/Flax.

Importing the package sets the process up so that a user sees only messages they can act on (this runs before
jax or TensorFlow is imported by any plmjax module; it imports neither):

- JAX: on a machine with no TPU, GPU or other accelerator, `JAX_PLATFORMS` defaults to 'cpu'. Otherwise jax
  initializes libtpu (installed by plmjax's [tpu] extra for `plmjax plan`), which probes for TPU hardware and a
  metadata server, prints "could not determine TPU accelerator type" warnings and takes /tmp/libtpu_lockfile.
  `plmjax plan` loads libtpu for its topologies on its own (`plan.hardware.topology_devices`).
- TensorFlow (it only reads data): its C++ logs below ERROR are off (`TF_CPP_MIN_LOG_LEVEL`); the lines its
  import writes before logging is configured, which `TF_CPP_MIN_LOG_LEVEL` does not reach (tensorflow#100442:
  "Could not find cuda drivers", "oneDNN custom operations are on", the CPU-instructions notice), are dropped
  from stderr while `import tensorflow` runs, every other line passes through; and TensorFlow sees no GPU, so it
  never takes accelerator memory from JAX (looking for GPUs logs "failed call to cuInit" where there is none:
  dropped too).

Any variable already set is left alone.
"""

import glob
import importlib.abc
import importlib.util
import os
import sys
import threading

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (what jax's hardware_utils looks for)
_GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
# Lines TensorFlow's import prints that no user can act on.
_TF_IMPORT_NOISE = (b"All log messages before absl::InitializeLog() is called are written to STDERR",
                    b"Could not find cuda drivers on your machine", b"oneDNN custom operations are on",
                    b"cpu_feature_guard.cc", b"To enable the following instructions:",
                    b"failed call to cuInit")  # hiding GPUs from TensorFlow looks for them


def _has_accelerator() -> bool:
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return any(os.path.exists(p) for p in _GPU_DEVICE_FILES)


class _DroppedStderrLines:
    """Drops lines containing any of `patterns` from file descriptor 2 (C++ writes too) inside the block;
    a thread forwards every other line at once, so nothing else is lost or delayed."""

    def __init__(self, patterns):
        self.patterns = patterns

    def _forward(self, read_fd, saved_fd):
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not any(p in line for p in self.patterns):
                    os.write(saved_fd, line)

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._forward, args=(read_fd, self.saved), daemon=True)
        self.thread.start()

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        self.thread.join(timeout=10)
        os.close(self.saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, with a loader that imports it under `_DroppedStderrLines` and hides GPUs from it."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with _DroppedStderrLines(_TF_IMPORT_NOISE):
                exec_module(module)
                if hasattr(module, "config"):  # TensorFlow reads data; accelerators belong to JAX
                    module.config.set_visible_devices([], "GPU")

        spec.loader.exec_module = quiet_exec_module
        return spec


def _set_up_environment() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "JAX_PLATFORMS" not in os.environ and "jax" not in sys.modules and not _has_accelerator():
        os.environ["JAX_PLATFORMS"] = "cpu"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


_set_up_environment()
