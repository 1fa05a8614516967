"""DynaBERT (Hou et al., NeurIPS 2020): importance, network rewiring and sub-network extraction, as parameter
transforms on the unrolled encoder layout, computed as the released code does (huawei-noah/Pretrained-Language-Model,
DynaBERT/run_glue.py and transformers/modeling_bert.py).

- Importance, summed over labelled batches of |per-batch value| (the code takes abs before accumulating):
  head h of layer l: |dL/dm_h| for a multiplicative head mask m = 1 on the attention probabilities (the code's
  `head_mask.grad`). A head's context reaches the output only through its rows of the attention output kernel,
  so dL/dm_h = sum(W_out[h] * dL/dW_out[h]): read from the ordinary parameter gradients, no mask input needed;
  FFN neuron n: |sum_in wi[:, n] dL/dwi[:, n] + b_n dL/db_n| + |sum_out wo[n, :] dL/dwo[n, :]|.
- Rewiring: heads and neurons of each layer sorted by decreasing importance (a permutation of the query/key/value
  columns, the output rows, wi columns and wo rows: the same function).
- Sub-networks: width multiplier w keeps the first round(w * heads) heads and round(w * mlp_dim) neurons of every
  layer (hidden size unchanged); depth multiplier d keeps round(d * L) layers, layer floor(i / d) for i < that
  (the code's rule: d = 0.5 keeps 0, 2, 4, ...; d = 0.75 drops every fourth). `extract` writes that sub-network
  as a standalone smaller model; `width_mask` zeroes the dropped heads and neurons in the full model (the
  masked sub-network, which computes the same function as the extracted one of the same width).

Width- and depth-adaptive training (all sub-networks in one step, distilled from the rewired full model) is not
here yet (issue 15).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from plmjax.models.config import TransformerConfig


def _layers(tree: Any, config: TransformerConfig) -> list[dict]:
    encoder = _encoder(tree)
    if "layers" in encoder:
        raise ValueError("DynaBERT works on the unrolled layout: rewrite the checkpoint with `plmjax convert "
                         "--layout unrolled` first.")
    return [encoder[f"layers_{i}"] for i in range(config.num_encoder_layers)]


def _encoder(tree: Any) -> dict:
    """The `encoder` subtree (under `bert/` for the fine-tuning architectures)."""
    if "encoder" in tree:
        return tree["encoder"]
    for value in tree.values():
        if isinstance(value, dict) and "encoder" in value:
            return value["encoder"]
    raise ValueError("no encoder in this parameter tree: DynaBERT is for encoders.")


def batch_importance(params: Any, grads: Any, config: TransformerConfig) -> tuple[jax.Array, jax.Array]:
    """One batch's (head [L, H], neuron [L, mlp_dim]) importance from the parameters and the loss gradient."""
    heads, neurons = [], []
    for p, g in zip(_layers(params, config), _layers(grads, config)):
        out, d_out = p["self_attention"]["out"]["kernel"], g["self_attention"]["out"]["kernel"]  # [H, hd, d]
        heads.append(jnp.abs(jnp.sum(out * d_out, axis=(1, 2))))
        wi, wo = p["mlp"]["wi"], p["mlp"]["wo"]
        d_wi, d_wo = g["mlp"]["wi"], g["mlp"]["wo"]
        incoming = jnp.sum(wi["kernel"] * d_wi["kernel"], axis=0) + wi["bias"] * d_wi["bias"]  # [d, F] -> [F]
        neurons.append(jnp.abs(incoming) + jnp.abs(jnp.sum(wo["kernel"] * d_wo["kernel"], axis=1)))  # [F, d]
    return jnp.stack(heads), jnp.stack(neurons)


def importance(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batches: Iterable,
               config: TransformerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Head and neuron importance summed over `batches` (labelled data); loss_fn(params, batch) -> scalar."""
    @jax.jit
    def one(params, batch):
        return batch_importance(params, jax.grad(loss_fn)(params, batch), config)
    head = neuron = 0.0
    for batch in batches:
        h, n = one(params, batch)
        head, neuron = head + np.asarray(h, np.float64), neuron + np.asarray(n, np.float64)
    return head, neuron


def _permute_layer(layer: dict, heads: np.ndarray, neurons: np.ndarray) -> dict:
    attention = dict(layer["self_attention"])
    for name in ("query", "key", "value"):
        attention[name] = {"kernel": attention[name]["kernel"][:, heads], "bias": attention[name]["bias"][heads]}
    attention["out"] = dict(attention["out"], kernel=attention["out"]["kernel"][heads])
    mlp = dict(layer["mlp"])
    mlp["wi"] = {"kernel": mlp["wi"]["kernel"][:, neurons], "bias": mlp["wi"]["bias"][neurons]}
    mlp["wo"] = dict(mlp["wo"], kernel=mlp["wo"]["kernel"][neurons])
    return dict(layer, self_attention=attention, mlp=mlp)


def _replace_layers(params: Any, layers: dict) -> Any:
    """`params` with the encoder's `layers_*` replaced by `layers` (at the top, or under `bert/`)."""
    if "encoder" in params:
        kept = {k: v for k, v in params["encoder"].items() if not k.startswith("layers_")}
        return dict(params, encoder={**kept, **layers})
    return {k: _replace_layers(v, layers) if isinstance(v, dict) and "encoder" in v else v
            for k, v in params.items()}


def rewire(params: Any, config: TransformerConfig, head_importance, neuron_importance) -> Any:
    """Each layer's heads and neurons reordered by decreasing importance: the same function."""
    layers = {}
    for i, layer in enumerate(_layers(params, config)):
        heads = np.argsort(-np.asarray(head_importance[i]), kind="stable")
        neurons = np.argsort(-np.asarray(neuron_importance[i]), kind="stable")
        layers[f"layers_{i}"] = _permute_layer(layer, heads, neurons)
    return _replace_layers(params, layers)


def kept_layers(num_layers: int, depth_mult: float) -> list[int]:
    """The code's depth rule: round(d * L) layers, layer floor(i / d) for i in range(that)."""
    if not 0 < depth_mult <= 1:
        raise ValueError(f"depth_mult={depth_mult}: use a value in (0, 1].")
    return [math.floor(i / depth_mult) for i in range(round(depth_mult * num_layers))]


def _chosen_layers(config: TransformerConfig, depth_mult: float, layers: Optional[Sequence[int]]) -> list[int]:
    """0-based layers kept: DynaBERT's depth rule, or `layers` (1-based, e.g. TinyBERT's student initialized from
    the teacher's layers 1, 2, 3 or 2, 4, 6)."""
    if layers is None:
        return kept_layers(config.num_encoder_layers, depth_mult)
    chosen = [int(layer) - 1 for layer in layers]
    if not chosen or not all(0 <= i < config.num_encoder_layers for i in chosen):
        raise ValueError(f"keep_layers={tuple(layers)}: give layers in 1..{config.num_encoder_layers} "
                         "(1-based, e.g. 1,2,3).")
    return chosen


def sub_config(config: TransformerConfig, width_mult: float, depth_mult: float = 1.0,
               layers: Optional[Sequence[int]] = None) -> TransformerConfig:
    if not 0 < width_mult <= 1:
        raise ValueError(f"width_mult={width_mult}: use a value in (0, 1].")
    return dataclasses.replace(config, num_heads=round(width_mult * config.num_heads),
                               mlp_dim=round(width_mult * config.mlp_dim),
                               num_encoder_layers=len(_chosen_layers(config, depth_mult, layers)))


def extract(params: Any, config: TransformerConfig, width_mult: float, depth_mult: float = 1.0,
            layers: Optional[Sequence[int]] = None) -> tuple[TransformerConfig, Any]:
    """The (width, depth) sub-network as a standalone model: (its config, its parameters). `layers` (1-based)
    replaces the depth rule by an explicit choice of layers."""
    small = sub_config(config, width_mult, depth_mult, layers)
    heads, neurons = np.arange(small.num_heads), np.arange(small.mlp_dim)
    stack = _layers(params, config)
    full_width = (small.num_heads, small.mlp_dim) == (config.num_heads, config.mlp_dim)
    kept = {f"layers_{j}": stack[i] if full_width else _permute_layer(stack[i], heads, neurons)
            for j, i in enumerate(_chosen_layers(config, depth_mult, layers))}
    return small, _replace_layers(params, kept)


def width_mask(params: Any, config: TransformerConfig, width_mult: float) -> Any:
    """The full model with the heads and neurons a width multiplier drops switched off (the output rows of each
    dropped head and neuron zeroed): the masked sub-network."""
    small = sub_config(config, width_mult)
    layers = {}
    for i, layer in enumerate(_layers(params, config)):
        out = jnp.asarray(layer["self_attention"]["out"]["kernel"]).at[small.num_heads:].set(0)  # [H, hd, d]
        wo = jnp.asarray(layer["mlp"]["wo"]["kernel"]).at[small.mlp_dim:].set(0)  # [F, d]
        attention = dict(layer["self_attention"], out=dict(layer["self_attention"]["out"], kernel=out))
        layers[f"layers_{i}"] = dict(layer, self_attention=attention,
                                     mlp=dict(layer["mlp"], wo=dict(layer["mlp"]["wo"], kernel=wo)))
    return _replace_layers(params, layers)
