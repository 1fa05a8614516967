"""EncoderModel behaviour: padding invariance, bidirectionality, token types, dropout, dtypes, remat, errors."""
import functools
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402

CONFIG = models.tiny_encoder()
IDS = np.random.RandomState(0).randint(1, CONFIG.vocab_size, size=(2, 10)).astype(np.int32)


@functools.lru_cache(maxsize=None)  # one init and one compiled apply per config
def _setup(config):
    model = models.EncoderModel(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(IDS))['params']
    return model, params, jax.jit(lambda p, ids, **kw: model.apply({'params': p}, ids, **kw))


@pytest.mark.parametrize('position', ['learned', 'nezha_relative', 'sinusoidal', 'rotary', 'none'])
def test_padding_does_not_change_real_positions(position):
    config = models.tiny_encoder(position=position)
    model, params, apply = _setup(config)
    ids = IDS.copy()
    ids[1, 6:] = 0  # the second example has 6 real tokens
    padded = np.concatenate([ids, np.zeros((2, 6), np.int32)], axis=1)
    noisy = padded.copy()
    noisy[1, 6:] = 7  # garbage under the mask must be ignored too
    base = apply(params, jnp.asarray(ids))['hidden_states']
    more = apply(params, jnp.asarray(padded))['hidden_states']
    masked = apply(params, jnp.asarray(noisy), input_mask=jnp.asarray(padded != 0))['hidden_states']
    np.testing.assert_allclose(more[0, :10], base[0], atol=1e-5)
    np.testing.assert_allclose(more[1, :6], base[1, :6], atol=1e-5)
    np.testing.assert_allclose(masked[1, :6], base[1, :6], atol=1e-5)


def test_attention_is_bidirectional():
    _, params, apply = _setup(CONFIG)
    changed = IDS.copy()
    changed[:, -1] = (changed[:, -1] + 1) % CONFIG.vocab_size + 1
    a, b = apply(params, jnp.asarray(IDS))['hidden_states'], apply(params, jnp.asarray(changed))['hidden_states']
    assert not np.allclose(a[:, 0], b[:, 0], atol=1e-4)


def test_outputs_and_token_types():
    _, params, apply = _setup(CONFIG)
    out = apply(params, jnp.asarray(IDS))
    assert out['hidden_states'].shape == (2, 10, 64) and out['logits'].shape == (2, 10, 512)
    assert out['pooled'].shape == (2, 64) and out['logits'].dtype == jnp.float32
    zeros = apply(params, jnp.asarray(IDS), token_type_ids=jnp.zeros_like(IDS))
    ones = apply(params, jnp.asarray(IDS), token_type_ids=jnp.ones_like(IDS))
    np.testing.assert_array_equal(out['logits'], zeros['logits'])
    assert not np.allclose(out['logits'], ones['logits'])


def test_too_long_input_names_both_lengths_and_the_fix():
    config = models.tiny_encoder(max_length=16)
    model = models.EncoderModel(config)
    with pytest.raises(ValueError, match=r'length 20, longer than max_length=16.*`tiny_encoder.max_length = 20`'):
        model.init(jax.random.key(0), jnp.ones((1, 20), jnp.int32))


def test_dropout_uses_the_dropout_rng():
    config = models.tiny_encoder(dropout_rate=0.3, attention_dropout_rate=0.3)
    model, params, _ = _setup(config)
    ids = jnp.asarray(IDS)
    run = jax.jit(lambda key, deterministic: model.apply({'params': params}, ids, deterministic=deterministic,
                                                         rngs={'dropout': key})['logits'], static_argnums=1)
    np.testing.assert_array_equal(run(jax.random.key(1), False), run(jax.random.key(1), False))
    assert not np.allclose(run(jax.random.key(1), False), run(jax.random.key(2), False))
    np.testing.assert_array_equal(run(jax.random.key(1), True), run(jax.random.key(2), True))
    assert not np.allclose(run(jax.random.key(1), True), run(jax.random.key(1), False))


def test_bfloat16_compute_with_float32_params_and_logits():
    _, params, apply = _setup(CONFIG)
    model16 = models.EncoderModel(models.tiny_encoder(dtype='bfloat16'))
    params16 = jax.eval_shape(model16.init, jax.random.key(0), jnp.asarray(IDS))['params']
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.meta.unbox(params16)))
    out16 = jax.jit(lambda p, ids: model16.apply({'params': p}, ids))(params, jnp.asarray(IDS))
    assert out16['hidden_states'].dtype == jnp.bfloat16 and out16['logits'].dtype == jnp.float32
    out32 = apply(params, jnp.asarray(IDS))
    np.testing.assert_allclose(out16['logits'], out32['logits'], atol=0.1)  # bfloat16 has ~3 significant digits


def test_remat_gives_the_same_outputs_and_gradients():
    _, params, _ = _setup(CONFIG)
    ids = jnp.asarray(IDS)

    def loss(params, config):
        return models.EncoderModel(config).apply({'params': params}, ids)['logits'].std()

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = grad_fn(params, CONFIG)
    value_remat, grads_remat = grad_fn(params, models.tiny_encoder(remat_policy='full'))
    np.testing.assert_allclose(value, value_remat, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads_remat)


def test_runs_under_logical_axis_rules_and_a_mesh():
    """With a rules table and a mesh active, constraints and partitioned init apply and change nothing."""
    model, params, apply = _setup(CONFIG)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ('data', 'fsdp', 'tensor'))
    rules = (('batch', 'data'), ('length', None), ('embed', 'fsdp'), ('heads', 'tensor'), ('kv', None),
             ('mlp', 'tensor'), ('vocab', 'tensor'), ('expert', None), ('layers', None))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(IDS))
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        variables = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), jnp.asarray(IDS))
        sharded = jax.jit(lambda v, ids: model.apply(v, ids))(variables, jnp.asarray(IDS))
    assert shardings['params']['token_embedder']['embedding'].spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
    np.testing.assert_allclose(sharded['logits'], apply(params, jnp.asarray(IDS))['logits'], atol=1e-6)
