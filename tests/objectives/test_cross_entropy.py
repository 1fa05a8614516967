"""`softmax_cross_entropy`: values and gradients equal optax's (autodiff of log-softmax) to float32 rounding."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from plmjax.objectives.base import softmax_cross_entropy


def test_values_and_gradients_equal_optax():
    logits = 5 * jax.random.normal(jax.random.key(0), (3, 7, 101))
    targets = jax.random.randint(jax.random.key(1), (3, 7), 0, 101)
    g = jax.random.normal(jax.random.key(2), (3, 7))
    ours, vjp = jax.vjp(lambda x: softmax_cross_entropy(x, targets), logits)
    ref, ref_vjp = jax.vjp(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, targets), logits)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vjp(g)[0], ref_vjp(g)[0], rtol=1e-6, atol=1e-6)
    # Second use under jit and grad of a weighted sum, as the objectives use it.
    loss = lambda x: jnp.sum(softmax_cross_entropy(x, targets) * g)  # noqa: E731
    ref_loss = lambda x: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x, targets) * g)  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(logits), jax.grad(ref_loss)(logits), rtol=1e-6, atol=1e-6)
