"""A PEFT run's trained parameters on disk, through the one checkpoint writer (`train.checkpoint.Checkpointer`).

    <directory>/<n>/state/      the trainable subtree (`peft.adapter_params`), Orbax
    <directory>/<n>/metadata/   JSON: the method and parameter count (`config`), the subtree's fingerprint

Each `save_adapter` writes the next step `n` and only then (keep-1) deletes the previous one, both atomically, so
a crash while saving leaves the previous adapter loadable. Every process calls it (Orbax writes each array
once, from the process that holds it).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from plmjax import peft as peft_lib
from plmjax.train import checkpoint as checkpoint_lib

ADAPTER_DIR = 'adapter'  # a PEFT run's adapter: <model_dir>/adapter


def save_adapter(directory: str, params: Any, method: str) -> None:
    """Writes the trainable subtree of a `method` model's params to `directory`, replacing the adapter there."""
    if peft_lib.method_of(params) != method:
        raise ValueError(f'save_adapter(method={method!r}) got the parameters of a {peft_lib.method_of(params)!r} '
                         'model.')
    tree = nn.meta.unbox(peft_lib.adapter_params(params))
    count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree))
    with checkpoint_lib.Checkpointer(os.fspath(directory), max_to_keep=1, async_save=False,
                                     owns_directory=True) as checkpointer:
        step = (checkpointer.latest_step() or 0) + 1
        checkpointer.save(step, tree, data_position=0, config={'method': method, 'parameters': count}, force=True)


def load_adapter(directory: str) -> tuple[str, dict]:
    """(method, trainable subtree as numpy) as saved by `save_adapter`; put it back with `peft.with_adapter`."""
    checkpointer = checkpoint_lib.Checkpointer(os.fspath(directory))
    try:
        metadata = checkpointer.read_metadata()
        abstract = traverse_util.unflatten_dict({
            tuple(path.split('/')): jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
            for path, (shape, dtype) in metadata['fingerprint'].items()})
        tree, _ = checkpointer.restore(abstract_state=abstract)
    except checkpoint_lib.CheckpointNotFoundError as e:
        raise FileNotFoundError(f'No PEFT adapter in {os.fspath(directory)!r} ({e}); adapters are written by '
                                'plmjax.train.adapter.save_adapter (a PEFT training run puts one in '
                                '<model_dir>/adapter).') from None
    finally:
        checkpointer.close()
    return metadata['config']['method'], jax.tree.map(np.asarray, tree)


def save_run_adapter(model_dir: str, params: Any, method: str, log=print) -> dict[str, int]:
    """Writes `model_dir/adapter` and reports its size beside the full model's (`peft.adapter_size`)."""
    directory = os.path.join(model_dir, ADAPTER_DIR)
    save_adapter(directory, params, method)
    size = peft_lib.adapter_size(params)
    if jax.process_index() == 0:
        log(f"Adapter ({method}) saved to {directory}: {size['adapter_parameters']:,} parameters, "
            f"{size['adapter_bytes'] / 2**20:.2f} MiB, against the full model's {size['full_parameters']:,} "
            f"parameters, {size['full_bytes'] / 2**20:.2f} MiB "
            f"({100 * size['adapter_bytes'] / max(size['full_bytes'], 1):.2f}%).")
    return size
