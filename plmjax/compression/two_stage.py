"""bert2BERT's two-stage pre-training (Chen et al., ACL 2022, "Two-stage Pre-training" and Algorithm 1 of its
appendix) for a grown encoder, as an option of the ordinary trainer (gin: `train.two_stage = @two_stage()`).

Stage 1, the first `stage1_steps` steps: sub-models of the target model built from its bottom layers, with
l_b, 2 l_b, ..., L layers (l_b = `block_layers`), all sharing the embeddings and the MLM head. Each step samples
one of them uniformly, runs forward and backward through it alone, and updates only its top l_b Transformer layers
and the MLM head; no other parameter changes in that step. Stage 2: the ordinary full-model step.

How plmjax does it (compression wraps, never forks the model):
- a sub-model (`SubModel`) is the encoder itself with the config of `depth` layers, applied to the bottom `depth`
  layers' parameters cut out of the full tree (`dynabert.extract` with an explicit layer list) — the model a
  `plmjax convert --extract --keep_layers 1,...,depth` would write;
- its `apply` takes the full parameter tree and puts every parameter outside its top block and head behind
  `jax.lax.stop_gradient`: the gradients keep the full tree's structure (zeros there) and XLA computes no
  backward pass below the top block (the bottom layers run forward only);
- the train step (`plmjax.train.step`) picks the branch with `jax.lax.switch` over the sub-models and the full
  model (only the chosen one is computed); the sub-model index is drawn from the step's key
  `fold_in(state.rng, state.step)`, so it depends only on the seed and the step, and a run resumed mid-stage-1
  samples what the uninterrupted run would have;
- the optimizer is wrapped (`optimizer`): a step updates only the trained parameter groups (the sub-model's top
  block and the head; every group after stage 1) — the others and their optimizer moments stay bit-identical
  (AdamW with a zero gradient would still move them by momentum and weight decay) — and each group's moments
  are bias-corrected with its own update count, as PyTorch's AdamW counts `step` per parameter and skips a
  parameter without a gradient. With optax's one global count a parameter frozen through stage 1 (the
  embeddings) would start stage 2 with the bias correction of a long-trained one: its first Adam steps several
  times too large. The learning-rate schedule and gradient clipping stay global, as a torch scheduler and
  `clip_grad_norm_` are. Groups: each block of l_b layers, the head, the rest (the embeddings, a pooler).

What the paper's text gives and what is plmjax's choice (docs/compression.md):
- *plmjax*: with tied embeddings (BERT) the MLM head's vocabulary projection is the word-embedding table; it is
  an embedding, not in any sub-model's top block, so stage 1 leaves it (and every embedding) unchanged; the head's
  own parameters (transform, its LayerNorm, the output bias; an untied output matrix) are updated. A pre-norm
  encoder's final norm (on top of every sub-model) counts as the head's.
- *plmjax*: a parameter's optimizer moments are frozen with it and its bias correction counts its own updates
  (PyTorch's AdamW semantics for a parameter without a gradient; the paper's code could not be consulted).
- stage 1 is counted in steps (`stage1_steps`), the paper's E_b in epochs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from plmjax.compression import dynabert

# The sub-model index is drawn from fold_in(step key, this): a stream of its own, apart from dropout (the step key
# itself) and the micro-batches' keys (fold_in(step key, i) for i < grad_accum_steps).
_SAMPLE_STREAM = 0x62326221
_HEAD = (("mlm_head",), ("encoder", "final_norm"))  # shared by every sub-model, updated by each


class TwoStageConfigError(ValueError):
    """The two-stage schedule cannot run as configured; the message names the gin binding to change."""


@dataclasses.dataclass(frozen=True)
class TwoStage:
    """bert2BERT's two-stage pre-training (gin: `train.two_stage = @two_stage()`).
    block_layers: l_b, the layers of a sub-model block: sub-models have l_b, 2 l_b, ..., L layers (L, the model's
      depth, a multiple of l_b); typically the small model's depth.
    stage1_steps: the steps of stage 1 (sub-model training); the rest of `train.num_steps` train the full model."""
    block_layers: int = 0
    stage1_steps: int = 0

    def depths(self, config) -> list[int]:
        """The sub-models' layer counts, l_b, 2 l_b, ..., L (the index a step samples picks one)."""
        return list(range(self.block_layers, config.num_encoder_layers + 1, self.block_layers))

    def check(self, config, architecture: str, objective: str, num_steps: int, peft=None, distill=None) -> None:
        """One error naming the gin binding that is wrong."""
        if peft or distill is not None:
            raise TwoStageConfigError(
                f"train.two_stage and train.{'peft' if peft else 'distill'} cannot be combined: bert2BERT's "
                "schedule pre-trains a whole grown encoder; remove one of the two bindings.")
        if (architecture, objective) != ("encoder", "mlm"):
            raise TwoStageConfigError(
                f"train.two_stage trains sub-models of an encoder on MLM batches (MODEL_ARCH = 'encoder', OBJECTIVE "
                f"= 'mlm'), not MODEL_ARCH={architecture!r} with OBJECTIVE={objective!r}: remove train.two_stage or "
                "pre-train an encoder with gin_configs/objectives/mlm.gin.")
        layers = config.num_encoder_layers
        if self.block_layers < 1 or layers % self.block_layers:
            raise TwoStageConfigError(
                f"two_stage.block_layers={self.block_layers} does not divide the model's {layers} layers "
                f"(num_encoder_layers): bind two_stage.block_layers to a divisor of {layers}, e.g. the small "
                "model's depth (sub-models have l_b, 2 l_b, ..., L layers).")
        if not 0 <= self.stage1_steps <= num_steps:
            raise TwoStageConfigError(
                f"two_stage.stage1_steps={self.stage1_steps} is outside 0..train.num_steps={num_steps}: bind "
                f"two_stage.stage1_steps to at most {num_steps} (stage 2, the full model, trains the rest).")
        if config.scan_layers or config.shared_layers:
            raise TwoStageConfigError(
                "train.two_stage cuts sub-models out of unrolled, unshared layers: the model has "
                f"scan_layers={config.scan_layers}, shared_layers={config.shared_layers}; set scan_layers = False "
                "(and rewrite a scanned checkpoint with `plmjax convert --layout unrolled`).")

    def sub_models(self, module: nn.Module) -> list["SubModel"]:
        return [SubModel(module, depth, self.block_layers) for depth in self.depths(module.config)]

    def branch(self, step_rng: jax.Array, step: jax.Array, config) -> jax.Array:
        """The train step's branch: in stage 1 the index of the sampled sub-model (`sample`), after it
        len(depths), the full model."""
        count = len(self.depths(config))
        return jnp.where(step < self.stage1_steps, sample(step_rng, count), count)

    def trained_groups(self, branch: jax.Array, config) -> jax.Array:
        """bool [groups]: the parameter groups (`group_ids`) a step of `branch` updates: sub-model k its block k
        and the head, the full model all."""
        blocks = len(self.depths(config))
        table = [[g in (k, blocks) for g in range(blocks + 2)] for k in range(blocks)] + [[True] * (blocks + 2)]
        return jnp.asarray(table)[branch]


def sample(step_rng: jax.Array, count: int) -> jax.Array:
    """The sub-model index a stage-1 step trains, uniform over 0..count-1, from the step's key
    `fold_in(state.rng, state.step)`."""
    return jax.random.randint(jax.random.fold_in(step_rng, _SAMPLE_STREAM), (), 0, count)


def group_ids(params: Any, config, block_layers: int) -> Any:
    """The parameter tree with each leaf's group: k for the layers of block k (layers k l_b .. (k+1) l_b - 1),
    blocks for the head, blocks + 1 for the rest (embeddings, a pooler)."""
    blocks = config.num_encoder_layers // block_layers

    def group(path):
        if path[0] == "encoder" and path[1].startswith("layers_"):
            return int(path[1][len("layers_"):]) // block_layers
        return blocks if any(path[:len(h)] == h for h in _HEAD) else blocks + 1
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: group(path) for path in flat})


@dataclasses.dataclass(frozen=True)
class SubModel:
    """The bottom `depth` layers of `module` (an encoder) with its embeddings and MLM head, applied to the full
    parameter tree like a flax module (`apply({'params': full}, ...)`), its gradient reaching only its top
    `block_layers` layers and the head."""
    module: nn.Module
    depth: int
    block_layers: int

    def trainable(self, params: Any) -> Any:
        """The parameter tree with True on the top block's and the head's leaves, False elsewhere."""
        config = self.module.config
        trained = (self.depth // self.block_layers - 1, config.num_encoder_layers // self.block_layers)
        return jax.tree.map(lambda g: g in trained, group_ids(params, config, self.block_layers))

    def apply(self, variables, *args, **kwargs):
        params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), variables["params"],
                              self.trainable(variables["params"]))
        config, params = dynabert.extract(params, self.module.config, 1.0, layers=range(1, self.depth + 1))
        return self.module.clone(config=config).apply({**variables, "params": params}, *args, **kwargs)


class TwoStageState(NamedTuple):
    inner: Any  # the wrapped optimizer's state (its moments' own count is not read: `updates` gives each group's)
    updates: jax.Array  # int32 [groups]: the updates each parameter group has had


def _is_moment_state(x) -> bool:
    """An optax state whose `count` bias-corrects moments (Adam's, LAMB's, Lion's, adafactor's), not a schedule's."""
    fields = getattr(x, "_fields", ())
    return "count" in fields and any(name in fields for name in ("mu", "nu", "v_row", "v"))


def _with_moment_count(state, count):
    return jax.tree.map(lambda x: x._replace(count=count.astype(x.count.dtype)) if _is_moment_state(x) else x,
                        state, is_leaf=_is_moment_state)


def optimizer(tx: optax.GradientTransformation, schedule: TwoStage, config) -> optax.GradientTransformationExtraArgs:
    """`tx` on the parameter groups a step trains (`update(..., trained=bool[groups])`, default all), each with
    its own update count for the moments' bias correction; the other groups get a zero update and keep their
    optimizer state. One `tx.update` per group, each leaf reading its own group's (XLA drops the rest)."""
    num_groups = len(schedule.depths(config)) + 2

    def init(params):
        return TwoStageState(tx.init(params), jnp.zeros((num_groups,), jnp.int32))

    def update(grads, state, params=None, *, trained=None, **unused_extra_args):
        trained = jnp.ones((num_groups,), bool) if trained is None else trained
        groups = group_ids(grads, config, schedule.block_layers)
        results = [tx.update(grads, _with_moment_count(state.inner, state.updates[g]), params)
                   for g in range(num_groups)]
        updates = jax.tree.map(lambda g, *new: jnp.where(trained[g], new[g], jnp.zeros_like(new[g])), groups,
                               *[u for u, _ in results])
        state_groups = optax.tree_utils.tree_map_params(tx, lambda _, g: g, state.inner, groups,
                                                        transform_non_params=lambda _: -1)
        inner = jax.tree.map(lambda g, old, *new: new[0] if g < 0 else jnp.where(trained[g], new[g], old),
                             state_groups, state.inner, *[s for _, s in results])
        return updates, TwoStageState(inner, state.updates + trained.astype(jnp.int32))

    return optax.GradientTransformationExtraArgs(init, update)


def keep_untrained(new_params, old_params, config, schedule: TwoStage, trained: jax.Array):
    """`new_params` on the trained groups, `old_params` (bit for bit) elsewhere."""
    return jax.tree.map(lambda g, new, old: jnp.where(trained[g], new, old),
                        group_ids(old_params, config, schedule.block_layers), new_params, old_params)
