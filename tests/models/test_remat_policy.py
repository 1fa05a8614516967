"""TransformerConfig.remat_policy: every policy computes the same loss and gradients as no remat, and its gradient
program holds one rematerialized (checkpoint) region per layer; remat_policy is the one remat switch (the old
flag remat=True is gone)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax import models

IDS = jnp.asarray(np.random.RandomState(0).randint(1, 512, size=(2, 16)), jnp.int32)


def _loss(params, config):
    return models.DecoderModel(config).apply({'params': params}, IDS)['logits'].std()


@pytest.mark.parametrize('policy', ['full', 'dots_saveable', 'dots_with_no_batch_dims_saveable'])
def test_remat_policies_give_the_same_loss_and_gradients(policy):
    config = models.tiny_decoder()
    params = models.DecoderModel(config).init(jax.random.key(0), IDS)['params']
    grad_fn = jax.jit(jax.value_and_grad(_loss), static_argnums=1)
    value, grads = grad_fn(params, config)
    value_remat, grads_remat = grad_fn(params, models.tiny_decoder(remat_policy=policy))
    np.testing.assert_allclose(value, value_remat, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads_remat)
    # The backward pass holds a rematerialized (checkpoint) region for each layer.
    jaxpr = str(jax.make_jaxpr(jax.grad(_loss), static_argnums=1)(params, models.tiny_decoder(remat_policy=policy)))
    assert jaxpr.count('checkpoint') + jaxpr.count('remat') >= config.num_decoder_layers


def test_remat_policy_is_the_one_switch_and_unknown_policies_are_refused():
    assert models.tiny_decoder(remat_policy='full').remat_policy == 'full'
    assert models.tiny_decoder(remat_policy='dots_saveable').remat_policy == 'dots_saveable'
    assert models.tiny_decoder().remat_policy == 'none'
    with pytest.raises(TypeError, match='remat'):
        models.tiny_decoder(remat=True)
    with pytest.raises(ValueError, match='remat_policy'):
        models.tiny_decoder(remat_policy='everything')
