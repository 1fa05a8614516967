"""`plmjax train` (cli.main, unchanged) with two recorders, for tests/train/test_restore_topology.py.

    python -m tests.train.topology_probe train --gin_file=... --model_dir=...    (PLMJAX_TEST_PROBE_DIR=<dir>)

It only observes; the run is the CLI's. Into $PLMJAX_TEST_PROBE_DIR it writes
* `batch_p<process>_<n>.npz`: the n-th batch (0-based, counted from this process's start) that the training
  loop's data iterator returned on this process, as read (before the 'slice' mode keeps this host's rows);
* `restored.npz` + `restored.json` (when the run resumed): every leaf of the state as `restore_newest_good`
  returned it, on this process's mesh, and per leaf the mesh shape and partition spec it was restored into,
  plus the step, data position and whether a saved iterator state fitted this process.
"""

import json
import os
import sys

import jax
import numpy as np

from plmjax import cli
from plmjax.data import pipeline
from plmjax.train import checkpoint

OUT = os.environ["PLMJAX_TEST_PROBE_DIR"]
os.makedirs(OUT, exist_ok=True)

_next = pipeline.DataIterator.__next__
_count = [0]


def _recording_next(self):
    batch = _next(self)
    np.savez(os.path.join(OUT, f"batch_p{jax.process_index()}_{_count[0]:03d}.npz"), **batch)
    _count[0] += 1
    return batch


def _key(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


_restore = checkpoint.Checkpointer.restore_newest_good


def _recording_restore(self, **kwargs):
    state, meta, data_state = _restore(self, **kwargs)
    if jax.process_count() == 1:  # every array is addressable here
        arrays, layout = {}, {}
        for path, leaf in jax.tree_util.tree_leaves_with_path(state):
            value = jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
            arrays[_key(path)] = np.asarray(value)
            layout[_key(path)] = {"mesh": dict(leaf.sharding.mesh.shape), "spec": str(leaf.sharding.spec),
                                  "devices": len(leaf.sharding.device_set)}
        np.savez(os.path.join(OUT, "restored.npz"), **arrays)
        with open(os.path.join(OUT, "restored.json"), "w") as f:
            json.dump({"step": meta["step"], "data_position": meta["data_position"],
                       "data_state": None if data_state is None else len(data_state),
                       "device_count": jax.device_count(), "layout": layout}, f)
    return state, meta, data_state


pipeline.DataIterator.__next__ = _recording_next
checkpoint.Checkpointer.restore_newest_good = _recording_restore

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
