"""The `Objective` contract and the losses every objective shares.

An objective is pure: `model_inputs(batch)` picks the module's keyword arguments from a batch, and
`loss_fn(batch, outputs)` returns `(loss, metrics)` with metrics as `(total, count)` pairs, so they add up
correctly over steps, devices and evaluation batches (docs/interfaces.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from plmjax.layers import moe

Batch = Mapping[str, jax.Array]
Metrics = dict[str, tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    architecture: str  # 'encoder' | 'decoder' | 'encoder_decoder': the model family it trains
    feature_converter: str  # plmjax.data.feature_converters family name: how task features become a batch
    model_inputs: Callable[[Batch], dict[str, Any]]
    loss_fn: Callable[[Batch, Mapping[str, jax.Array]], tuple[jax.Array, Metrics]]
    # Optional cheaper inputs for training: batch -> (module kwargs, fits). Where `fits` (a bool scalar) holds,
    # loss_fn on the module's outputs for these kwargs equals loss_fn for `model_inputs` (MLM: the head only at the
    # predicted positions); the train step falls back to `model_inputs` where it does not.
    sparse_model_inputs: Callable[[Batch], tuple[dict[str, Any], jax.Array]] | None = None


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, Metrics]:
    """Mean weighted token cross entropy and accuracy.

    logits: [batch, length, vocab] (any float dtype; computed in float32); targets: [batch, length] int;
    weights: [batch, length], 0 where the position is not predicted.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    nll = softmax_cross_entropy(logits, targets.astype(jnp.int32))  # [batch, length]
    total_weight = jnp.sum(weights)
    loss_sum = jnp.sum(nll * weights)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    loss = loss_sum / jnp.maximum(total_weight, 1.0)
    metrics = {
        "loss": (loss_sum, total_weight),
        "accuracy": (correct, total_weight),
        "num_tokens": (total_weight, jnp.ones((), jnp.float32)),
    }
    return loss, metrics


@jax.custom_vjp
def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target]: logits [..., vocab] float, targets [...] int -> [...].

    Its VJP is the closed form (softmax - one_hot(target)) * g, computed from the logits in one pass: autodiff
    of log_softmax + take_along_axis keeps the log-probabilities and scatters into a zero array, two more arrays
    of the logits' size (a GPT-2 batch of 8 x 128 tokens: 206 MB each)."""
    return _cross_entropy_fwd(logits, targets)[0]


def _cross_entropy_fwd(logits, targets):
    lse = jax.nn.logsumexp(logits, axis=-1)  # [...]
    nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return nll, (logits, targets, lse)


def _cross_entropy_bwd(residuals, g):
    logits, targets, lse = residuals
    one_hot = jnp.arange(logits.shape[-1]) == targets[..., None]
    d_logits = (jnp.exp(logits - lse[..., None]) - one_hot) * g[..., None]
    return d_logits.astype(logits.dtype), None


softmax_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def example_weights(batch) -> jax.Array:
    """[batch] float32: the batch's `example_weights` (0 on the rows that pad an evaluation batch), else ones."""
    size = batch["encoder_input_tokens"].shape[0]
    weights = batch.get("example_weights")
    return jnp.ones((size,), jnp.float32) if weights is None else weights.reshape(size).astype(jnp.float32)


def router_losses(aux: Mapping, config, loss_weight: jax.Array) -> tuple[jax.Array, Metrics]:
    """The mixture-of-experts router losses of one apply (`plmjax.layers.moe`), to add to the summed loss.

    aux: the model's 'aux_loss' collection (each MoE layer's 'load_balancing_loss', 'router_z_loss' and
    'dropped_fraction'; a scanned stack's stacked per layer). Each is averaged over the MoE layers; the term is
    loss_weight * (config.router_aux_loss_weight * load_balancing + config.router_z_loss_weight * z_loss), so that
    after the train step divides the summed loss by the total loss weight the objective is
    mean token loss + the weighted router losses. Metrics: 'moe_<name>' as (value, 1) per (micro-)batch."""
    found: dict[str, list[jax.Array]] = {name: [] for name in moe.AUX_NAMES}
    for path, leaf in jax.tree_util.tree_flatten_with_path(aux)[0]:
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey) and key.key in found]
        if names:
            found[names[-1]].append(jnp.ravel(leaf).astype(jnp.float32))
    if not found["load_balancing_loss"]:
        return jnp.zeros((), jnp.float32), {}
    means = {name: jnp.mean(jnp.concatenate(values)) for name, values in found.items()}
    term = loss_weight * (config.router_aux_loss_weight * means["load_balancing_loss"]
                          + config.router_z_loss_weight * means["router_z_loss"])
    one = jnp.ones((), jnp.float32)
    return term, {f"moe_{name}": (value, one) for name, value in means.items()}


def packed_inputs(batch, side: str, prefix: str = "") -> dict[str, Any]:
    """A packed batch's `{side}_segment_ids` and `{side}_positions` (seqio's converters with pack=True) as the
    module keyword arguments `{prefix}segment_ids`, `{prefix}positions`; {} for an unpacked batch."""
    if f"{side}_segment_ids" not in batch:
        return {}
    return {f"{prefix}{name}": batch[f"{side}_{name}"] for name in ("segment_ids", "positions")}
