"""MLM's head at the predicted positions only (`mlm.sparse_model_inputs`) gives the full-logits loss, metrics and
gradients; a batch with more predicted positions than `max_predictions` takes the full branch and is exact too."""
import dataclasses
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402
from plmjax.bench import batches  # noqa: E402
from plmjax.objectives import mlm  # noqa: E402
from plmjax.train import step  # noqa: E402

LENGTH = 32
FULL = dataclasses.replace(mlm.MLM, sparse_model_inputs=None)  # the head at every position


def test_max_predictions():
    assert mlm.max_predictions(128) == 24  # ceil(19.2) + 4
    assert mlm.max_predictions(512) == 81
    assert mlm.max_predictions(4) == 4  # never more than the length


def _setup(dtype):
    config = models.tiny_encoder(dtype=dtype, param_dtype=dtype, pooler=False)
    module = models.build_model('encoder', config)
    params = module.init(jax.random.key(0), jnp.ones((1, LENGTH), jnp.int32))['params']
    batch = batches.synthetic_batch('encoder', 4, {'inputs': LENGTH}, config.vocab_size, seed=3)
    batch['encoder_loss_weights'][0, :2] = 0.5  # fractional weights count too
    return module, params, batch


def _grads(objective, module, params, batch, deterministic=True):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return jax.jit(lambda p, b: step.loss_and_grads(p, b, jax.random.key(1), module, objective,
                                                    deterministic=deterministic))(params, batch)


def _assert_same(a, b, rtol):
    (grads_a, metrics_a), (grads_b, metrics_b) = a, b
    for name in metrics_b:
        np.testing.assert_allclose(np.asarray(metrics_a[name]), np.asarray(metrics_b[name]), rtol=rtol, err_msg=name)
    # Round-off scale: the largest gradient entry (the key bias's gradient is analytically zero, ~1e-20 here).
    scale = max(float(np.abs(y).max()) for y in jax.tree.leaves(grads_b))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * scale),
                 grads_a, grads_b)


def test_sparse_inputs_gather_exactly_the_predicted_positions():
    _, _, batch = _setup('float32')
    inputs, fits = mlm.sparse_model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    assert bool(fits)
    positions = np.asarray(inputs['mlm_positions'])
    assert positions.shape == (4, mlm.max_predictions(LENGTH))
    for row, weights in zip(positions, batch['encoder_loss_weights']):
        assert len(set(row)) == len(row)  # distinct positions
        assert set(np.flatnonzero(weights)) <= set(row)


def test_sparse_loss_and_grads_equal_full_logits_in_float64():
    with jax.enable_x64(True):
        module, params, batch = _setup('float64')
        _assert_same(_grads(mlm.MLM, module, params, batch), _grads(FULL, module, params, batch), rtol=1e-12)


def test_sparse_with_dropout_equals_full_in_float32():
    module, params, batch = _setup('float32')  # the same dropout masks: they come from the same rng and shapes
    _assert_same(_grads(mlm.MLM, module, params, batch, deterministic=False),
                 _grads(FULL, module, params, batch, deterministic=False), rtol=1e-5)


def test_batch_with_more_predictions_than_max_takes_the_full_branch():
    module, params, batch = _setup('float32')
    batch['encoder_loss_weights'][2] = 1.0  # a u-PMLM row: every position predicted
    inputs, fits = mlm.sparse_model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    assert not bool(fits)
    sparse, full = _grads(mlm.MLM, module, params, batch), _grads(FULL, module, params, batch)
    assert float(sparse[1]['loss'][1]) == pytest.approx(batch['encoder_loss_weights'].sum())
    _assert_same(sparse, full, rtol=1e-6)


def test_eval_and_model_keep_full_logits_without_positions():
    module, params, batch = _setup('float32')
    out = module.apply({'params': params}, jnp.asarray(batch['encoder_input_tokens']))
    assert out['logits'].shape == (4, LENGTH, 512) and 'mlm_positions' not in out
    positions = jnp.array([[3, 0], [5, 7], [1, 1], [31, 2]])
    gathered = module.apply({'params': params}, jnp.asarray(batch['encoder_input_tokens']), mlm_positions=positions)
    expected = np.take_along_axis(np.asarray(out['logits']), np.asarray(positions)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(gathered['logits']), expected, rtol=1e-5, atol=1e-5)
