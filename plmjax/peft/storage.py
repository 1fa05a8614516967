"""How small a PEFT model's trained parameters are next to the full model, from shapes and dtypes.

Saving and loading adapters is the trainer's checkpoint writer's job: `plmjax.train.adapter.save_adapter` /
`load_adapter` (peft sits below train and does not write checkpoints).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from flax import linen as nn

from plmjax.peft.base import adapter_params


def _count_and_bytes(tree) -> tuple[int, int]:
    leaves = jax.tree.leaves(nn.meta.unbox(tree))
    count = sum(math.prod(np.shape(leaf)) for leaf in leaves)
    return count, sum(math.prod(np.shape(leaf)) * np.dtype(leaf.dtype).itemsize for leaf in leaves)


def adapter_size(params) -> dict[str, int]:
    """Parameter counts and bytes (sum of size x itemsize) of a PEFT model's trainable subtree and of all its
    parameters; arrays or `jax.ShapeDtypeStruct`s."""
    adapter_count, adapter_bytes = _count_and_bytes(adapter_params(params))
    full_count, full_bytes = _count_and_bytes(params)
    return {'adapter_bytes': adapter_bytes, 'full_bytes': full_bytes,
            'adapter_parameters': adapter_count, 'full_parameters': full_count}
