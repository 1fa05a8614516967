"""bert2BERT growth (Chen et al., ACL 2022): a small encoder's parameters -> a wider and deeper encoder's, before
continued pre-training. A parameter transform (DESIGN.md: compression wraps, never forks the model).

Width (hidden size d -> D, heads h -> H with the same head_dim, FFN f -> F) through maps g: new unit j copies
small unit g(j) (g(j) = j for the first units; the rest drawn uniformly with a seed, the paper's choice, or
'cyclic' j mod n):
- FPI (function-preserving initialization): a weight's *output* side is copied along g; its *input* side is
  copied and divided by the number of copies of each unit, so a sum over the copies of a unit gives the small
  model's sum. The grown network computes the same function on every copy of every unit: each FFN neuron and
  each head is exact; along the hidden size every residual stream value is copied, and LayerNorm's mean and
  variance are unchanged when every hidden unit has the same number of copies (D a multiple of d, 'cyclic') —
  otherwise they shift slightly (the paper's remark); the grown encoder then outputs the small one's hidden
  states, each repeated, and a classifier head (input side divided) its logits. A *tied* vocabulary projection
  reads the copied hidden states with the copied (not divided) embedding table, so MLM logits are scaled by the
  copy count when d grows: tied weights cannot be both the input table and a divided output matrix.
- AKI (advanced knowledge initialization): as FPI, but the new units (j >= n) of layer l's head and FFN
  in-projections (query/key/value, wi) are copied from layer l + 1 (the top layer from itself), and so are the
  matching rows of the out-projections; not function-preserving by design (it breaks the symmetry of copies).
Depth (L -> L'): stacking, layer i of the grown model is layer i mod L of the width-grown one (the paper's
StackBERT-style depth growth); `grow_params(..., depth_first=False)` always grows width first.

Works on the unrolled layout (`layers_0 ...`); a scanned checkpoint is first rewritten with `plmjax convert
--layout unrolled`. The paper's two-stage pre-training schedule (train sub-models of the grown model's bottom
layers, then the full one) is a trainer option: `compression.two_stage` (`train.two_stage = @two_stage()`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import numpy as np
from flax import traverse_util

from plmjax.models.config import TransformerConfig

_GROWABLE = ("emb_dim", "num_heads", "mlp_dim", "num_encoder_layers")

# Parameter path (within a layer or the model) -> the growth axes of each array dimension:
#   'd' hidden copied, 'd/' hidden copied and divided, 'h' heads copied, 'h/' divided, 'f' FFN, 'f/', None kept.
_RULES = [
    (r"self_attention/(query|key|value)/kernel$", ("d/", "h", None)),
    (r"self_attention/(query|key|value)/bias$", ("h", None)),
    (r"self_attention/out/kernel$", ("h/", None, "d")),
    (r"mlp/wi/kernel$", ("d/", "f")),
    (r"mlp/wi/bias$", ("f",)),
    (r"mlp/wo/kernel$", ("f/", "d")),
    (r"(^|/)(embedding|position_embedder/embedding|token_type_embedder/embedding)$", (None, "d")),
    (r"(norm|_norm)/(scale|bias)$", ("d",)),
    (r"(self_attention/out|mlp/wo|transform|pooler/dense)/bias$", ("d",)),
    (r"(transform|pooler/dense)/kernel$", ("d/", "d")),
    (r"mlm_head/bias$", (None,)),
    (r"(classifier|tagger|span|choice)[^/]*/(dense/)?kernel$", ("d/", None)),
    (r"(classifier|tagger|span|choice)[^/]*/(dense/)?bias$", (None,)),
]


class GrowthError(ValueError):
    """The target config is not a growth of the source, or a parameter has no growth rule."""


def unit_map(n: int, new: int, mapping: str, rng: np.random.Generator) -> np.ndarray:
    """g: for each of `new` units the small unit it copies; the first n are themselves."""
    if new < n:
        raise GrowthError(f"cannot grow {n} units into {new}: bert2BERT only grows.")
    extra = np.arange(n, new) % n if mapping == "cyclic" else rng.integers(0, n, new - n)
    return np.concatenate([np.arange(n), extra]).astype(np.int64)


def _expand(x: np.ndarray, axis: int, g: np.ndarray, divide: bool) -> np.ndarray:
    y = np.take(x, g, axis=axis)
    if divide:
        counts = np.bincount(g, minlength=x.shape[axis]).astype(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = len(g)
        y = y / counts[g].reshape(shape)
    return y


def _rule(path: str):
    for pattern, axes in _RULES:
        if re.search(pattern, path):
            return axes
    return None


def _grow_array(path: str, x: np.ndarray, maps: dict, source: Optional[np.ndarray] = None) -> np.ndarray:
    axes = _rule(path)
    if axes is None or len(axes) != x.ndim:
        raise GrowthError(f"bert2BERT growth has no rule for the parameter {path} {x.shape}; it grows BERT-style "
                          "encoders (embeddings, attention, FFN, norms, MLM head, pooler, classifier heads).")
    y = x
    for axis, kind in enumerate(axes):
        if kind is not None:
            y = _expand(y, axis, maps[kind[0]], divide=kind.endswith("/"))
    if source is not None:  # AKI: the new units' slices come from the layer above
        y_above = _grow_array(path, source, maps)
        for axis, kind in enumerate(axes):
            if kind is not None and kind[0] in "hf":
                new = np.arange(y.shape[axis]) >= x.shape[axis]
                shape = [1] * y.ndim
                shape[axis] = -1
                y = np.where(new.reshape(shape), y_above, y)
    return y


def check_growth(small: TransformerConfig, large: TransformerConfig) -> None:
    """One error naming every field that differs other than the growable ones, or that shrinks."""
    problems = []
    for field in dataclasses.fields(TransformerConfig):
        a, b = getattr(small, field.name), getattr(large, field.name)
        if field.name in _GROWABLE:
            if b < a:
                problems.append(f"{field.name} shrinks ({a} -> {b})")
        elif a != b and field.name not in ("name", "scan_layers"):
            problems.append(f"{field.name} differs ({a!r} -> {b!r})")
    if small.num_decoder_layers or large.num_decoder_layers:
        problems.append("bert2BERT growth is for encoders (num_decoder_layers must be 0)")
    if small.scan_layers:
        problems.append("the small model's layers are scanned: rewrite it with `plmjax convert --layout unrolled`")
    if problems:
        raise GrowthError("Cannot grow " + small.name + " into " + large.name + ": " + "; ".join(problems)
                          + ". Only emb_dim, num_heads, mlp_dim and num_encoder_layers may grow (head_dim stays).")


def grow_params(params: Any, small: TransformerConfig, large: TransformerConfig, *, method: str = "fpi",
                mapping: str = "random", seed: int = 0) -> Any:
    """The parameters of `large` grown from `params` of `small` (an unboxed, unrolled parameter tree of any
    encoder architecture) by bert2BERT's FPI or AKI, then stacking for depth."""
    if method not in ("fpi", "aki"):
        raise GrowthError(f"method={method!r}: use 'fpi' or 'aki'.")
    if mapping not in ("random", "cyclic"):
        raise GrowthError(f"mapping={mapping!r}: use 'random' (the paper's) or 'cyclic'.")
    check_growth(small, large)
    rng = np.random.default_rng(seed)
    maps = {"d": unit_map(small.emb_dim, large.emb_dim, mapping, rng),
            "h": unit_map(small.num_heads, large.num_heads, mapping, rng),
            "f": unit_map(small.mlp_dim, large.mlp_dim, mapping, rng)}
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    layer = re.compile(r"(^|/)layers_(\d+)/")
    grown = {}
    for path, x in flat.items():
        found = layer.search(path)
        above = None
        if found and method == "aki":
            index = int(found.group(2))
            upper = layer.sub(f"{found.group(1)}layers_{min(index + 1, small.num_encoder_layers - 1)}/", path, 1)
            above = flat[upper]
        grown[path] = _grow_array(path, x, maps, above)
    for path in list(grown):  # depth: layers_i of the large model = layers_(i mod L) of the grown small one
        found = layer.search(path)
        if found and int(found.group(2)) == 0:
            for i in range(small.num_encoder_layers, large.num_encoder_layers):
                src = layer.sub(f"{found.group(1)}layers_{i % small.num_encoder_layers}/", path, 1)
                grown[layer.sub(f"{found.group(1)}layers_{i}/", path, 1)] = grown[src]
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in grown.items()})
