"""TransformerConfig.pipeline_stages: the GPipe-pipelined stack (plmjax.models.pipeline) on a mesh of 4 fake CPU
devices with 4 stages and 8 microbatches computes the loss and gradients of the unpipelined scanned stack on one
device from the same parameters (converted by pipeline.stage_params), with its layer parameters split over the
'stage' mesh axis. Dropout is off (the pipeline splits the 'dropout' rng per iteration and stage)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models, sharding
from plmjax.models import pipeline

RTOL = 1e-5
STAGES, MICRO = 4, 8
RNG = np.random.default_rng(0)
BATCH, LENGTH = 16, 16
IDS = jnp.asarray(RNG.integers(3, 512, size=(BATCH, LENGTH)), jnp.int32)
LENGTHS = RNG.integers(5, LENGTH + 1, size=BATCH)
MASK = jnp.asarray(np.arange(LENGTH)[None, :] < LENGTHS[:, None], jnp.int32)  # right padding, a length per row
TARGETS = jnp.asarray(RNG.integers(0, 512, size=(BATCH, LENGTH)), jnp.int32)
TINY = dict(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, dropout_rate=0.0, attention_dropout_rate=0.0,
            scan_layers=True)

CASES = {  # the context inputs: a per-row padding mask (all), rotary positions, a shared T5 bias + cross-attention
    'bert_padding_mask': (models.EncoderModel, models.tiny_encoder(num_encoder_layers=4, **TINY)),
    'gpt_rotary': (models.DecoderModel, models.tiny_decoder(num_decoder_layers=4, position='rotary', **TINY)),
    't5_bias_cross_attention': (models.EncoderDecoderModel,
                                models.tiny_encoder_decoder(num_encoder_layers=4, num_decoder_layers=4, **TINY)),
}
SLOW = {'bert_padding_mask', 't5_bias_cross_attention'}  # ~30-50 s each on a loaded 2-core machine


def _inputs(model_cls):
    if model_cls is models.EncoderDecoderModel:
        return (IDS, IDS[:, :8]), {'encoder_mask': MASK}
    return (IDS,), {'input_mask': MASK}


def _loss(params, model_cls, config):
    args, kwargs = _inputs(model_cls)
    logits = model_cls(config).apply({'params': params}, *args, **kwargs, deterministic=True)['logits']
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(log_probs, TARGETS[:, :logits.shape[1], None], axis=-1))


def _relative_error(a, b) -> float:
    """||a - b|| / ||a||, summed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 fake CPU devices (tests/conftest.py)')
@pytest.mark.parametrize('case', [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_pipelined_on_4_stages_equals_unpipelined(case):
    model_cls, config = CASES[case]
    # rematerialized layers inside the pipeline too (remat changes no number)
    piped = dataclasses.replace(config, pipeline_stages=STAGES, pipeline_microbatches=MICRO, remat_policy='full')
    boxed = jax.jit(model_cls(config).init)(jax.random.key(0), *(a[:1] for a in _inputs(model_cls)[0]))['params']
    staged_boxed = pipeline.stage_params(boxed, STAGES)
    # The pipelined model's own parameter tree is the converted one: shapes and logical axes ('stage', 'layers', ..).
    own = jax.eval_shape(model_cls(piped).init, jax.random.key(0), *(a[:1] for a in _inputs(model_cls)[0]))['params']
    describe = lambda b: (b.value.shape, b.value.dtype, b.names)  # noqa: E731
    assert jax.tree.map(describe, staged_boxed, is_leaf=_is_box) == jax.tree.map(describe, own, is_leaf=_is_box)
    assert sum(b.names[:2] == ('stage', 'layers') for b in jax.tree.leaves(own, is_leaf=_is_box)) >= 8

    params = nn.meta.unbox(boxed)
    grad_fn = jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 2))
    value, grads = grad_fn(params, model_cls, config)

    mesh = sharding.create_mesh(data=1, stage=STAGES, devices=jax.devices()[:STAGES])
    shardings = sharding.logical_to_sharding(nn.get_partition_spec(staged_boxed), mesh)
    staged = jax.device_put(nn.meta.unbox(staged_boxed), shardings)
    run = sharding.in_mesh(jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 2)), mesh)
    value_piped, grads_piped = run(staged, model_cls, piped)

    # The stage axis really splits the layer parameters: each device holds one stage's layers.
    stacked = [(b, a) for b, a in zip(jax.tree.leaves(own, is_leaf=_is_box), jax.tree.leaves(staged))
               if b.names[0] == 'stage']
    assert len(stacked) >= 8
    for _, a in stacked:
        assert a.sharding.spec[0] == 'stage'
        assert {s.data.shape[0] for s in a.addressable_shards} == {1}
        assert len({s.device for s in a.addressable_shards}) == STAGES

    assert _relative_error(value, value_piped) <= RTOL
    back = pipeline.unstage_params(grads_piped)
    assert jax.tree.structure(back) == jax.tree.structure(grads)
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    for (path, a), b in zip(flat, jax.tree.leaves(back)):
        if jax.tree_util.keystr(path).endswith("['key']['bias']") and config.position != 'rotary':
            # exactly 0 in exact arithmetic (softmax ignores a per-query constant): rounding noise only
            assert np.max(np.abs(np.asarray(b, np.float64))) < 1e-6
            continue
        assert _relative_error(a, b) <= RTOL, jax.tree_util.keystr(path)


def test_bubble_fraction():
    assert pipeline.bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert pipeline.bubble_fraction(1, 8) == 0.0


def test_layers_and_batch_that_do_not_split_give_one_clear_error():
    config = models.tiny_decoder(num_decoder_layers=3, pipeline_stages=2, pipeline_microbatches=3, **TINY)
    with pytest.raises(ValueError, match=r'3 layers does not split into pipeline_stages=2.*batch of 16 rows does '
                                         r'not split into pipeline_microbatches=3'):
        pipeline.check_pipeline(config, 3, BATCH)
    with pytest.raises(ValueError, match=r'3 layers does not split into pipeline_stages=2'):
        jax.eval_shape(models.DecoderModel(config).init, jax.random.key(0), IDS)
    good_layers = dataclasses.replace(config, num_decoder_layers=4)
    params = jax.eval_shape(models.DecoderModel(good_layers).init, jax.random.key(0), IDS[:1])
    with pytest.raises(ValueError, match=r'^Pipeline settings do not fit: the batch of 16 rows does not split into '
                                         r'pipeline_microbatches=3'):
        jax.eval_shape(models.DecoderModel(good_layers).apply, params, IDS)
