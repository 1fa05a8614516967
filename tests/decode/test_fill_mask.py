"""Fill-mask's top-k against a softmax and a sort done by hand in float64."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from plmjax import models  # noqa: E402
from plmjax.decode import fill_mask  # noqa: E402


def test_top_k_fills_are_the_most_probable_tokens_with_their_probabilities():
    config = models.tiny_encoder(vocab_size=40, dropout_rate=0.0)
    module = models.build_model('encoder', config)
    params = nn.meta.unbox(module.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
    ids = np.random.default_rng(0).integers(5, 40, (2, 10)).astype(np.int32)
    ids[:, [2, 6]] = 3
    positions = np.array([[2, 6], [6, 2]], np.int32)
    got = fill_mask.top_k_fills(module, params, ids, positions, k=4, banned_ids=(0, 3))
    logits = np.asarray(module.apply({'params': params}, ids)['logits'], np.float64)  # [b, l, vocab]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(2):
        for j, position in enumerate(positions[row]):
            p = probs[row, position].copy()
            p[[0, 3]] = -1
            expected = np.argsort(-p, kind='stable')[:4]
            np.testing.assert_array_equal(np.asarray(got.ids)[row, j], expected)
            np.testing.assert_allclose(np.asarray(got.probs)[row, j], probs[row, position, expected], rtol=1e-5)
