"""Saving only the trained parameters of a PEFT model, and how small that is next to the full model.

    <directory>/adapter.json   {"method": ..., "parameters": count, "shapes": {path: [shape, dtype]}}
    <directory>/params/        the trainable subtree (`adapter_params`), an Orbax PyTree checkpoint
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn

from plmjax.peft.base import adapter_params, method_of

_INFO = 'adapter.json'


def _count(tree) -> int:
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree))


def _shapes(tree) -> dict[str, list]:
    return {jax.tree_util.keystr(path, simple=True, separator='/'): [list(np.shape(leaf)), str(np.asarray(leaf).dtype)]
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _save_tree(path: str, tree) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()


def save_adapter(directory: str, params, method: str) -> None:
    """Writes the trainable subtree of a `method` model's params (replaces an adapter saved there before)."""
    if method_of(params) != method:
        raise ValueError(f'save_adapter(method={method!r}) got the parameters of a {method_of(params)!r} model.')
    tree = jax.device_get(nn.meta.unbox(adapter_params(params)))
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, 'params')
    if os.path.exists(target):
        shutil.rmtree(target)
    _save_tree(target, tree)
    with open(os.path.join(directory, _INFO), 'w') as f:
        json.dump({'method': method, 'parameters': _count(tree), 'shapes': _shapes(tree)}, f, indent=1)


def load_adapter(directory: str) -> tuple[str, dict]:
    """(method, trainable subtree) as saved by `save_adapter`; put it back with `with_adapter(params, subtree)`."""
    info_path = os.path.join(directory, _INFO)
    if not os.path.exists(info_path):
        raise FileNotFoundError(f'No PEFT adapter in {directory!r} (no {_INFO}); adapters are written by '
                                'plmjax.peft.save_adapter (a PEFT training run puts one in <model_dir>/adapter).')
    with open(info_path) as f:
        info = json.load(f)
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(os.path.abspath(os.path.join(directory, 'params')))
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata.item_metadata.tree)
        tree = checkpointer.restore(os.path.abspath(os.path.join(directory, 'params')), target)
    return info['method'], jax.tree.map(np.asarray, tree)


def directory_bytes(path: str) -> int:
    """Bytes of all files under `path`."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def adapter_size(adapter_directory: str, full_model) -> dict[str, int]:
    """Bytes on disk of the saved adapter and of the full model, with their parameter counts. `full_model` is a
    directory (e.g. a checkpoint step) or the full params tree (written with the same Orbax format to measure)."""
    with open(os.path.join(adapter_directory, _INFO)) as f:
        adapter_count = json.load(f)['parameters']
    if isinstance(full_model, (str, os.PathLike)):
        full_bytes, full_count = directory_bytes(full_model), None
    else:
        tree = jax.device_get(nn.meta.unbox(full_model))
        with tempfile.TemporaryDirectory() as tmp:
            _save_tree(os.path.join(tmp, 'params'), tree)
            full_bytes, full_count = directory_bytes(tmp), _count(tree)
    return {'adapter_bytes': directory_bytes(adapter_directory), 'full_bytes': full_bytes,
            'adapter_parameters': adapter_count, 'full_parameters': full_count}
