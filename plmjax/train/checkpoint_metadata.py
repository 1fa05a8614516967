"""What a checkpoint step's metadata says about the state it holds, and how two of them differ: the tree
fingerprint (paths, shapes, dtypes), the checkpoint format and plmjax version, the run config. `checkpoint.py`
writes and checks them."""

from __future__ import annotations

import importlib.metadata
from typing import Any, Optional

import jax
import numpy as np

# The layout of a step (items, metadata fields); a checkpoint of a newer format is refused with one error. Steps
# written before the field existed are format 1.
CHECKPOINT_FORMAT = 1


def tree_fingerprint(tree: Any) -> dict[str, list]:
    """`{path: [shape, dtype]}` for every leaf of a pytree of arrays or `jax.ShapeDtypeStruct`s.

    Paths are '/'-joined keys (`params/encoder/layer_0/mlp/wi/kernel`, `opt_state/1/0/mu/...`).
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): [list(np.shape(leaf)), str(_dtype(leaf))]
            for path, leaf in leaves}


def plmjax_version() -> str:
    try:
        return importlib.metadata.version("plmjax")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was not pip-installed
        return "unknown"


def config_differences(saved: Any, expected: Any, prefix: str = "") -> list[str]:
    """Lines `field: saved X, now Y` for the fields of two JSON-like run configs (nested dicts) that differ; the
    operative gin text is left out (it differs with every comment)."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        lines = []
        for key in list(expected) + [k for k in saved if k not in expected]:
            if key != "operative_gin":
                lines += config_differences(saved.get(key, "(absent)"), expected.get(key, "(absent)"),
                                            f"{prefix}{key}.")
        return lines
    return [] if saved == expected else [f"{prefix.rstrip('.')}: saved {saved!r}, now {expected!r}"]


def _dtype(leaf) -> Any:
    return leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _describe(entry: Optional[list]) -> str:
    return "(absent)" if entry is None else f"{tuple(entry[0])} {entry[1]}"


def fingerprint_differences(saved: dict[str, list], expected: dict[str, list]) -> list[str]:
    """Lines `path: saved <shape dtype>, expected <shape dtype>` for every leaf that differs.

    In the order of the expected tree (a TrainState lists params before optimizer moments), then the paths only
    the checkpoint has.
    """
    lines = []
    for path in list(expected) + [path for path in saved if path not in expected]:
        old, new = saved.get(path), expected.get(path)
        if old is None or new is None or [list(old[0]), old[1]] != [list(new[0]), new[1]]:
            lines.append(f"{path}: saved {_describe(old)}, expected {_describe(new)}")
    return lines
