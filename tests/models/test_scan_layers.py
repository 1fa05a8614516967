"""TransformerConfig.scan_layers: the scanned stack (one nn.scan over the layers) computes the same loss and
gradients as the unrolled stack from the same parameters (converted by plmjax.models.layout), for each family,
with every remat policy, in cached decoding, and sharded on a (2, 2, 2) mesh of 8 fake CPU devices.

Dropout is off (deterministic=True, or rate 0 in training): the scan splits the 'dropout' rng per layer, so its
masks differ from the unrolled stack's."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plmjax import models, sharding
from plmjax.decode import greedy
from plmjax.models import layout
from tests.train import families

RTOL = 1e-6
RNG = np.random.default_rng(0)
IDS = jnp.asarray(RNG.integers(3, 512, size=(2, 12)), jnp.int32)
MASK = jnp.asarray(np.arange(12)[None, :] < np.array([[12], [7]]), jnp.int32)  # right padding in row 1
TARGETS = jnp.asarray(RNG.integers(0, 512, size=(2, 12)), jnp.int32)

CASES = {
    'bert_mlm': (models.EncoderModel, models.tiny_encoder()),
    'nezha': (models.EncoderModel, models.tiny_encoder(position='nezha_relative')),
    'gpt': (models.DecoderModel, models.tiny_decoder()),
    'pangu_query_layer_rotary': (models.DecoderModel,
                                 models.tiny_decoder(query_layer=True, position='rotary', num_decoder_layers=3)),
    't5_relative_bias': (models.EncoderDecoderModel, models.tiny_encoder_decoder()),
}


def _inputs(model_cls):
    if model_cls is models.EncoderDecoderModel:
        return (IDS, IDS[:, :8]), {'encoder_mask': MASK}
    return (IDS,), {'input_mask': MASK}


def _loss(params, model_cls, config):
    args, kwargs = _inputs(model_cls)
    logits = model_cls(config).apply({'params': params}, *args, **kwargs, deterministic=True)['logits']
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, TARGETS[:, :logits.shape[1], None], axis=-1))


def _relative_error(a, b) -> float:
    """||a - b|| / ||a||, summed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


def _assert_grads_equal(unrolled, scanned, config, rtol=RTOL):
    back = layout.unscan_params(scanned)
    assert jax.tree.structure(back) == jax.tree.structure(unrolled)
    flat, _ = jax.tree_util.tree_flatten_with_path(unrolled)
    for (path, a), b in zip(flat, jax.tree.leaves(back)):
        if jax.tree_util.keystr(path).endswith("['key']['bias']") and config.position != 'rotary':
            # exactly 0 in exact arithmetic (softmax ignores a per-query constant; rotary positions rotate the
            # bias, so there it is not constant): rounding noise only
            assert np.max(np.abs(np.asarray(b, np.float64))) < 1e-6
            continue
        assert _relative_error(a, b) <= rtol, jax.tree_util.keystr(path)


def _unrolled_and_scanned(model_cls, config, boxed=False):
    params = model_cls(config).init(jax.random.key(0), *_inputs(model_cls)[0])['params']
    scanned_config = dataclasses.replace(config, scan_layers=True)
    if not boxed:
        params = nn.meta.unbox(params)
    return params, layout.scan_params(params), scanned_config


@pytest.mark.parametrize('case', sorted(CASES))
def test_scanned_equals_unrolled_loss_and_gradients(case):
    model_cls, config = CASES[case]
    boxed, scanned_boxed, scanned_config = _unrolled_and_scanned(model_cls, config, boxed=True)
    # The scanned model's own parameter tree is the converted one: shapes, dtypes and logical axis names
    # ('layers' first on the stacked ones).
    own = jax.eval_shape(model_cls(scanned_config).init, jax.random.key(0), *_inputs(model_cls)[0])['params']
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    describe = lambda b: (b.value.shape, b.value.dtype, b.names)  # noqa: E731
    assert jax.tree.map(describe, scanned_boxed, is_leaf=is_box) == jax.tree.map(describe, own, is_leaf=is_box)
    assert sum(b.names[0] == 'layers' for b in jax.tree.leaves(own, is_leaf=is_box)) >= 4
    params, scanned_params = nn.meta.unbox(boxed), nn.meta.unbox(scanned_boxed)

    grad_fn = jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 2))
    value, grads = grad_fn(params, model_cls, config)
    value_scanned, grads_scanned = grad_fn(scanned_params, model_cls, scanned_config)
    assert _relative_error(value, value_scanned) <= RTOL
    _assert_grads_equal(grads, grads_scanned, config)


@pytest.mark.parametrize('policy', ['full', 'dots_saveable', 'dots_with_no_batch_dims_saveable'])
@pytest.mark.parametrize('case', ['bert_mlm', 'pangu_query_layer_rotary'])
def test_every_remat_policy_inside_the_scan_gives_the_same_numbers(case, policy):
    model_cls, config = CASES[case]
    params, scanned_params, scanned_config = _unrolled_and_scanned(model_cls, config)
    grad_fn = jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 2))
    value, grads = grad_fn(params, model_cls, config)
    remat_config = dataclasses.replace(scanned_config, remat_policy=policy)
    value_remat, grads_remat = grad_fn(scanned_params, model_cls, remat_config)
    assert _relative_error(value, value_remat) <= RTOL
    _assert_grads_equal(grads, grads_remat, config)
    jaxpr = str(jax.make_jaxpr(jax.grad(_loss), static_argnums=(1, 2))(scanned_params, model_cls, remat_config))
    assert 'scan' in jaxpr and ('checkpoint' in jaxpr or 'remat' in jaxpr)


def test_shared_layers_and_scan_layers_are_refused():
    with pytest.raises(ValueError, match='shared_layers'):
        models.tiny_encoder(shared_layers=True, scan_layers=True)


@pytest.mark.parametrize('case', ['gpt', 'pangu_query_layer_rotary'])
def test_greedy_decoding_gives_the_same_tokens_scanned_and_unrolled(case):
    model_cls, config = CASES[case]
    params, scanned_params, scanned_config = _unrolled_and_scanned(model_cls, config)
    prompt = IDS[:, :4]
    tokens = greedy.greedy_decode(model_cls(config), params, prompt, max_new_tokens=6)
    tokens_scanned = greedy.greedy_decode(model_cls(scanned_config), scanned_params, prompt, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(tokens_scanned))


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
@pytest.mark.parametrize('family', families.FAMILIES)
def test_scanned_on_8_devices_equals_unrolled_on_1(family):
    """Two AdamW steps, scanned on a (2, 2, 2) mesh against unrolled on 1 device, in float64.

    In float32 the partitioned reductions of the 8-device run sum in another order; AdamW's first update is about
    lr * sign(g), so that noise on near-zero gradient entries moves parameters by up to 2 lr, and the second
    step's gradients then differ by ~1e-6 relative whether or not the layers are scanned (unrolled on 8 devices
    against unrolled on 1 shows the same). float64 takes the rounding out, so 1e-6 tests the partitioning and
    the scan themselves. In float32, the first step's loss and gradients (before any update) are held to 1e-6
    too, and float32 scanned == unrolled over several steps is tested above on one device."""
    no_dropout = {'dropout_rate': 0.0, 'attention_dropout_rate': 0.0, 'activation_dropout_rate': 0.0}
    one = sharding.create_mesh(devices=jax.devices()[:1])
    eight = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    config = families.tiny_config(family, **no_dropout)
    losses_1, grads_1, state_1, _ = families.train_steps(family, config, one, steps=1)
    losses_8, grads_8, _, _ = families.train_steps(family, dataclasses.replace(config, scan_layers=True), eight,
                                                   steps=1, initial_state=layout.scan_params(state_1))
    assert jax.tree.leaves(grads_1)[0].dtype == np.float32
    assert _relative_error(losses_1[0], losses_8[0]) <= RTOL
    _assert_grads_equal(grads_1[0], grads_8[0], config)
    with jax.enable_x64(True):
        config = families.tiny_config(family, dtype='float64', param_dtype='float64', **no_dropout)
        losses_1, grads_1, state_1, _ = families.train_steps(family, config, one, steps=2)
        scanned = dataclasses.replace(config, scan_layers=True)
        losses_8, grads_8, _, _ = families.train_steps(family, scanned, eight, steps=2,
                                                       initial_state=layout.scan_params(state_1))
    assert jax.tree.leaves(grads_1)[0].dtype == np.float64
    assert losses_1[-1] != losses_1[0]
    for a, b in zip(losses_1, losses_8):
        assert _relative_error(a, b) <= RTOL
    for g1, g8 in zip(grads_1, grads_8):
        _assert_grads_equal(g1, g8, config)
