"""Reads a saved training state as it is on disk, onto this process's first device (any saving topology)."""

import os

import jax
import orbax.checkpoint as ocp


def load_saved_state(model_dir, step):
    path = os.path.join(model_dir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata)
    return checkpointer.restore(path, target)
