"""Pure train and eval steps: `(state, batch) -> (state, metrics)`, jitted with explicit shardings.

The differentiated quantity is the objective's summed loss divided by the batch's total loss weight
(`metrics['loss']` is that `(total, count)` pair), so gradient accumulation over micro-batches gives exactly
the full batch's gradient, whatever the number of predicted tokens in each micro-batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from plmjax import sharding
from plmjax.compression import two_stage as two_stage_lib
from plmjax.layers import moe
from plmjax.objectives.base import Objective, router_losses
from plmjax.train import metrics as metrics_lib
from plmjax.train.state import TrainState


def apply_and_loss(module: nn.Module, params, batch, inputs, objective: Objective, **kwargs):
    """(summed loss to differentiate, metrics) of the module on `inputs`: the objective's summed loss plus, for a
    mixture-of-experts model (config.num_experts > 0), its weighted router losses (`objectives.base.router_losses`,
    also reported as metrics); `metrics['loss']` stays the objective's own loss."""
    config = getattr(module, "config", None)
    if config is None or not getattr(config, "num_experts", 0):
        outputs = module.apply({"params": params}, **inputs, **kwargs)
        _, metrics = objective.loss_fn(batch, outputs)
        return _summed_loss(metrics)[0], metrics
    outputs, state = module.apply({"params": params}, **inputs, mutable=[moe.AUX_COLLECTION], **kwargs)
    _, metrics = objective.loss_fn(batch, outputs)
    summed, weight = _summed_loss(metrics)
    term, router_metrics = router_losses(state.get(moe.AUX_COLLECTION, {}), config, weight)
    return summed + term, {**metrics, **router_metrics}


def _summed_loss(metrics) -> tuple[jax.Array, jax.Array]:
    """metrics['loss'], the (summed loss, loss weight) pair; (0, 0) for an evaluation objective that reports no loss
    (PET's verbalizer scoring: accuracy only)."""
    if "loss" not in metrics:
        zero = jnp.zeros((), jnp.float32)
        return zero, zero
    return metrics["loss"]


def loss_and_grads(params, batch, rng, module: nn.Module, objective: Objective, deterministic: bool = False):
    """Summed-loss gradients and metrics on one (micro-)batch.

    With `objective.sparse_model_inputs` (MLM: the head only at the predicted positions), the step runs those
    inputs when they cover the batch and the full `model_inputs` otherwise: a `lax.cond` around the whole
    value-and-grad, so that each branch keeps only its own activations for the backward pass.
    """

    def grads_with(inputs):
        def summed_loss(p):
            return apply_and_loss(module, p, batch, inputs, objective, deterministic=deterministic,
                                  rngs=None if deterministic else {"dropout": rng})

        (_, metrics), grads = jax.value_and_grad(summed_loss, has_aux=True)(params)
        return grads, metrics

    if objective.sparse_model_inputs is None:
        return grads_with(objective.model_inputs(batch))
    sparse_inputs, fits = objective.sparse_model_inputs(batch)
    return jax.lax.cond(fits, lambda: grads_with(sparse_inputs), lambda: grads_with(objective.model_inputs(batch)))


def accumulated_grads(params, batch, rng, module, objective, grad_accum_steps: int = 1):
    """Mean-loss gradients over the whole batch, computed in `grad_accum_steps` sequential micro-batches."""
    if grad_accum_steps == 1:
        grads, metrics = loss_and_grads(params, batch, rng, module, objective)
    else:
        def split(x):  # [batch, ...] -> [micro_steps, batch / micro_steps, ...]
            if x.shape[0] % grad_accum_steps:
                raise ValueError(f"Batch size {x.shape[0]} is not divisible by grad_accum_steps={grad_accum_steps}.")
            return x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:])

        micro_batches = jax.tree.map(split, batch)

        def body(carry, inputs):
            i, micro = inputs
            grads, metrics = loss_and_grads(params, micro, jax.random.fold_in(rng, i), module, objective)
            summed_grads, summed_metrics = carry
            summed = (jax.tree.map(jnp.add, summed_grads, grads), metrics_lib.add_metrics(summed_metrics, metrics))
            return summed, None

        zero = jax.eval_shape(lambda: loss_and_grads(params, jax.tree.map(lambda x: x[0], micro_batches), rng,
                                                     module, objective))
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
        (grads, metrics), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum_steps), micro_batches))
    total_weight = jnp.maximum(metrics["loss"][1], 1.0)
    grads = jax.tree.map(lambda g: g / total_weight, grads)
    return grads, metrics


def _two_stage_grads(state: TrainState, batch, rng, module, objective, grad_accum_steps, two_stage):
    """bert2BERT's two-stage schedule (`compression.two_stage`): (grads, metrics, the parameter groups to update)
    of the sub-model the step samples in stage 1 (its top block and the head) or of the full model after it; a
    `lax.switch`, so only the chosen depth is computed."""
    subs = two_stage.sub_models(module)
    branches = [functools.partial(accumulated_grads, batch=batch, rng=rng, module=model, objective=objective,
                                  grad_accum_steps=grad_accum_steps) for model in [*subs, module]]
    index = two_stage.branch(rng, state.step, module.config)
    grads, metrics = jax.lax.switch(index, branches, state.params)
    depths = jnp.asarray([sub.depth for sub in subs] + [module.config.num_encoder_layers], jnp.float32)
    metrics = dict(metrics, sub_model_layers=(depths[index], jnp.ones((), jnp.float32)))
    return grads, metrics, two_stage.trained_groups(index, module.config)


def train_step(state: TrainState, batch, *, module, objective: Objective, tx: optax.GradientTransformation,
               schedule, grad_accum_steps: int = 1, two_stage=None):
    """One update. Not `optax.apply_if_finite`: that wraps the optimizer state (another checkpoint tree) and sees
    only the gradients; here the loss is checked too and the state keeps its structure. `two_stage`
    (`compression.two_stage.TwoStage`, `tx` wrapped by `two_stage.optimizer`): bert2BERT's schedule, stage 1
    updating only a sampled sub-model's top block and head (every other parameter and its optimizer state
    unchanged), then the ordinary step."""
    rng = jax.random.fold_in(state.rng, state.step)
    if two_stage is None:
        grads, metrics = accumulated_grads(state.params, batch, rng, module, objective, grad_accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
    else:
        if not isinstance(state.opt_state, two_stage_lib.TwoStageState):
            raise TypeError("train_step(two_stage=...) needs the optimizer wrapped by "
                            "compression.two_stage.optimizer (its per-group update counts).")
        grads, metrics, trained = _two_stage_grads(state, batch, rng, module, objective, grad_accum_steps,
                                                   two_stage)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, trained=trained)
        params = two_stage_lib.keep_untrained(optax.apply_updates(state.params, updates), state.params,
                                              module.config, two_stage, trained)
    one = jnp.ones((), jnp.float32)
    grad_norm = optax.global_norm(grads).astype(jnp.float32)
    metrics = dict(metrics, learning_rate=(jnp.asarray(schedule(state.step), jnp.float32), one),
                   grad_norm=(grad_norm, one))
    # A step whose loss or gradient is not finite changes nothing but the step counter (the rng and the data
    # position move on), and its metrics count for nothing; `nonfinite` tells the loop (plmjax.train.faults).
    finite = jnp.isfinite(metrics["loss"][0]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), metrics)
    metrics["nonfinite"] = jnp.logical_not(finite)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), metrics


def eval_step(params, batch, *, module, objective: Objective):
    _, metrics = apply_and_loss(module, params, batch, objective.model_inputs(batch), objective, deterministic=True)
    return metrics


def jit_train_step(module, objective, tx, schedule, mesh, state_shardings, *, grad_accum_steps=1,
                   rules=sharding.LOGICAL_AXIS_RULES, two_stage=None):
    step = functools.partial(train_step, module=module, objective=objective, tx=tx, schedule=schedule,
                             grad_accum_steps=grad_accum_steps, two_stage=two_stage)
    jitted = jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
                     out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    return sharding.in_mesh(jitted, mesh, rules)


def jit_eval_step(module, objective, mesh, param_shardings, *, rules=sharding.LOGICAL_AXIS_RULES):
    step = functools.partial(eval_step, module=module, objective=objective)
    jitted = jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(mesh, rules)),
                     out_shardings=sharding.replicated(mesh))
    return sharding.in_mesh(jitted, mesh, rules)


def jit_grads(module, objective, mesh, state_shardings, *, rules=sharding.LOGICAL_AXIS_RULES):
    """The gradients `train_step` would apply at this state and batch (for tests and analysis)."""
    def grads(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        return accumulated_grads(state.params, batch, rng, module, objective)[0]
    jitted = jax.jit(grads, in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
                     out_shardings=state_shardings.params)
    return sharding.in_mesh(jitted, mesh, rules)
