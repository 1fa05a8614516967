"""Optimizers and learning-rate schedules, built from optax (no hand-written optimizer).

`make_optimizer(...)` returns `(tx, schedule)`: an `optax.GradientTransformation` and the learning-rate
schedule it uses, so the loop can log `schedule(update_count)`.

The transformation is, outermost first::

    optax.MultiSteps(                      # only when grad_accum_steps > 1
        optax.chain(
            optax.clip_by_global_norm(clip_norm),   # only when clip_norm is not None
            <adamw | lamb | adafactor | sgd>(learning_rate=schedule, ...)))

Gradient accumulation (`grad_accum_steps = k > 1`) follows `optax.MultiSteps` exactly:

* the train step calls `tx.update(grads_of_one_micro_batch, opt_state, params)` once per micro-batch;
  gradients are averaged (mean, not sum) over k micro-batches and the averaged gradient is clipped and fed
  to the optimizer on every k-th call. On the other k-1 calls the returned updates are exact zeros, so
  `optax.apply_updates` leaves the parameters unchanged. `optax.MultiSteps.has_updated(opt_state)` tells
  whether the last call applied an update.
* The schedule counts OPTIMIZER UPDATES, not micro-batches: `warmup_steps` and `total_steps` are in
  optimizer updates (= micro-batches / k). The update applied at 0-based micro-step t (t % k == k - 1)
  uses `schedule(t // k)`; to log the learning rate at micro-step t use `schedule(t // k)`.
* k = 1 does not wrap in MultiSteps (the optimizer state is then the plain chain state), so a checkpoint
  written with one value of grad_accum_steps does not restore into a run with another value of k when one
  of them is 1.

Weight decay is decoupled (AdamW/LAMB: `param -= lr * weight_decay * param`, as in BERT and
torch.optim.AdamW) and skips biases and normalization parameters (see `default_weight_decay_mask`).
"""

import re
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('adamw', 'lamb', 'adafactor', 'sgd')
SCHEDULES = ('linear', 'cosine', 'rsqrt', 'constant')

# Hyperparameters each optimizer uses when the caller leaves them as None.
# adamw/lamb: BERT's (Devlin et al. 2019; You et al. 2020). adafactor: optax's own defaults, i.e. T5's
# (no momentum, eps 1e-30, no weight decay). sgd: plain SGD.
_DEFAULTS = {
    'adamw': dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01),
    'lamb': dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01),
    'adafactor': dict(b1=None, b2=None, eps=1e-30, weight_decay=None),
    'sgd': dict(b1=None, b2=None, eps=None, weight_decay=None),
}
# Hyperparameters an optimizer has no use for: setting them is an error, never silently ignored.
_UNUSED = {'adamw': (), 'lamb': (), 'adafactor': ('b2',), 'sgd': ('b2', 'eps')}

_NO_DECAY_LEAF_NAMES = ('bias', 'scale')
_NORM_MODULE = re.compile(r'norm|^ln(_|\d|$)', re.IGNORECASE)


def make_schedule(schedule: str = 'linear', learning_rate: float = 1e-4, warmup_steps: int = 0,
                  total_steps: Optional[int] = None, end_lr_factor: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then one of:

  * 'linear': linear decay to `learning_rate * end_lr_factor` at `total_steps` (BERT), constant after;
  * 'cosine': half-cosine decay to `learning_rate * end_lr_factor` at `total_steps`, constant after;
  * 'rsqrt': inverse square root, `learning_rate * sqrt(warmup_steps / step)` for step >= warmup_steps
    (the Transformer's "Noam" schedule; T5 uses the same decay, `1/sqrt(max(step, warmup))`, but holds the
    rate constant instead of ramping it during warmup); with warmup_steps=0 it is
    `learning_rate / sqrt(max(step, 1))`;
  * 'constant': `learning_rate` after warmup.

  Steps count optimizer updates (see the module docstring for gradient accumulation).
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'Unknown learning-rate schedule {schedule!r}; valid names: {", ".join(SCHEDULES)}.')
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  if schedule in ('linear', 'cosine'):
    if total_steps is None:
      raise ValueError(f"The {schedule!r} schedule decays to its end at total_steps: set total_steps "
                       "(e.g. the gin binding make_optimizer.total_steps), or use schedule='rsqrt' or 'constant'.")
    if total_steps < warmup_steps:
      raise ValueError(f'warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps}).')
  end_value = learning_rate * end_lr_factor

  if schedule == 'linear':
    decay = optax.linear_schedule(learning_rate, end_value, transition_steps=total_steps - warmup_steps)
  elif schedule == 'cosine':
    decay = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps - warmup_steps, 1),
                                        alpha=end_lr_factor)
  elif schedule == 'rsqrt':
    # `decay` receives step - warmup_steps (join_schedules shifts it).
    def decay(count):
      step = jnp.asarray(count, jnp.float32) + warmup_steps
      return learning_rate * jnp.sqrt(max(warmup_steps, 1) / jnp.maximum(step, max(warmup_steps, 1)))
  else:
    decay = optax.constant_schedule(learning_rate)

  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)
  return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def _path_names(path) -> list:
  """Dict keys / attribute names / indices of a pytree path, as strings."""
  names = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
  return names


def _decays(path) -> bool:
  names = _path_names(path)
  if names and names[-1] == 'value':  # a flax nn.Partitioned box: the parameter name is one level up
    names = names[:-1]
  if names and names[-1] in _NO_DECAY_LEAF_NAMES:
    return False
  return not any(_NORM_MODULE.search(name) for name in names[:-1])


def default_weight_decay_mask(params: Any) -> Any:
  """A pytree of bools like `params`: True where weight decay applies.

  Excluded (False): parameters named 'bias' or 'scale' (flax Dense/LayerNorm/RMSNorm) and every parameter
  inside a module whose name contains 'norm' (any case: 'layer_norm', 'LayerNorm', 'final_norm') or is
  'ln', 'ln_f', 'ln_1' ... (GPT-2 names). Kernels and embeddings decay, as in BERT's AdamW.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)


def make_optimizer(name: str = 'adamw',
                   learning_rate: float = 1e-4,
                   schedule: str = 'linear',
                   warmup_steps: int = 0,
                   total_steps: Optional[int] = None,
                   end_lr_factor: float = 0.0,
                   weight_decay: Optional[float] = None,
                   b1: Optional[float] = None,
                   b2: Optional[float] = None,
                   eps: Optional[float] = None,
                   clip_norm: Optional[float] = 1.0,
                   grad_accum_steps: int = 1,
                   weight_decay_mask: Optional[Callable[[Any], Any]] = default_weight_decay_mask,
                   ) -> Tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns `(tx, schedule)`; see the module docstring for the chain and accumulation semantics.

  name: 'adamw' (optax.adamw), 'lamb' (optax.lamb), 'adafactor' (optax.adafactor), 'sgd' (optax.sgd).
  b1, b2, eps, weight_decay: None means the optimizer's default: adamw/lamb b1=0.9, b2=0.999, eps=1e-6,
    weight_decay=0.01 (BERT); adafactor: optax's own defaults (T5's: no momentum, eps=1e-30, no weight
    decay); sgd: no momentum, no weight decay. For adafactor b1 is its momentum and weight_decay its
    `weight_decay_rate`, which optax does NOT scale by the learning rate (param -= weight_decay * param per
    update); for sgd b1 is the momentum and weight_decay is added to the gradient (L2). Setting a
    hyperparameter the optimizer does not have (adafactor: b2; sgd: b2, eps) is an error.
  clip_norm: clip the (accumulated) gradient to this global norm before the optimizer; None disables it
    (T5/t5x use no global clipping with adafactor: set None to match).
  weight_decay_mask: params -> pytree of bools (True = decay); None decays every parameter.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}; valid names: {", ".join(OPTIMIZERS)}.')
  if int(grad_accum_steps) != grad_accum_steps or grad_accum_steps < 1:
    raise ValueError(f'grad_accum_steps must be a positive integer, got {grad_accum_steps!r}.')
  if clip_norm is not None and clip_norm <= 0:
    raise ValueError(f'clip_norm must be positive or None, got {clip_norm}.')
  given = dict(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  for unused in _UNUSED[name]:
    if given[unused] is not None:
      raise ValueError(f'Optimizer {name!r} has no hyperparameter {unused!r} (got {given[unused]}); '
                       f'remove the binding make_optimizer.{unused}.')
  hp = {k: (v if v is not None else _DEFAULTS[name][k]) for k, v in given.items()}
  lr = make_schedule(schedule, learning_rate, warmup_steps, total_steps, end_lr_factor)
  mask = weight_decay_mask

  if name == 'adamw':
    opt = optax.adamw(lr, b1=hp['b1'], b2=hp['b2'], eps=hp['eps'], weight_decay=hp['weight_decay'],
                      mask=mask)
  elif name == 'lamb':
    opt = optax.lamb(lr, b1=hp['b1'], b2=hp['b2'], eps=hp['eps'], weight_decay=hp['weight_decay'],
                     mask=mask)
  elif name == 'adafactor':
    opt = optax.adafactor(lr, momentum=hp['b1'], eps=hp['eps'], weight_decay_rate=hp['weight_decay'],
                          weight_decay_mask=mask if hp['weight_decay'] else None)
  else:  # sgd
    opt = optax.sgd(lr, momentum=hp['b1'])
    if hp['weight_decay']:
      opt = optax.chain(optax.add_decayed_weights(hp['weight_decay'], mask=mask), opt)

  if clip_norm is not None:
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
  if grad_accum_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=int(grad_accum_steps)).gradient_transformation()
  return opt, lr
