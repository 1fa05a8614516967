"""Optimizers and learning-rate schedules, built from optax (no hand-written optimizer).

`make_optimizer(...)` returns `(tx, schedule)`: an `optax.GradientTransformation` and the learning-rate
schedule inside it, so the loop can log `schedule(step)`. The transformation is, outermost first::

    optax.chain(
        optax.clip_by_global_norm(clip_norm),           # only when clip_norm is not None
        adamw | lamb | adafactor | sgd (learning_rate=schedule, ...),
        layer-wise learning-rate factors)               # only when layerwise_lr_decay > 0

Gradient accumulation is not the optimizer's business: the train step (`plmjax.train.step`,
`train.grad_accum_steps`) sums the gradients of its micro-batches in a `lax.scan` and calls `tx.update` once per
batch, so the schedule counts optimizer updates = train steps.

Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020; the usual recipe for fine-tuning BERT-style
encoders) multiplies each update by a factor of its parameter's depth: layer i (0-based) of N gets
`decay ** (N - i)`, the embeddings `decay ** (N + 1)`, everything above the layers (pooler, heads, final norm)
1; a scanned stack (`TransformerConfig.scan_layers`: one `layers` subtree whose leaves hold layer i at index i of
axis 0) gets the same factors as a [N, 1, ...] array along that axis. Every optimizer here is linear in its learning rate after the gradient statistics, so scaling the update
equals giving that parameter group its own learning rate, as torch's per-group AdamW (adafactor, whose weight
decay is not multiplied by the learning rate, then has its weight decay scaled too).

Weight decay is decoupled (AdamW, LAMB: `param -= lr * weight_decay * param`, as BERT and torch.optim.AdamW)
and skips biases and normalization parameters (`default_weight_decay_mask`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plmjax.models import layout

OPTIMIZERS = ("adamw", "lamb", "adafactor", "sgd")
SCHEDULES = ("linear", "cosine", "rsqrt", "constant")

# What each optimizer uses for a hyperparameter left as None. adamw/lamb: BERT's (Devlin et al. 2019, You et
# al. 2020). adafactor: optax's own defaults, which are T5's (no momentum, eps 1e-30, no weight decay).
_DEFAULTS = {
    "adamw": dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01),
    "lamb": dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01),
    "adafactor": dict(b1=None, b2=None, eps=1e-30, weight_decay=None),
    "sgd": dict(b1=None, b2=None, eps=None, weight_decay=None),
}
# Hyperparameters an optimizer does not have: setting one is an error, never silently ignored.
_NOT_USED = {"adamw": (), "lamb": (), "adafactor": ("b2",), "sgd": ("b2", "eps")}

# Optimizers whose update reads a whole parameter at once (LAMB's trust ratio, adafactor's block RMS and factored
# moments), not each element: on a scanned stack they run per layer (`per_layer`), as on the unrolled one.
_PER_BLOCK = ("lamb", "adafactor")

_NO_DECAY_NAMES = ("bias", "scale")
_NORM_MODULE = re.compile(r"norm|^ln(_|\d|$)", re.IGNORECASE)


def make_schedule(schedule: str = "linear", learning_rate: float = 1e-4, warmup_steps: int = 0,
                  total_steps: Optional[int] = None, end_lr_factor: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then

    * 'linear': linear decay to `learning_rate * end_lr_factor` at `total_steps` (BERT), constant after;
    * 'cosine': half-cosine decay to `learning_rate * end_lr_factor` at `total_steps`, constant after;
    * 'rsqrt': inverse square root, `learning_rate * sqrt(warmup_steps / step)` from `warmup_steps` on: the
      Transformer's "Noam" schedule. T5 decays the same way (`1/sqrt(max(step, warmup))`) but holds the rate
      constant during warmup instead of ramping it. With warmup_steps=0: `learning_rate / sqrt(max(step, 1))`;
    * 'constant': `learning_rate`.

    Steps count optimizer updates (see the module docstring about gradient accumulation).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown learning-rate schedule {schedule!r}; valid names: {', '.join(SCHEDULES)}.")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    if schedule in ("linear", "cosine"):
        if total_steps is None:
            raise ValueError(
                f"The {schedule!r} schedule decays until total_steps, which is not set: bind "
                "make_optimizer.total_steps, or use make_optimizer.schedule='rsqrt' or 'constant'.")
        if total_steps < warmup_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps}).")

    if schedule == "linear":
        decay = optax.linear_schedule(learning_rate, learning_rate * end_lr_factor,
                                      transition_steps=total_steps - warmup_steps)
    elif schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps - warmup_steps, 1),
                                            alpha=end_lr_factor)
    elif schedule == "rsqrt":
        floor = max(warmup_steps, 1)

        def decay(count):  # join_schedules passes count = step - warmup_steps
            step = jnp.asarray(count, jnp.float32) + warmup_steps
            return learning_rate * jnp.sqrt(floor / jnp.maximum(step, floor))
    else:
        def decay(count):  # an array, like the other schedules (optax.constant_schedule gives a Python float)
            return jnp.full((), learning_rate, jnp.float32) + 0 * jnp.asarray(count, jnp.float32)

    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def _path_names(path) -> list[str]:
    """Dict keys, attribute names and sequence indices of a pytree key path, as strings."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
    return names


def _decays(path) -> bool:
    names = _path_names(path)
    if names and names[-1] == "value":  # a flax nn.Partitioned box: the parameter's name is one level up
        names = names[:-1]
    if names and names[-1] in _NO_DECAY_NAMES:
        return False
    return not any(_NORM_MODULE.search(name) for name in names[:-1])


def default_weight_decay_mask(params: Any) -> Any:
    """A pytree of bools shaped like `params`: True where weight decay applies.

    False for parameters named 'bias' or 'scale' (flax Dense, LayerNorm, RMSNorm) and for every parameter of a
    module whose name contains 'norm' in any case ('layer_norm', 'LayerNorm', 'final_norm') or is 'ln', 'ln_f',
    'ln_1', ... (GPT-2's names). Kernels and embeddings decay, as in BERT.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)


def make_optimizer(name: str = "adamw",
                   learning_rate: float = 1e-4,
                   schedule: str = "linear",
                   warmup_steps: int = 0,
                   total_steps: Optional[int] = None,
                   end_lr_factor: float = 0.0,
                   warmup_ratio: float = 0.0,
                   weight_decay: Optional[float] = None,
                   b1: Optional[float] = None,
                   b2: Optional[float] = None,
                   eps: Optional[float] = None,
                   clip_norm: Optional[float] = 1.0,
                   layerwise_lr_decay: float = 0.0,
                   weight_decay_mask: Optional[Callable[[Any], Any]] = default_weight_decay_mask,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns `(tx, schedule)`; the module docstring gives the chain and the accumulation semantics.

    name: 'adamw' (optax.adamw), 'lamb' (optax.lamb), 'adafactor' (optax.adafactor) or 'sgd' (optax.sgd).
    schedule, learning_rate (the peak), warmup_steps, total_steps, end_lr_factor: see `make_schedule`.
    warmup_ratio: warm up over this fraction of total_steps instead of warmup_steps (fine-tuning recipes: 0.1).
    b1, b2, eps, weight_decay: None means the optimizer's default. adamw, lamb: b1=0.9, b2=0.999, eps=1e-6,
      weight_decay=0.01 (BERT). adafactor: optax's (T5's) defaults; b1 is its momentum, eps its epsilon, and
      weight_decay its `weight_decay_rate`, which optax does not scale by the learning rate
      (`param -= weight_decay * param` per update). sgd: b1 is the momentum; weight_decay is added to the
      gradient (L2). Setting a hyperparameter the optimizer lacks (adafactor: b2; sgd: b2, eps) is an error.
    clip_norm: clip the (accumulated) gradient to this global norm before the optimizer; None disables it
      (t5x does not clip with adafactor: set None to match T5).
    layerwise_lr_decay: 0 disables it; d in (0, 1] scales layer i of N by d**(N - i), the embeddings by
      d**(N + 1) and the heads by 1 (see the module docstring and `layerwise_lr_factors`).
    weight_decay_mask: params -> pytree of bools (True = decay); None decays every parameter.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}.")
    if not 0.0 <= layerwise_lr_decay <= 1.0:
        raise ValueError(f"layerwise_lr_decay must be in [0, 1] (0 disables it), got {layerwise_lr_decay}: bind "
                         "make_optimizer.layerwise_lr_decay to e.g. 0.8.")
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}.")
    given = dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    for hyper in _NOT_USED[name]:
        if given[hyper] is not None:
            raise ValueError(f"Optimizer {name!r} has no hyperparameter {hyper!r} (got {given[hyper]}): remove "
                             f"the binding make_optimizer.{hyper}.")
    if warmup_ratio:
        if warmup_steps or not 0.0 < warmup_ratio <= 1.0 or total_steps is None:
            raise ValueError(f"warmup_ratio={warmup_ratio} needs total_steps, a value in (0, 1] and warmup_steps=0 "
                             f"(got total_steps={total_steps}, warmup_steps={warmup_steps}): bind one of "
                             "make_optimizer.warmup_ratio and make_optimizer.warmup_steps.")
        warmup_steps = round(warmup_ratio * total_steps)
    hp = {key: _DEFAULTS[name][key] if value is None else value for key, value in given.items()}
    lr = make_schedule(schedule, learning_rate, warmup_steps, total_steps, end_lr_factor)

    if name == "adamw":
        opt = optax.adamw(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                          mask=weight_decay_mask)
    elif name == "lamb":
        opt = optax.lamb(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                         mask=weight_decay_mask)
    elif name == "adafactor":
        opt = optax.adafactor(lr, momentum=hp["b1"], eps=hp["eps"], weight_decay_rate=hp["weight_decay"],
                              weight_decay_mask=weight_decay_mask if hp["weight_decay"] else None)
    else:
        opt = optax.sgd(lr, momentum=hp["b1"])
        if hp["weight_decay"]:
            opt = optax.chain(optax.add_decayed_weights(hp["weight_decay"], mask=weight_decay_mask), opt)

    if name in _PER_BLOCK:
        opt = per_layer(opt)
    if layerwise_lr_decay:
        opt = optax.chain(opt, layerwise_lr_scaling(layerwise_lr_decay))
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt, lr


# --------------------------------------------------------------------------- layer-wise learning-rate decay

_LAYER = re.compile(r"^layers_(\d+)$")
_EMBEDDING_MODULES = ("embedder", "token_embedder")  # a stack's embedder (positions, types, norm); the tokens


def _layer_of(names: list[str]) -> tuple[int, Optional[int]]:
    """(position in `names` of the stack's layer key, its layer index; None for a scanned `layers` subtree whose
    leaves hold every layer on axis 0), or (-1, None) outside the layers."""
    for position, name in enumerate(names):
        match = _LAYER.match(name)
        if match:
            return position, int(match.group(1))
        if name == layout.LAYERS:
            return position, None
    return -1, None


def _num_layers(params) -> int:
    """Layers of the one stack holding `layers_<i>` or a scanned `layers` (ValueError for several stacks, e.g.
    encoder-decoder)."""
    stacks: dict[tuple[str, ...], int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = _path_names(path)
        position, index = _layer_of(names)
        if position >= 0:
            stack = tuple(names[:position])
            count = index + 1 if index is not None else jnp.shape(leaf)[0]
            stacks[stack] = max(stacks.get(stack, 0), count)
    if len(stacks) > 1:
        raise ValueError(f"layerwise_lr_decay needs a model with one stack of layers, found {len(stacks)} "
                         f"({sorted('/'.join(s) for s in stacks)}): unset make_optimizer.layerwise_lr_decay.")
    return next(iter(stacks.values()), 0)


def _factor(path, leaf, num_layers: int, decay: float):
    """decay ** (N - i) in layer i, a [N, 1, ...] array of them on a scanned leaf [N, ...], decay ** (N + 1) in
    the embeddings, 1 elsewhere."""
    names = _path_names(path)
    position, index = _layer_of(names)
    if position >= 0 and index is None:
        factors = np.array([decay ** (num_layers - i) for i in range(num_layers)])  # the same floats as unrolled
        return factors.reshape((num_layers,) + (1,) * (jnp.ndim(leaf) - 1))
    if position >= 0:
        return decay ** (num_layers - index)
    if any(name in _EMBEDDING_MODULES for name in names):
        return decay ** (num_layers + 1)
    return 1.0


def layerwise_lr_factors(params: Any, decay: float) -> Any:
    """The learning-rate factor of every parameter, a pytree shaped like `params` (boxed or not): `decay ** (N - i)`
    in `layers_<i>` of N (along axis 0 of a scanned stack's leaves: a [N, 1, ...] array), `decay ** (N + 1)` in the
    embeddings, 1 elsewhere."""
    num_layers = _num_layers(params)
    return jax.tree_util.tree_map_with_path(lambda path, leaf: _factor(path, leaf, num_layers, decay), params)


def _in_scanned_stack(path) -> bool:
    position, index = _layer_of(_path_names(path))
    return position >= 0 and index is None


def per_layer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` on each layer of a scanned stack on its own (vmapped over axis 0 of the `layers` leaves, its state
    stacked the same way) and on every other parameter as is, so that an optimizer whose update reads a whole
    parameter (LAMB, adafactor) steps a scanned model as it steps the unrolled one. Unscanned trees: `tx`."""
    def init(params):
        return jax.vmap(tx.init)(params) if jax.tree.leaves(params) else tx.init(params)

    def update(updates, state, params=None):
        if not jax.tree.leaves(updates):
            return tx.update(updates, state, params)
        return jax.vmap(tx.update)(updates, state, params)

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: "layers" if _in_scanned_stack(path) else "other",
                                                params)

    return optax.multi_transform({"layers": optax.GradientTransformation(init, update), "other": tx}, labels)


def layerwise_lr_scaling(decay: float) -> optax.GradientTransformation:
    """Multiplies every update by its parameter's `layerwise_lr_factors` (stateless)."""

    def update(updates, state, params=None):
        del params
        factors = layerwise_lr_factors(updates, decay)
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
