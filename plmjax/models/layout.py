"""The two parameter layouts of a layer stack, and the conversion between them.

Unrolled (the default, what converters and golden trees use): one subtree per layer, `layers_0 .. layers_{n-1}`.
Scanned (`TransformerConfig.scan_layers=True`, one `nn.scan` over the layers): one subtree `layers` whose leaves
carry the per-layer leaves stacked on a new leading axis 0 (logical axis name 'layers').

    {'layers_0': {'w': [d]}, 'layers_1': {'w': [d]}}   <->   {'layers': {'w': [2, d]}}

`scan_params` / `unscan_params` convert any pytree that holds such dicts: parameters, gradients, optimizer
states (dicts, FrozenDicts, tuples, lists, NamedTuples such as optax's `ScaleByAdamState(mu=..., nu=...)`, flax
struct dataclasses such as `TrainState`), of numpy or jax arrays, `jax.ShapeDtypeStruct`s (the stacked one has no
sharding) or flax `nn.Partitioned` boxes (the stacked box's names are `('layers',) + names`).
"""
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import core
from flax.core import meta

LAYERS = 'layers'  # the scanned stack's key, and the logical axis name of its leading axis
_LAYER_KEY = re.compile(r'^layers_(\d+)$')


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, '_fields')


def _is_struct(x) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type) and not isinstance(x, meta.AxisMetadata) \
        and hasattr(x, 'replace')


def _rebuild_mapping(template, items: dict):
    if isinstance(template, core.FrozenDict):
        return core.FrozenDict(items)
    return type(template)(items) if type(template) is not dict else items


def _map_dicts(tree, fn):
    """Apply fn to every Mapping of the tree, bottom-up, through sequences, NamedTuples and struct dataclasses."""
    if isinstance(tree, Mapping):
        return fn(_rebuild_mapping(tree, {k: _map_dicts(v, fn) for k, v in tree.items()}))
    if _is_namedtuple(tree):
        return type(tree)(*(_map_dicts(v, fn) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map_dicts(v, fn) for v in tree)
    if _is_struct(tree):
        fields = [f.name for f in dataclasses.fields(tree) if f.metadata.get('pytree_node', True)]
        return tree.replace(**{name: _map_dicts(getattr(tree, name), fn) for name in fields})
    return tree


def _stack(items: list):
    """Stack the same-structured per-layer subtrees `items` into one subtree with a leading [n] axis."""
    first = items[0]
    if isinstance(first, Mapping):
        return _rebuild_mapping(first, {k: _stack([x[k] for x in items]) for k in first})
    if isinstance(first, meta.Partitioned):
        return first.replace(value=_stack([x.value for x in items]), names=(LAYERS,) + tuple(first.names))
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(items),) + tuple(first.shape), first.dtype)
    if _is_namedtuple(first):
        return type(first)(*(_stack([x[i] for x in items]) for i in range(len(first))))
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([x[i] for x in items]) for i in range(len(first)))
    if first is None:
        return None
    if any(isinstance(x, jax.Array) for x in items):
        return jnp.stack(items)
    return np.stack([np.asarray(x) for x in items])


def _leading_dim(tree) -> int:
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    shapes = [np.shape(x) if not isinstance(x, jax.ShapeDtypeStruct) else x.shape for x in leaves]
    dims = {s[0] for s in shapes if len(s)}
    if len(dims) != 1 or any(not len(s) for s in shapes):
        raise ValueError(f'A scanned `{LAYERS}` subtree needs leaves sharing one leading dimension, got shapes '
                         f'{sorted(set(shapes))}.')
    return dims.pop()


def _unstack(tree, i: int):
    """Layer i of a stacked subtree."""
    if isinstance(tree, Mapping):
        return _rebuild_mapping(tree, {k: _unstack(v, i) for k, v in tree.items()})
    if isinstance(tree, meta.Partitioned):
        return tree.replace(value=_unstack(tree.value, i), names=tuple(tree.names)[1:])
    if isinstance(tree, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(tree.shape[1:]), tree.dtype)
    if _is_namedtuple(tree):
        return type(tree)(*(_unstack(v, i) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_unstack(v, i) for v in tree)
    if tree is None:
        return None
    return np.asarray(tree[i]) if isinstance(tree, np.ndarray) else tree[i]


def _layer_indices(d: Mapping) -> list[int]:
    return sorted(int(m.group(1)) for m in map(_LAYER_KEY.match, d) if m)


def _scan_dict(d: Mapping):
    indices = _layer_indices(d)
    if not indices or indices != list(range(len(indices))):
        return d
    if LAYERS in d:
        raise ValueError(f'A dict holds both `{LAYERS}` and `layers_<i>` keys: {sorted(d)}.')
    items = {k: v for k, v in d.items() if not _LAYER_KEY.match(k)}
    items[LAYERS] = _stack([d[f'layers_{i}'] for i in indices])
    return _rebuild_mapping(d, items)


def _unscan_dict(d: Mapping):
    if not isinstance(d.get(LAYERS), Mapping):
        return d
    if _layer_indices(d):
        raise ValueError(f'A dict holds both `{LAYERS}` and `layers_<i>` keys: {sorted(d)}.')
    stacked = d[LAYERS]
    items = {k: v for k, v in d.items() if k != LAYERS}
    items.update({f'layers_{i}': _unstack(stacked, i) for i in range(_leading_dim(stacked))})
    return _rebuild_mapping(d, items)


def scan_params(tree: Any) -> Any:
    """Unrolled -> scanned: every dict's `layers_0 .. layers_{n-1}` become one `layers` stacked on axis 0."""
    return _map_dicts(tree, _scan_dict)


def unscan_params(tree: Any) -> Any:
    """Scanned -> unrolled: every dict's `layers` (leaves with a leading [n] axis) becomes `layers_0..layers_{n-1}`."""
    return _map_dicts(tree, _unscan_dict)


def is_scanned(tree: Any) -> bool:
    """Whether any dict of the tree holds a scanned `layers` subtree."""
    found = []
    _map_dicts(tree, lambda d: found.append(isinstance(d.get(LAYERS), Mapping)) or d)
    return any(found)
