"""Only the new parameters learn: gradients, optimizer steps (frozen weights bit-identical), the trainer's sharded
state and step, saving/loading adapters and their size next to the full model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plmjax import peft, sharding
from plmjax.objectives import get_objective
from plmjax.train import adapter as adapter_lib
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib
from tests.peft.helpers import init_params, model_and_inputs, randomize

METHODS = tuple(peft.METHODS)


def _classifier(method):
    module, args, kwargs = model_and_inputs('encoder_classifier')
    wrapped = peft.wrap(module, method, **({'length': 3} if 'tuning' in method else {}))
    params = init_params(wrapped, args, kwargs)
    return wrapped, args, kwargs, params


def _classification_loss(wrapped, args, kwargs):
    labels = jnp.array([0, 2])

    def loss(params):
        logits = wrapped.apply({'params': params}, *args, **kwargs)['classification_logits']
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss


def _flat(tree):
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize('method', METHODS)
def test_gradients_reach_exactly_the_trainable_parameters(method):
    """Nonzero gradient on every new parameter and on the classifier head; exactly zero on the frozen encoder."""
    wrapped, args, kwargs, params = _classifier(method)
    if method in ('lora', 'adapter'):  # a zero B / up-projection zeroes the gradient of A / the down-projection:
        params = {**params, method: randomize(params[method])}  # move away from the init

    grads = _flat(jax.grad(_classification_loss(wrapped, args, kwargs))(params))
    mask = _flat(peft.trainable_mask(params))
    assert set(grads) == set(mask)
    trainable = {path for path, value in mask.items() if value}
    assert trainable == {path for path in mask if path.startswith(f"['{method}']")
                         or path.startswith("['base']['classifier']")}
    for path, grad in grads.items():
        if path in trainable:
            assert np.any(grad != 0), path
        else:
            assert not np.any(grad), path


@pytest.mark.parametrize('method', METHODS)
def test_optimizer_steps_leave_frozen_weights_bit_identical(method):
    """AdamW (plmjax's builder: weight decay, clipping) under peft.optimizer: three steps change every trainable
    parameter and leave every frozen one bit for bit as it was."""
    wrapped, args, kwargs, params = _classifier(method)
    tx = peft.optimizer(optim.make_optimizer('adamw', learning_rate=1e-2, schedule='constant')[0])
    loss_fn = _classification_loss(wrapped, args, kwargs)

    @jax.jit
    def update(params, opt_state):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    before, mask = _flat(params), _flat(peft.trainable_mask(params))
    opt_state = tx.init(params)
    for _ in range(3):
        params, opt_state = update(params, opt_state)
    after = _flat(params)
    for path, trainable in mask.items():
        if trainable:
            assert np.any(after[path] != before[path]), path
        else:
            assert after[path].tobytes() == before[path].tobytes(), path
    assert loss_fn(params) < loss_fn(jax.tree.map(jnp.asarray, _unflatten_like(params, before)))


def _unflatten_like(tree, flat):
    leaves = [flat[jax.tree_util.keystr(path)] for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


@pytest.mark.parametrize('method', ['lora', 'prompt_tuning'])
def test_trainer_state_and_step_on_a_mesh(method):
    """The trainer's own path: a sharded TrainState from the boxed (logically partitioned) parameters on 8 devices,
    and its jitted train step with the MLM objective: the base stays bit-identical, the method's parameters move."""
    module, _, _ = model_and_inputs('encoder')
    wrapped = peft.wrap(module, method, **({'length': 4} if method == 'prompt_tuning' else {}))
    tx, schedule = optim.make_optimizer('adamw', learning_rate=1e-2, schedule='constant')
    tx = peft.optimizer(tx)
    mesh = sharding.create_mesh()
    lengths = {'inputs': 16, 'targets': 16}
    state, shardings = state_lib.create_train_state(wrapped, tx, 'encoder', lengths, mesh, seed=0)
    assert set(state.params) == {'base', method}
    objective = get_objective('mlm')
    train_step = step_lib.jit_train_step(wrapped, objective, tx, schedule, mesh, shardings)
    rng = np.random.RandomState(0)
    targets = rng.randint(5, 500, (8, 16)).astype(np.int32)
    weights = (rng.rand(8, 16) < 0.3).astype(np.float32)
    batch = {'encoder_input_tokens': np.where(weights > 0, 3, targets).astype(np.int32),
             'encoder_target_tokens': targets, 'encoder_loss_weights': weights,
             'encoder_token_types': np.zeros((8, 16), np.int32)}
    before = _flat(jax.device_get(state.params))
    for _ in range(3):
        state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    after = _flat(jax.device_get(state.params))
    for path, value in before.items():
        if path.startswith("['base']"):
            assert after[path].tobytes() == value.tobytes(), path
        else:
            assert np.any(after[path] != value), path


@pytest.mark.parametrize('method', METHODS)
def test_save_and_load_adapter_round_trip_and_size(method, tmp_path):
    wrapped, args, kwargs, params = _classifier(method)
    trained = {**params, method: randomize(params[method], seed=5)}
    trained['base'] = {**trained['base'], 'classifier': randomize(params['base']['classifier'], seed=6)}
    adapter_lib.save_adapter(tmp_path / 'adapter', trained, method)
    loaded_method, adapter = adapter_lib.load_adapter(tmp_path / 'adapter')
    assert loaded_method == method
    assert set(adapter) == {method, 'base'} and set(adapter['base']) == {'classifier'}
    restored = peft.with_adapter(params, adapter)  # the fresh model + the saved adapter = the trained model
    assert jax.tree.structure(restored) == jax.tree.structure(trained)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(trained), jax.tree.leaves(restored)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(path)
    np.testing.assert_array_equal(wrapped.apply({'params': restored}, *args, **kwargs)['classification_logits'],
                                  wrapped.apply({'params': trained}, *args, **kwargs)['classification_logits'])

    size = peft.adapter_size(trained)
    count = sum(x.size for x in jax.tree.leaves(peft.adapter_params(trained)))
    assert size['adapter_parameters'] == count
    assert size['full_parameters'] == sum(x.size for x in jax.tree.leaves(trained))
    assert 4 * count <= size['adapter_bytes'] < size['full_bytes']
    print(f'{method}: adapter {size["adapter_bytes"]} bytes ({count} parameters), full model '
          f'{size["full_bytes"]} bytes ({size["full_parameters"]} parameters)')


def test_mask_and_errors_on_non_peft_parameters(tmp_path):
    module, args, kwargs = model_and_inputs('encoder')
    plain = init_params(module, args, kwargs)
    with pytest.raises(ValueError, match='wrap the module with plmjax.peft.wrap'):
        peft.trainable_mask(plain)
    wrapped = peft.wrap(module, 'adapter')
    boxed = wrapped.init(jax.random.key(0), *args, **kwargs)['params']  # logically partitioned leaves
    mask = peft.trainable_mask(boxed)
    assert jax.tree.structure(mask) == jax.tree.structure(boxed)
    assert all(jax.tree.leaves(mask['adapter'])) and not any(jax.tree.leaves(mask['base']))
    with pytest.raises(ValueError, match="no 'adapter' entry"):
        wrapped.apply({'params': {'base': init_params(wrapped, args, kwargs)['base']}}, *args, **kwargs)
    with pytest.raises(ValueError, match="got the parameters of a 'adapter' model"):
        adapter_lib.save_adapter(tmp_path, init_params(wrapped, args, kwargs), 'lora')
    with pytest.raises(FileNotFoundError, match='No PEFT adapter'):
        adapter_lib.load_adapter(tmp_path / 'missing')
