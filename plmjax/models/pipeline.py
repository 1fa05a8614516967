"""GPipe pipeline parallelism of a scanned layer stack over the mesh's 'stage' axis (the scheme of MaxText's pipeline
module, through the partitioner: sharding constraints and a roll, no hand-written collectives).

With TransformerConfig.pipeline_stages = S, a stack's L layers become S stages of L/S consecutive layers. The stage
parameters are stacked [stages, layers_per_stage, ...] under `pipeline/layers` (logical axes ('stage', 'layers', ...));
'stage' maps onto the 'stage' mesh axis (plmjax.sharding), so each stage's devices hold only its own layers. The batch
runs as M = pipeline_microbatches microbatches. Each of the M + S - 1 iterations runs every stage on its current
microbatch at once (nn.vmap over the stages, which the partitioner splits over the 'stage' devices) and then passes
each stage's output on to the next stage (jnp.roll over the stage axis: a collective permute between neighbours):

    iteration  0    1    2    3    4  ...          stage s works on microbatch t - s at iteration t;
    stage 0    m0   m1   m2   m3   m4              the last stage's output at iteration t is microbatch t - (S - 1).
    stage 1    -    m0   m1   m2   m3
    stage 2    -    -    m0   m1   m2

A stage outside 0 <= t - s < M computes on filler whose output is dropped: the bubble, a fraction (S - 1) / (M + S - 1)
of all stage-iterations (`bubble_fraction`). Both loops (the iterations, the layers of a stage) are scans; with
scan_layers=False they are unrolled (same parameters), as the plan's cost analysis needs (XLA counts a loop body
once).

Microbatch m holds the rows m, m + M, m + 2M, ... of the batch (a strided split keeps each data-parallel device's rows
on that device). The attention context inputs with a batch dimension (self-attention mask, cross mask, encoder output,
per-row rotary positions) are split the same way and each stage reads its own microbatch's rows; the others (a
[1, heads, q, k] T5 bias, NEZHA's relative embeddings, [length] positions) are the same for every stage. Dropout: the
'dropout' rng is split per iteration, stage and layer, so every (microbatch, layer) draws its own masks (other masks
than the unpipelined stack draws; deterministic runs give the same numbers).
"""
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from plmjax.models import layout
from plmjax.models.config import TransformerConfig

STAGE = 'stage'  # logical (and mesh) axis name of the stages
PIPELINE = 'pipeline'  # the pipelined stack's key; its stage parameters are under `pipeline/layers`


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """The fraction of stage-iterations a GPipe schedule spends idle: (S - 1) / (M + S - 1)."""
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def check_pipeline(config: TransformerConfig, num_layers: int, batch: int) -> None:
    """One ValueError naming every mismatch between the pipeline settings and the stack / batch, and the fix."""
    stages, micro = config.pipeline_stages, config.pipeline_microbatches
    problems = []
    if num_layers % stages:
        problems.append(f'a stack of {num_layers} layers does not split into pipeline_stages={stages} stages of equal '
                        f'size (choose a divisor of {num_layers}: `<preset>.pipeline_stages`)')
    if batch % micro:
        problems.append(f'the batch of {batch} rows does not split into pipeline_microbatches={micro} microbatches '
                        '(choose a divisor of the batch: `<preset>.pipeline_microbatches`, or change '
                        'train.batch_size)')
    if problems:
        raise ValueError('Pipeline settings do not fit: ' + '; '.join(problems) + '.')


def _microbatch(a: jax.Array, num_microbatches: int) -> jax.Array:
    """[batch, ...] -> [microbatches, batch / microbatches, ...]; microbatch m holds rows m, m + M, m + 2M, ..."""
    return a.reshape(a.shape[0] // num_microbatches, num_microbatches, *a.shape[1:]).swapaxes(0, 1)


def _unmicrobatch(a: jax.Array) -> jax.Array:
    """[microbatches, rows, ...] -> [batch, ...], the inverse of `_microbatch`."""
    return a.swapaxes(0, 1).reshape(-1, *a.shape[2:])


def _has_batch_dim(name: str, a) -> bool:
    """Whether a context input of the layer (by its name in _LayerBody's signature) carries the batch dimension."""
    if a is None:
        return False
    if name == 'encoded':
        return True  # [batch, in_length, emb]
    if name == 'rotary_positions':
        return a.ndim == 2  # [batch, length], or [length] shared
    if name in ('mask', 'cross_mask', 'bias'):
        return a.ndim == 4 and a.shape[0] != 1  # [batch or 1, heads or 1, q, k]
    return False  # relative_kv [q, k, depth]


CONTEXT_INPUTS = ('mask', 'encoded', 'cross_mask', 'bias', 'relative_kv', 'rotary_positions')


class Pipeline(nn.Module):
    """`num_layers` layers of `layer(*layer_args)` (a module with the scan-body signature of
    transformer._LayerBody) run as a GPipe pipeline of config.pipeline_stages stages over
    config.pipeline_microbatches microbatches."""
    config: TransformerConfig
    layer: type
    layer_args: tuple
    num_layers: int

    def setup(self):
        stages = self.config.pipeline_stages
        stage = nn.scan(self.layer, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                        in_axes=(nn.broadcast,) * (len(CONTEXT_INPUTS) + 1), length=self.num_layers // stages,
                        unroll=1 if self.config.scan_layers else self.num_layers // stages,
                        metadata_params={nn.PARTITION_NAME: layout.LAYERS})
        self.layers = nn.vmap(stage, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                              in_axes=0, out_axes=0, axis_size=stages, spmd_axis_name=STAGE,
                              metadata_params={nn.PARTITION_NAME: STAGE})(*self.layer_args)

    def __call__(self, x, mask, encoded, cross_mask, bias, relative_kv, rotary_positions):
        """x: [batch, length, emb] -> [batch, length, emb]; the context inputs as _LayerBody takes them."""
        cfg = self.config
        stages, micro = cfg.pipeline_stages, cfg.pipeline_microbatches
        if self.is_initializing():  # the parameters do not depend on the microbatches; init may run on one row
            check_pipeline(cfg, self.num_layers, micro)  # the layers only
            micro = 1
        else:
            check_pipeline(cfg, self.num_layers, x.shape[0])
        context = (mask, encoded, cross_mask, bias, relative_kv, rotary_positions)
        batched = tuple(_has_batch_dim(name, a) for name, a in zip(CONTEXT_INPUTS, context))
        context = tuple(_microbatch(a, micro) if b else a for a, b in zip(context, batched))
        xs = nn.with_logical_constraint(_microbatch(x, micro), (None, 'batch', 'length', 'embed'))
        state = jnp.zeros((stages,) + xs.shape[1:], x.dtype)  # [stages, rows, length, emb]: each stage's output

        def iteration(module, state, t, xs, context):
            return module.iteration(state, t, xs, context, batched)

        loop = nn.scan(iteration, variable_broadcast='params', split_rngs={'params': False, 'dropout': True},
                       in_axes=(0, nn.broadcast, nn.broadcast), length=micro + stages - 1,
                       unroll=1 if cfg.scan_layers else micro + stages - 1)
        _, last = loop(self, state, jnp.arange(micro + stages - 1), xs, context)  # [iterations, rows, length, emb]
        return _unmicrobatch(last[stages - 1:])  # the last stage's outputs, microbatch 0 first

    def iteration(self, state, t, xs, context, batched):
        """Iteration t: stage 0 takes microbatch t, stage s > 0 the output of stage s - 1; every stage runs its
        layers. Returns (the new stage outputs, the last stage's output)."""
        stages, micro = self.config.pipeline_stages, xs.shape[0]
        stage = jnp.arange(stages)
        current = jnp.clip(t - stage, 0, micro - 1)  # [stages] the microbatch each stage works on
        shifted = jnp.roll(state, 1, axis=0)  # stage s receives stage s - 1's output
        inputs = jnp.where((stage == 0)[:, None, None, None], xs[jnp.minimum(t, micro - 1)][None], shifted)
        inputs = nn.with_logical_constraint(inputs, (STAGE, 'batch', 'length', 'embed'))
        per_stage = [None if a is None else jnp.take(a, current, axis=0) if b  # [stages, rows, ...]: own microbatch
                     else jnp.broadcast_to(a, (stages,) + a.shape) for a, b in zip(context, batched)]
        out, _ = self.layers(inputs, *per_stage, None)  # cache_index None: no cached decoding
        out = nn.with_logical_constraint(out, (STAGE, 'batch', 'length', 'embed'))
        return out, out[-1]


def _restage_leaf(leaf, num_stages: int | None):
    """[layers, ...] -> [stages, layers / stages, ...] (num_stages given) or back (None)."""
    if isinstance(leaf, meta.Partitioned):
        names = ((STAGE,) + tuple(leaf.names)) if num_stages else tuple(leaf.names)[1:]
        return leaf.replace(value=_restage_leaf(leaf.value, num_stages), names=names)
    shape = tuple(leaf.shape)
    new = (num_stages, shape[0] // num_stages) + shape[1:] if num_stages else (shape[0] * shape[1],) + shape[2:]
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(new, leaf.dtype)
    return leaf.reshape(new)


def _is_leaf(x) -> bool:
    return isinstance(x, (meta.Partitioned, jax.ShapeDtypeStruct))


def stage_params(tree, num_stages: int):
    """Scanned -> pipelined: every dict's `layers` ([layers, ...] leaves) becomes `pipeline/layers`
    ([stages, layers / stages, ...]). Parameters, gradients, optimizer states: any tree layout.scan_params takes."""
    def convert(d):
        if not isinstance(d.get(layout.LAYERS), Mapping) or PIPELINE in d:
            return d
        items = {k: v for k, v in d.items() if k != layout.LAYERS}
        items[PIPELINE] = {layout.LAYERS: jax.tree.map(lambda x: _restage_leaf(x, num_stages), d[layout.LAYERS],
                                                       is_leaf=_is_leaf)}
        return layout._rebuild_mapping(d, items)
    return layout._map_dicts(tree, convert)


def unstage_params(tree):
    """Pipelined -> scanned, the inverse of `stage_params`."""
    def convert(d):
        inner = d.get(PIPELINE)
        if not isinstance(inner, Mapping) or set(inner) != {layout.LAYERS}:
            return d
        items = {k: v for k, v in d.items() if k != PIPELINE}
        items[layout.LAYERS] = jax.tree.map(lambda x: _restage_leaf(x, None), inner[layout.LAYERS], is_leaf=_is_leaf)
        return layout._rebuild_mapping(d, items)
    return layout._map_dicts(tree, convert)
