"""ALBERT-style layer sharing (`shared_layers=True`): one set of layer parameters, applied num_layers times,
computes what an unshared stack with that layer copied into every position computes."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402

IDS = jnp.asarray(np.random.RandomState(0).randint(1, 512, size=(2, 10)))


def test_shared_layers_equal_copies_of_one_layer():
    def hidden(num_layers, shared_layers, params=None):
        model = models.EncoderModel(models.tiny_encoder(num_encoder_layers=num_layers, shared_layers=shared_layers))
        if params is None:
            params = jax.jit(model.init)(jax.random.key(0), IDS)['params']
        return params, np.asarray(jax.jit(model.apply)({'params': params}, IDS)['hidden_states'])

    params, shared = hidden(3, True)
    assert sorted(k for k in params['encoder'] if k.startswith('layers_')) == ['layers_0']
    copied = {**params, 'encoder': {**params['encoder'], 'layers_1': params['encoder']['layers_0'],
                                    'layers_2': params['encoder']['layers_0']}}
    np.testing.assert_array_equal(shared, hidden(3, False, copied)[1])
    assert not np.allclose(shared, hidden(1, False, params)[1])  # and the one layer really runs 3 times


def test_cached_decoding_with_shared_layers_is_refused():
    model = models.DecoderModel(models.tiny_decoder(shared_layers=True))
    with pytest.raises(ValueError, match='shared_layers=True'):
        model.init(jax.random.key(0), IDS, decode=True)
