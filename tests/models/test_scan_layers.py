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
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib
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


def _train(family, config, mesh, convert_from=None, steps=2):
    """Losses and gradients of `steps` train steps; the initial state converted from `convert_from` (a state of
    the unrolled layout, on the host) when given."""
    module = models.build_model(family, config)
    objective = families.objective(family)
    tx, schedule = optim.make_optimizer('adamw', learning_rate=1e-2, warmup_steps=1, total_steps=10)
    state, shardings = state_lib.create_train_state(module, tx, family, families.LENGTHS[family], mesh, seed=0)
    if convert_from is not None:
        state = jax.device_put(layout.scan_params(convert_from), shardings)
    host_state = jax.device_get(state)
    train_step = step_lib.jit_train_step(module, objective, tx, schedule, mesh, shardings)
    grads_fn = step_lib.jit_grads(module, objective, mesh, shardings)
    losses, grads = [], []
    for i in range(steps):
        batch = sharding.shard_batch(families.synthetic_batch(family, seed=i), mesh)
        grads.append(jax.device_get(grads_fn(state, batch)))
        state, metrics = train_step(state, batch)
        losses.append(np.float64(metrics['loss'][0]) / np.float64(metrics['loss'][1]))
    return losses, grads, host_state


_OPEN = pytest.mark.xfail(strict=True, reason='OPEN DEFECT (issue 12 closing note): the decoder relative_attention_bias '
                          'gradient of the scanned T5 on a (2,2,2) mesh differs from the unrolled one on 1 device')


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 fake CPU devices (tests/conftest.py)')
@pytest.mark.parametrize('family', [pytest.param(f, marks=_OPEN) if f == 'encoder_decoder' else f
                                    for f in families.FAMILIES])
def test_scanned_on_8_devices_equals_unrolled_on_1(family):
    no_dropout = dict(dropout_rate=0.0, attention_dropout_rate=0.0, activation_dropout_rate=0.0)
    one = sharding.create_mesh(devices=jax.devices()[:1])
    eight = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    losses_1, grads_1, state_1 = _train(family, families.tiny_config(family, **no_dropout), one)
    losses_8, grads_8, _ = _train(family, families.tiny_config(family, scan_layers=True, **no_dropout), eight,
                                  convert_from=state_1)
    assert losses_1[-1] != losses_1[0]
    for a, b in zip(losses_1, losses_8):
        assert _relative_error(a, b) <= RTOL
    for g1, g8 in zip(grads_1, grads_8):
        _assert_grads_equal(g1, g8, families.tiny_config(family))
