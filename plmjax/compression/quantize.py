"""Low-bit quantization of BERT weights and activations (TernaryBERT, Zhang et al., 2020; BinaryBERT's binary
weights, Bai et al., 2021), as the released code computes it (huawei-noah/Pretrained-Language-Model,
TernaryBERT/transformer/utils_quant.py), and real low-bit export.

Fake quantization (float in, float out, straight-through gradients; the code's `autograd.Function`s):
- `twn`: ternary weights (TWN). The weight is first clipped to [-clip, clip]; layer-wise (one scale per tensor,
  every Transformer kernel) delta = 0.7 * mean|w|, alpha = mean |w| over |w| > delta, w_q = alpha * sign(w) where
  |w| > delta, else 0; row-wise (the word embedding: one delta and alpha per vocabulary row).
- `bwn`: binary weights, alpha * sign(w) with alpha = mean|w| (layer-wise) or per row.
- `symmetric`: b-bit symmetric uniform quantization of activations (or of weights, the int8 baseline): clipped to
  [-clip, clip], scale s = (2^(b-1) - 1) / max|x| over the tensor (the code's `layerwise=True`, dynamic: computed
  from each batch), round(x * s) / s.
- Straight-through estimator with clipping (every quantizer above): the gradient passes unchanged where the
  full-precision input is strictly inside (-clip, clip) and is 0 elsewhere (the code zeroes it at >= clip and
  <= -clip). The code's default clip is 2.5 (one value for weights and activations, its `--clip_val`);
  clip=None clips nothing (the scale is max|x| alone, and every gradient passes): see docs/compression.md for
  why the MiniLM recipe uses it.
- `quantize_weights`: the fake-quantized parameter tree (`WEIGHT_RULES`: which parameters, layer- or row-wise);
  biases, norms, position and token-type embeddings stay float32, as in the code.

Real low-bit export (packed codes, the .npz file and its loader): `plmjax.compression.packing`.

`tws_split`: BinaryBERT's ternary weight splitting (two latent weights whose binary quantizations sum to the
ternary one); `tws_params`: a ternary model's tree split so (a `<name>_split` twin beside each quantized tensor),
the start of the split binary model (`split_binary`: BWN(w) + BWN(w_split)).

`quantized_apply`: the quantization-aware forward pass, weights fake-quantized by `quantize_weights` and the inputs
of every product (every `Projection`, and Q, K, the attention probabilities and V inside attention) by
`activation_interceptor` (flax's method interception: no forked model);
`quantized_model`: a model whose every apply is that pass (what the trainer and the evaluation run).

`lat`: loss-aware ternarization as BinaryBERT's code computes it (LaqQuantizer).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

CLIP = 2.5  # the released code's clip_val
LAT_ITERATIONS = 10  # BinaryBERT's LaqQuantizer: "converge within 10 iterations"
SPLIT_BINARY = "split_binary"  # BinaryBERT after ternary weight splitting: two binary weights summed per tensor
METHODS = ("ternary", "binary", "int8", "lat", SPLIT_BINARY)  # TWN, BWN, 8-bit symmetric, LAT, BinaryBERT
SPLIT_SUFFIX = "_split"  # BinaryBERT's second latent weight of a tensor `kernel`: `kernel_split` beside it

# Which parameters are quantized (the code's QuantizeLinear / QuantizeEmbedding), and how.
WEIGHT_RULES = [
    (r"self_attention/(query|key|value|out)/kernel$", "layerwise"),
    (r"mlp/(wi|wo)(_0|_1)?/kernel$", "layerwise"),
    (r"(^|/)token_embedder/embedding$", "rowwise"),
]


def bound(clip: Optional[float]) -> float:
    """The clipping bound of a `clip` setting: None clips nothing."""
    return np.inf if clip is None else float(clip)


def _ste(quantizer):
    """A quantizer with the clipped straight-through gradient."""
    @jax.custom_vjp
    def f(x, clip):
        return quantizer(x, clip)

    def forward(x, clip):
        return quantizer(x, clip), (x, clip)

    def backward(saved, g):
        x, clip = saved
        return jnp.where((x < clip) & (x > -clip), g, jnp.zeros_like(g)), None

    f.defvjp(forward, backward)
    return f


def _pairwise_sum(x, rowwise: bool):
    """The sum of x (per row: over every axis but the first, kept as size 1) in one fixed pairwise order: halves
    added elementwise until one value is left. Unlike a reduction, whose order XLA chooses (eager, inside a jitted
    step, sharded), every caller gets the same bits, so a weight at a quantization threshold falls on the same side
    in training, in evaluation and in the packed file."""
    rows = x.reshape(x.shape[0], -1) if rowwise else x.reshape(1, -1)  # [rows, n]
    width = 1 << max(rows.shape[1] - 1, 0).bit_length()
    rows = jnp.pad(rows, ((0, 0), (0, width - rows.shape[1])))  # zeros add exactly
    while rows.shape[1] > 1:
        rows = rows[:, 0::2] + rows[:, 1::2]
    return rows.reshape((x.shape[0],) + (1,) * (x.ndim - 1)) if rowwise else rows.reshape(())


def _pairwise_mean(x, rowwise: bool, factor: float = 1.0):
    """factor x the mean, as one product of the pairwise sum with one float32 constant: inside jit XLA folds
    products and divisions by constants together, outside it does not, so any other form differs in its last bit."""
    return _pairwise_sum(x, rowwise) * np.float32(factor / (x[0].size if rowwise else x.size))


def _ternary(x, clip, rowwise):
    x = jnp.clip(x, -clip, clip)
    axes = tuple(range(1, x.ndim)) if rowwise else None
    delta = _pairwise_mean(jnp.abs(x), rowwise, factor=0.7)
    mask = jnp.abs(x) > delta
    alpha = _pairwise_sum(jnp.where(mask, jnp.abs(x), 0.0), rowwise) / jnp.sum(mask, axis=axes, keepdims=rowwise)
    return alpha * jnp.where(mask, jnp.sign(x), 0.0)


def _binary(x, clip, rowwise):
    x = jnp.clip(x, -clip, clip)
    return _pairwise_mean(jnp.abs(x), rowwise) * jnp.where(x >= 0, 1.0, -1.0)


def _loss_aware_ternary(x, rowwise, iterations=LAT_ITERATIONS):
    """LAT as BinaryBERT's `LaqQuantizer` computes it (2 bits, its identity approximate Hessian D = 1): b = sign(x),
    then alternately alpha = sum|b x| / sum|b| and b = round(clip(x / alpha, -1, 1)), 10 times; alpha * b. No
    clipping of x (the code passes no clip value)."""
    axes = tuple(range(1, x.ndim)) if rowwise else None

    def scale(b):
        alpha = _pairwise_sum(jnp.abs(b * x), rowwise) / jnp.maximum(
            jnp.sum(jnp.abs(b), axis=axes, keepdims=rowwise), 1.0)
        return jnp.where(alpha > 0, alpha, 1.0)  # an all-zero tensor stays zero (the code divides 0 by 0)

    alpha = scale(jnp.sign(x))
    b = jnp.round(jnp.clip(x / alpha, -1.0, 1.0))
    for _ in range(iterations):
        alpha = scale(b)
        b = jnp.round(jnp.clip(x / alpha, -1.0, 1.0))
    return alpha * b + 0.0  # + 0.0: a -0.0 is +0.0


def _identity_ste(quantizer):
    """A quantizer whose gradient passes straight through, unclipped (the code's LaqQuantizer.backward)."""
    @jax.custom_vjp
    def f(x):
        return quantizer(x)

    f.defvjp(lambda x: (quantizer(x), None), lambda _, g: (g,))
    return f


def _symmetric_scale(x, bits):
    """s = (2^(b-1) - 1) / max|x| of an already clipped tensor (one scale per tensor)."""
    return (2 ** (bits - 1) - 1) / jnp.maximum(jnp.max(jnp.abs(x)), jnp.finfo(x.dtype).tiny)


def _symmetric(x, clip, bits):
    x = jnp.clip(x, -clip, clip)
    scale = _symmetric_scale(x, bits)
    return (jnp.round(x * scale) + 0.0) / scale  # + 0.0: a -0.0 code is +0.0, as the packed integer codes


_twn = {rowwise: _ste(lambda x, clip, r=rowwise: _ternary(x, clip, r)) for rowwise in (False, True)}
_bwn = {rowwise: _ste(lambda x, clip, r=rowwise: _binary(x, clip, r)) for rowwise in (False, True)}
_sym = {bits: _ste(lambda x, clip, b=bits: _symmetric(x, clip, b)) for bits in (2, 4, 8)}
_lat = {rowwise: _identity_ste(lambda x, r=rowwise: _loss_aware_ternary(x, r)) for rowwise in (False, True)}


def twn(w, clip: Optional[float] = CLIP, rowwise: bool = False):
    """Ternary (TWN) fake quantization with the clipped straight-through gradient; see the module docstring."""
    return _twn[rowwise](w, jnp.asarray(bound(clip), w.dtype))


def bwn(w, clip: Optional[float] = CLIP, rowwise: bool = False):
    """Binary (alpha * sign) fake quantization with the clipped straight-through gradient."""
    return _bwn[rowwise](w, jnp.asarray(bound(clip), w.dtype))


def lat(w, rowwise: bool = False):
    """Loss-aware ternary (LAT) fake quantization as BinaryBERT's code computes it, unclipped straight-through
    gradient; see `_loss_aware_ternary`."""
    return _lat[rowwise](w)


def symmetric(x, bits: int = 8, clip: Optional[float] = CLIP):
    """b-bit symmetric uniform fake quantization (one dynamic scale per tensor), straight-through gradient."""
    return _sym[bits](x, jnp.asarray(bound(clip), x.dtype))


def _rule(path: str) -> Optional[str]:
    return next((how for pattern, how in WEIGHT_RULES if re.search(pattern, path)), None)


def _weight(w, method: str, clip: Optional[float], rowwise: bool):
    """One weight fake-quantized by a ternary / binary method (TWN, LAT, BWN)."""
    if method == "lat":
        return lat(w, rowwise)
    return (twn if method == "ternary" else bwn)(w, clip, rowwise=rowwise)


def _check_method(method: Optional[str], allow_none: bool = False) -> None:
    if method not in METHODS and not (allow_none and method is None):
        raise ValueError(f"quantize={method!r}: use one of {METHODS}.")


def quantize_weights(params: Any, method: str = "ternary", clip: Optional[float] = CLIP) -> Any:
    """The parameter tree with the `WEIGHT_RULES` tensors fake-quantized (one of `METHODS`). `split_binary`: each
    such tensor w has a second latent weight w_split beside it and becomes BWN(w) + BWN(w_split) (BinaryBERT's
    split model, `tws_params`); the second weights leave the tree."""
    def one(path, w):
        how = _rule(jax.tree_util.keystr(path, simple=True, separator="/"))
        if how is None:
            return w
        if method == "int8":
            return symmetric(w, 8, clip)
        return _weight(w, method, clip, rowwise=how == "rowwise")
    _check_method(method)
    if method == SPLIT_BINARY:
        return _split_binary(params, clip)
    return jax.tree_util.tree_map_with_path(one, params)


def _is_split(path: str) -> bool:
    return path.endswith(SPLIT_SUFFIX) and _rule(path[:-len(SPLIT_SUFFIX)]) is not None


def _check_twins(flat: dict) -> None:
    """A split binary model's flat tree ({'a/b/kernel': ...}) has the twin of every quantized tensor."""
    missing = [path for path in flat if _rule(path) and path + SPLIT_SUFFIX not in flat]
    if missing:
        raise ValueError(f"quantize='split_binary' needs a second latent weight beside each quantized one, and "
                         f"{missing[0]}{SPLIT_SUFFIX} (and {len(missing) - 1} more) is not there: split a ternary "
                         "checkpoint first (`plmjax convert --tws`, BinaryBERT's ternary weight splitting).")


def _split_binary(params: Any, clip: Optional[float]) -> Any:
    flat = traverse_util.flatten_dict(params, sep="/")
    _check_twins(flat)
    out = {path: (bwn(w, clip, rowwise=_rule(path) == "rowwise") + bwn(
        flat[path + SPLIT_SUFFIX], clip, rowwise=_rule(path) == "rowwise") if _rule(path) else w)
        for path, w in flat.items() if not _is_split(path)}
    return traverse_util.unflatten_dict(out, sep="/")


def tws_params(params: Any, clip: Optional[float] = CLIP) -> Any:
    """BinaryBERT's split model of a ternary model's latent weights: each `WEIGHT_RULES` tensor w (clipped to
    [-clip, clip], as the ternary forward pass saw it) becomes the pair (w1, w2 = `<name>_split`) of `tws_split`,
    so that `quantize_weights(tws_params(p), 'split_binary') == quantize_weights(p, 'ternary')` (up to float32
    rounding of the two halves' scales). Biases stay one tensor (the code splits them into halves b / 2 that the
    two binary layers add back; see docs/compression.md)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {}
    for path, w in flat.items():
        if _rule(path) is None:
            out[path] = w
            continue
        w1, w2 = tws_split(np.clip(np.asarray(w, np.float64), -bound(clip), bound(clip)), rowwise=_rule(path) == "rowwise")
        out[path], out[path + SPLIT_SUFFIX] = (x.astype(np.asarray(w).dtype) for x in (w1, w2))
    return traverse_util.unflatten_dict(out, sep="/")


def with_split_twins(params: Any, halve: bool = False) -> Any:
    """`params` with the second latent weight `<name>_split` of each quantized tensor beside it (a split binary
    model's tree): the same leaf (abstract trees: shapes, shardings, logical-axis boxes), or with `halve` both
    halves w / 2, so that the split model starts as the binary one (BWN(w / 2) + BWN(w / 2) = BWN(w))."""
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    twins = {}
    for path, leaf in flat.items():
        if _rule(path):
            if halve:
                leaf = leaf.replace_boxed(leaf.unbox() / 2) if hasattr(leaf, "replace_boxed") else leaf / 2
            twins[path] = twins[path + SPLIT_SUFFIX] = leaf
    return traverse_util.unflatten_dict({**flat, **twins}, sep="/")


# ------------------------------------------------------------------------------ quantization-aware forward


def quantized_inputs(module, method_name: str) -> tuple[str, ...]:
    """The names of the leading arguments of `module.method_name` that 8-bit activation quantization sees: the
    input of every `Projection` (query/key/value, attention output, FFN, heads: the code's input quantization of
    each QuantizeLinear) and, inside attention, the query and key before their scores and the attention
    probabilities (after dropout) and values before the context (the code's `quantize_act` in BertSelfAttention);
    () for any other call."""
    from plmjax.layers.attention import MultiHeadAttention
    from plmjax.layers.dense import Projection
    if isinstance(module, Projection) and method_name == "__call__":
        return (f"{module.name} input",)
    if isinstance(module, MultiHeadAttention) and method_name == "score_product":
        return ("query", "key")
    if isinstance(module, MultiHeadAttention) and method_name == "context_product":
        return ("probabilities", "value")
    return ()


def activation_interceptor(bits: int = 8, clip: Optional[float] = CLIP):
    """A flax method interceptor that quantizes, with `symmetric(bits)`, the inputs of every product of the
    models (`quantized_inputs`), each with its own dynamic scale: an interceptor rather than a forked model."""
    def intercept(next_fun, args, kwargs, context):
        count = len(quantized_inputs(context.module, context.method_name))
        args = (*(symmetric(x, bits, clip) for x in args[:count]), *args[count:])
        return next_fun(*args, **kwargs)
    return intercept


def quantized_apply(model, params: Any, *args, method: str = "ternary", activation_bits: Optional[int] = 8,
                    clip: Optional[float] = CLIP, **kwargs):
    """`model.apply` with the `WEIGHT_RULES` weights fake-quantized (`method`) and, unless activation_bits is
    None, the inputs of every product quantized: the quantization-aware forward pass, whose gradient reaches the
    full-precision (latent) parameters through the straight-through estimators."""
    from flax import linen as nn
    variables = {"params": quantize_weights(params, method, clip)}
    if activation_bits is None:
        return model.apply(variables, *args, **kwargs)
    with nn.intercept_methods(activation_interceptor(activation_bits, clip)):
        return model.apply(variables, *args, **kwargs)


def _quantize_in(variables, method: str, clip: Optional[float]):
    from flax import linen as nn
    return quantize_weights(nn.meta.unbox(variables), method, clip)


def as_saved(model, metadata: dict):
    """`model` as a checkpoint's metadata says it was trained: `quantized_model` with its `quantize` settings
    (a TernaryBERT / BinaryBERT student, a post-training baseline), else `model` itself."""
    q = metadata.get("quantize")
    return quantized_model(model, q["method"], q.get("activation_bits"), q.get("clip", CLIP)) if q else model


def quantized_model(model, method: Optional[str] = "ternary", activation_bits: Optional[int] = 8,
                    clip: Optional[float] = CLIP):
    """`model` (a plmjax module) whose every apply is the quantization-aware forward pass of `quantized_apply`:
    the same parameter tree (its latent full-precision weights), the same initialization (the plain model's, so
    the parameters keep their logical axes and shard as in training), the weights fake-quantized on their way in
    (flax's `map_variables`) and the inputs of every product quantized (`activation_interceptor`). The trainer,
    the evaluation and the distillation wrapper take it wherever they take the model. method=None leaves the
    weights as they come (already quantized ones: `load_packed`'s)."""
    from flax import linen as nn
    _check_method(method, allow_none=True)
    mapped = type(model) if method is None else nn.map_variables(
        type(model), "params", trans_in_fn=functools.partial(_quantize_in, method=method, clip=clip))
    interceptor = activation_interceptor(activation_bits, clip) if activation_bits else None
    plain = model

    class Quantized(mapped):
        def __call__(self, *args, **kwargs):
            if interceptor is None:
                return super().__call__(*args, **kwargs)
            with nn.intercept_methods(interceptor):
                return super().__call__(*args, **kwargs)

        def init(self, *args, **kwargs):  # the plain model's parameters, with their logical-axis boxes
            variables = plain.init(*args, **kwargs)
            if method == SPLIT_BINARY:
                variables = {**variables, "params": with_split_twins(variables["params"], halve=True)}
            return variables

    Quantized.__name__ = f"Quantized{type(model).__name__}"
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return Quantized(**fields)


# ------------------------------------------------------------------------------------ ternary weight splitting


def tws_split(w, rowwise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """BinaryBERT's ternary weight splitting of a latent full-precision weight into two (w1, w2) whose binary
    quantizations add up to its ternary one, BWN(w1) + BWN(w2) = TWN(w), as the released code computes them
    (BinaryBERT/transformer/binary_model_init.py, in float64, without clipping): with delta = (alpha n -
    sum|w|) / (2 #zeros), entries TWN keeps split as (m w, (1 - m) w) and zeroed ones as (w + delta, -delta) or
    (delta, w - delta) by sign, with m chosen so that both binary scales are alpha / 2 (where the signs of w1 and
    w2 agree the sum is +-alpha, where they differ 0); per tensor, or per row (rowwise: the word embedding). The
    code splits a bias into halves, b / 2 each."""
    with jax.enable_x64(True):
        w = jnp.asarray(np.asarray(w, np.float64))
        ternary = _ternary(w, jnp.inf, rowwise)
        axes = tuple(range(1, w.ndim)) if rowwise else None
        keep = dict(axis=axes, keepdims=rowwise)
        zero = ternary == 0
        n = w[0].size if rowwise else w.size
        alpha = jnp.max(ternary, **keep)
        delta = (alpha * n - jnp.sum(jnp.abs(w), **keep)) / (2.0 * jnp.sum(zero, **keep))
        a11 = jnp.where(zero, 0.0, w)
        a12 = jnp.where(zero, jnp.where(w > 0, w + delta, delta), 0.0)
        a22 = jnp.where(zero, jnp.where(w < 0, w - delta, -delta), 0.0)
        total = lambda x: jnp.sum(jnp.abs(x), **keep)  # noqa: E731
        m = (total(a11) + total(a22) - total(a12)) / (2.0 * total(a11))
        w1 = jnp.where(zero, jnp.where(w > 0, w + delta, delta), m * w)
        w2 = jnp.where(zero, jnp.where(w < 0, w - delta, -delta), (1 - m) * w)
        return np.asarray(w1), np.asarray(w2)
