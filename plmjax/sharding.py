"""Mesh construction and the one table that maps logical axis names onto mesh axes.

Every parameter and large activation in plmjax carries logical axis names from
`batch length embed heads kv mlp vocab expert layers stage`. `LOGICAL_AXIS_RULES` maps them onto the mesh axes
`('data', 'fsdp', 'tensor', 'expert', 'stage')`. Rules are tried in order and a mesh axis is used at most once per array
(flax's semantics), so for an activation `[batch, length, embed]` the batch takes `('data', 'fsdp', 'expert')` and
embed stays replicated, while a parameter `[embed, mlp]` is split over `fsdp` and `tensor`. Expert parallelism
(plmjax.layers.moe): expert weights `[expert, embed, mlp]` and the experts' activations `[expert, batch, ...]` are
split over `expert` (tried before `batch`, whose second rule then leaves `expert` out); outside the experts the
`expert` axis splits the batch, as MaxText does, and XLA's partitioner inserts the all-to-alls between the two.
A pipelined stack's leading [stages] axis is split over `stage` (plmjax.models.pipeline).
A run may replace rules (`logical_axis_rules(overrides)`, gin: `train.logical_axis_rules = @logical_axis_rules()`).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert", "stage")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("expert", "expert"),
    ("batch", ("data", "fsdp", "expert")),
    ("batch", ("data", "fsdp")),  # arrays whose 'expert' axis already takes the expert mesh axis
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("stage", "stage"),  # a pipelined stack's leading [stages] axis (plmjax.models.pipeline)
)


def logical_axis_rules(overrides: Sequence[tuple[str, str | tuple[str, ...] | None]] = (),
                       base: Sequence = LOGICAL_AXIS_RULES) -> tuple:
    """The rules table with `overrides` in place of the rules for the axes they name, e.g.
    `(('embed', None), ('mlp', ('fsdp', 'tensor')))` (gin: `logical_axis_rules.overrides = [...]`)."""
    overrides = tuple((str(name), tuple(axes) if isinstance(axes, list) else axes) for name, axes in overrides)
    unknown = [name for name, _ in overrides if name not in {rule[0] for rule in base}]
    if unknown:
        raise ValueError(f"logical_axis_rules.overrides names unknown logical axes {unknown}; the axes are "
                         f"{tuple(rule[0] for rule in base)}.")
    named = {name for name, _ in overrides}
    return overrides + tuple(rule for rule in base if rule[0] not in named)


def create_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None,
                expert: int = 1, stage: int = 1) -> Mesh:
    """A `('data', 'fsdp', 'tensor', 'expert', 'stage')` mesh over all (or the given) devices; one size
    may be -1 (the rest). `stage` splits a pipelined layer stack (TransformerConfig.pipeline_stages) into its
    stages.

    Axes are `Auto`, as linen's logical constraints need (make_mesh's default Explicit axes break them).
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = [data, fsdp, tensor, expert, stage]
    if shape.count(-1) > 1:
        raise ValueError(f"Mesh shape {dict(zip(MESH_AXES, shape))}: at most one axis may be -1.")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"Mesh shape {dict(zip(MESH_AXES, shape))} does not divide the {len(devices)} devices: "
                "change create_mesh.data/fsdp/tensor/expert/stage in the mesh gin file.")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"Mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but {len(devices)} are "
            "available: change create_mesh.data/fsdp/tensor/expert/stage in the mesh gin file (one of them may be -1).")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Maps a pytree of logical `PartitionSpec`s (from `nn.get_partition_spec`) to `NamedSharding`s."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """Sharding of a `[batch, length]` input array: batch split over the data-parallel axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> dict[str, jax.Array]:
    """Puts this host's part of a batch on the mesh as one global array per feature.

    With several processes each host passes its own shard (`seqio.ShardInfo`); the global batch is their
    concatenation along the batch axis.
    """
    sharding = batch_sharding(mesh, rules)
    return {
        name: jax.make_array_from_process_local_data(
            NamedSharding(mesh, PartitionSpec(*sharding.spec[: np.ndim(value)])), value)
        for name, value in batch.items()
    }


def host_shard_info() -> "seqio.ShardInfo | None":
    """This process's shard of the input data (each host reads only its own part); None on one host."""
    if jax.process_count() == 1:
        return None
    import seqio  # here, not at the top: the train step imports this module, and seqio pulls in TensorFlow
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def host_rows(batch: dict[str, np.ndarray], mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> dict[str, np.ndarray]:
    """This process's rows of a global batch: the rows its devices hold under the batch sharding."""
    if jax.process_count() == 1:
        return batch
    global_size = len(next(iter(batch.values())))
    indices = batch_sharding(mesh, rules).addressable_devices_indices_map((global_size, 1))
    starts = sorted({idx[0].start or 0 for idx in indices.values()})
    stops = sorted({global_size if idx[0].stop is None else idx[0].stop for idx in indices.values()})
    rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])  # [local_batch]
    return {name: value[rows] for name, value in batch.items()}


def in_mesh(fn, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """`fn` (a jitted function) called inside `mesh` and the logical axis `rules`, which its trace reads."""
    @functools.wraps(fn)
    def run(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return fn(*args)
    return run
