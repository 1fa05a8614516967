"""Real low-bit export of a quantized model (`plmjax.compression.quantize`'s weights):

`pack_weights` stores each quantized tensor as codes packed 5 to a byte (ternary: base 3, 1.6 bits a weight), 1 bit
(binary) or 8 bits a value with its float32 scales, the rest as float32; `unpack_weights` rebuilds exactly the
fake-quantized tree; `packed_bytes` gives the size those arrays take on disk; `save_packed` / `load_packed`: the
packed weights as one .npz file, and back to the fake-quantized tree; `export_packed` packs and writes in one step.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from plmjax.compression.quantize import (CLIP, SPLIT_BINARY, SPLIT_SUFFIX, _check_method, _check_twins, _is_split,
                                         _rule, _symmetric_scale, _weight, bound)

_BITS = {"binary": 1, "int8": 8}  # ternary codes go 5 to a byte (`pack_trits`)
TRITS_PER_BYTE = 5  # 3^5 = 243 <= 256: 1.6 bits a ternary weight (llama.cpp's TQ1_0 packs ternary weights so)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integer codes < 2^bits -> uint8, 8 // bits codes a byte (the first code in the low bits)."""
    per_byte = 8 // bits
    flat = np.asarray(codes, np.uint8).reshape(-1)
    flat = np.concatenate([flat, np.zeros((-len(flat)) % per_byte, np.uint8)]).reshape(-1, per_byte)
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    codes = (np.asarray(packed, np.uint8)[:, None] >> shifts) & np.uint8(2 ** bits - 1)
    return codes.reshape(-1)[:count]


def pack_trits(codes: np.ndarray) -> np.ndarray:
    """Ternary codes (0, 1, 2) -> uint8, 5 a byte as the base-3 number sum c_i 3^i (the first code the lowest
    digit): 1.6 bits a weight where 2-bit fields take 2."""
    flat = np.asarray(codes, np.uint8).reshape(-1)
    flat = np.concatenate([flat, np.zeros((-len(flat)) % TRITS_PER_BYTE, np.uint8)])
    digits = flat.reshape(-1, TRITS_PER_BYTE).astype(np.uint16)  # [bytes, 5]
    return (digits @ (3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint16))).astype(np.uint8)


def unpack_trits(packed: np.ndarray, count: int) -> np.ndarray:
    values = np.asarray(packed, np.uint8)[:, None] // (3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint8))  # [bytes, 5]
    return (values % 3).astype(np.uint8).reshape(-1)[:count]


def _pack_one(w, method: str, rowwise: bool, clip: Optional[float]) -> dict:
    """A full-precision tensor -> {'codes': packed uint8, 'scale': float32 (per tensor or per row), 'shape'}.

    Ternary / binary: the codes of sign (and zero) and alpha, whose products with -1, 0, 1 are exact. int8: the
    codes round(x * s) and s itself, unpacked as codes / s: the quantizer's own operations, so exact too."""
    w = jnp.asarray(w, jnp.float32)
    if method == "int8":
        x = jnp.clip(w, -bound(clip), bound(clip))
        scale = _symmetric_scale(x, 8)
        codes = np.asarray(jnp.round(x * scale)).astype(np.int64).reshape(1, -1) + 128  # 0 .. 255
        scale = np.asarray(scale, np.float32).reshape(1)
    else:
        q = np.asarray(_weight(w, method, clip, rowwise))
        rows = q.reshape(q.shape[0], -1) if rowwise else q.reshape(1, -1)
        scale = np.abs(rows).max(axis=1).astype(np.float32)  # alpha: every nonzero value is +-alpha
        signs = np.sign(rows).astype(np.int64)
        codes = (signs > 0).astype(np.int64) if method == "binary" else signs + 1
    packed = pack_codes(codes, _BITS[method]) if method in _BITS else pack_trits(codes)
    return {"codes": packed, "scale": scale, "shape": np.asarray(w.shape, np.int64)}


def _unpack_one(item: dict, method: str) -> np.ndarray:
    shape = tuple(int(n) for n in item["shape"])
    scale = np.asarray(item["scale"], np.float32)
    count = int(np.prod(shape))
    codes = (unpack_codes(item["codes"], _BITS[method], count) if method in _BITS else
             unpack_trits(item["codes"], count)).astype(np.float32)
    codes = codes.reshape(len(scale), -1)
    if method == "int8":
        return np.asarray(jnp.asarray(codes - 128) / jnp.asarray(scale[0])).reshape(shape)
    values = 2 * codes - 1 if method == "binary" else codes - 1
    return (values * scale[:, None]).reshape(shape)


def pack_weights(params: Any, method: str = "ternary", clip: Optional[float] = CLIP) -> dict:
    """Full-precision parameters -> {path: packed item (the `WEIGHT_RULES` tensors) or float32 array}: the
    model `quantize_weights(params, method, clip)` describes, in 1.6 (ternary, `pack_trits`), 1 (binary) or 8 bits a
    weight; `split_binary`: both binary halves of each tensor, 1 bit each."""
    _check_method(method)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    if method == SPLIT_BINARY:
        _check_twins(flat)
        return {path: (_pack_one(w, "binary", _rule(path.removesuffix(SPLIT_SUFFIX)) == "rowwise", clip) if (
            _rule(path) or _is_split(path)) else w) for path, w in flat.items()}
    return {path: (_pack_one(w, method, _rule(path) == "rowwise", clip) if _rule(path) else w)
            for path, w in flat.items()}


def unpack_weights(packed: dict, method: str = "ternary") -> Any:
    """`pack_weights`' output -> the fake-quantized parameter tree (float32), bit for bit."""
    one = "binary" if method == SPLIT_BINARY else method
    flat = {path: (_unpack_one(item, one) if isinstance(item, dict) else item) for path, item in packed.items()}
    if method == SPLIT_BINARY:  # BWN(w) + BWN(w_split), the sum the forward pass computes in float32
        flat = {path: (w + flat[path + SPLIT_SUFFIX] if _rule(path) else w)
                for path, w in flat.items() if not _is_split(path)}
    return traverse_util.unflatten_dict({tuple(path.split("/")): w for path, w in flat.items()})


def packed_bytes(packed: dict) -> int:
    """The bytes the packed arrays take (codes, scales, shapes and the float32 parameters)."""
    return sum(sum(np.asarray(v).nbytes for v in item.values()) if isinstance(item, dict) else np.asarray(
        item).nbytes for item in packed.values())


def save_packed(path: str, packed: dict, method: str) -> int:
    """Writes `pack_weights`' output to one .npz file (`path`), atomically; returns its size in bytes."""
    arrays = {"__method__": np.asarray(method)}
    for name, item in packed.items():
        if isinstance(item, dict):
            arrays.update({f"{name}::{key}": value for key, value in item.items()})
        else:
            arrays[name] = item
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return os.path.getsize(path)


def load_packed(path: str) -> tuple[str, Any]:
    """(method, the fake-quantized parameter tree) of a `save_packed` file: unpacked bit for bit."""
    with np.load(path) as data:
        method = str(data["__method__"])
        packed: dict = {}
        for key in data.files:
            if key == "__method__":
                continue
            name, _, field = key.partition("::")
            if field:
                packed.setdefault(name, {})[field] = data[key]
            else:
                packed[name] = data[key]
    return method, unpack_weights(packed, method)


def export_packed(path: str, params: Any, method: str, clip: Optional[float] = CLIP) -> dict[str, int]:
    """Packs the latent weights `params` (`pack_weights`) into the .npz file `path`; returns its size on disk and
    the size of the same parameters in float32."""
    from flax import linen as nn
    params = jax.tree.map(np.asarray, nn.meta.unbox(params))
    size = save_packed(path, pack_weights(params, method, clip), method)
    return {"packed_bytes": size, "float32_bytes": 4 * parameter_count(params)}


def parameter_count(params: Any) -> int:
    """The parameters of the model `params` describes: a split binary model's second latent weights (training
    state, not model: the deployed model adds the two binary halves) not counted."""
    from flax import linen as nn
    flat = traverse_util.flatten_dict(nn.meta.unbox(params), sep="/")
    return sum(int(np.size(x)) for path, x in flat.items() if not _is_split(path))
