"""The mixture-of-experts MLP (plmjax.layers.moe) against the dense MLP and against a float64 numpy brute force:
routing, capacity and token dropping, the load-balancing and z losses."""
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax.layers import mlp, moe


def _moe(**kwargs):
    defaults = dict(num_experts=4, mlp_dim=24, activation='relu', dtype=jnp.float64, param_dtype=jnp.float64)
    return moe.MoeMlp(**{**defaults, **kwargs})


def _run(module, x, params=None, seed=0):
    """(output, sown aux values {name: float}, params) of a float64 MoeMlp on x."""
    if params is None:
        params = nn.meta.unbox(module.init(jax.random.PRNGKey(seed), x)['params'])
    y, state = module.apply({'params': params}, x, mutable=[moe.AUX_COLLECTION])
    aux = {name: float(value[0]) for name, value in state[moe.AUX_COLLECTION].items()}
    return np.asarray(y), aux, params


def _numpy_moe(x, params, k, capacity, gated=False):
    """Brute force, float64, one token at a time: GShard's priority (all first choices in token order, then the
    second choices), drops past `capacity`, experts as relu MLPs. -> (output, dropped fraction, loads, z)."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    groups, tokens, _ = x.shape
    num_experts = p['router'].shape[1]
    out = np.zeros_like(x)
    dropped = 0
    balance, z = [], []
    for g in range(groups):
        logits = x[g] @ p['router']  # [token, expert]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind='stable')[:, :k]  # [token, k]
        gates = np.take_along_axis(probs, top, -1)
        if k > 1:
            gates = gates / gates.sum(-1, keepdims=True)
        load = np.zeros(num_experts, int)
        for choice in range(k):
            for t in range(tokens):
                e = top[t, choice]
                if load[e] >= capacity:
                    dropped += 1
                    continue
                load[e] += 1
                if gated:
                    h = np.maximum(x[g, t] @ p['wi_0_kernel'][e], 0) * (x[g, t] @ p['wi_1_kernel'][e])
                else:
                    h = np.maximum(x[g, t] @ p['wi_kernel'][e] + p['wi_bias'][e], 0)
                y = h @ p['wo_kernel'][e] + (0 if gated else p['wo_bias'][e])
                out[g, t] += gates[t, choice] * y
        chosen = np.zeros((tokens, num_experts))
        chosen[np.arange(tokens)[:, None], top] = 1
        balance.append(num_experts * np.sum(chosen.mean(0) * probs.mean(0)))
        lse = np.log(np.sum(np.exp(logits), -1))
        z.append(np.mean(lse ** 2))
    return out, dropped / (groups * tokens * k), float(np.mean(balance)), float(np.mean(z))


def _random_x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def test_capacity_formula():
    assert moe.expert_capacity(16, 4, 1, 1.25) == 5  # ceil(1.25 * 16 / 4)
    assert moe.expert_capacity(16, 4, 2, 1.0) == 8
    assert moe.expert_capacity(1, 8, 1, 1.0) == 1


@pytest.mark.parametrize('gated', [False, True])
def test_top1_with_identical_experts_is_router_probability_times_the_dense_mlp(gated):
    """Switch scales the chosen expert's output by its router probability p: with every expert a copy of one dense
    MLP and room for every token, the MoE output is p * Mlp(x), p = max softmax(x @ router)."""
    with jax.enable_x64(True):
        x = jnp.asarray(_random_x((3, 8, 16)))
        dense = mlp.Mlp(mlp_dim=24, activation='relu', gated=gated, dtype=jnp.float64, param_dtype=jnp.float64)
        dense_params = nn.meta.unbox(dense.init(jax.random.PRNGKey(1), x)['params'])
        layer = _moe(gated=gated, capacity_factor=4.0)  # capacity = all 8 tokens of a group
        params = dict(nn.meta.unbox(layer.init(jax.random.PRNGKey(2), x)['params']))
        for name, sub in dense_params.items():  # expert e = the dense MLP, for every e
            for leaf, value in sub.items():
                params[f'{name}_{leaf}'] = jnp.broadcast_to(value, (4,) + value.shape)
        y, aux, _ = _run(layer, x, params)
        logits = np.asarray(x) @ np.asarray(params['router'])
        p = np.max(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), axis=-1)  # [group, token]
        expected = p[..., None] * np.asarray(dense.apply({'params': dense_params}, x))
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        assert aux['dropped_fraction'] == 0.0
        assert not np.allclose(p, p.flat[0])  # the router really varies p


@pytest.mark.parametrize('k,capacity_factor,gated', [(2, 4.0, False), (1, 4.0, False), (2, 0.75, False),
                                                     (1, 0.5, True), (2, 1.0, True)])
def test_against_numpy_brute_force(k, capacity_factor, gated):
    """Output, dropped fraction, load-balancing loss and z-loss equal the float64 numpy loop, with and without
    dropping (capacity factor 4: nothing dropped)."""
    with jax.enable_x64(True):
        x = _random_x((3, 12, 16), seed=k)
        layer = _moe(num_experts_per_token=k, capacity_factor=capacity_factor, gated=gated, use_bias=not gated,
                     router_init=nn.initializers.normal(1.0))  # a peaked router, so experts overflow
        y, aux, params = _run(layer, jnp.asarray(x))
        capacity = moe.expert_capacity(12, 4, k, capacity_factor)
        expected, dropped, balance, z = _numpy_moe(x, params, k, capacity, gated)
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
        assert aux['dropped_fraction'] == pytest.approx(dropped, abs=1e-12)
        assert aux['load_balancing_loss'] == pytest.approx(balance, rel=1e-10)
        assert aux['router_z_loss'] == pytest.approx(z, rel=1e-10)
        assert (dropped == 0) == (capacity_factor == 4.0)


def _hand_layer(k, capacity_factor):
    """2 experts, emb 2: tokens (1, 0) prefer expert 0 (p = sigmoid(4)), tokens (0, 1) prefer expert 1. Each expert
    returns its input times (e + 1): wi = identity, wo = (e + 1) * identity, relu of a non-negative input."""
    layer = moe.MoeMlp(num_experts=2, mlp_dim=2, num_experts_per_token=k, capacity_factor=capacity_factor,
                       activation='relu', dtype=jnp.float64, param_dtype=jnp.float64)
    eye = np.eye(2)
    params = {'router': np.array([[2.0, -2.0], [-2.0, 2.0]]), 'wi_kernel': np.stack([eye, eye]),
              'wi_bias': np.zeros((2, 2)), 'wo_kernel': np.stack([eye, 2 * eye]), 'wo_bias': np.zeros((2, 2))}
    x = np.array([[[1.0, 0], [1, 0], [1, 0], [0, 1]]])  # [group 1, token 4, emb 2]: 3 tokens want expert 0
    return layer, jax.tree.map(jnp.asarray, params), jnp.asarray(x)


def test_top1_drops_tokens_over_capacity():
    """capacity = ceil(0.5 * 4 * 1 / 2) = 1: expert 0 takes token 0 and drops tokens 1 and 2 (token order), whose
    MoE output is 0 (the residual carries them); expert 1 takes token 3. 2 of 4 assignments dropped."""
    with jax.enable_x64(True):
        layer, params, x = _hand_layer(k=1, capacity_factor=0.5)
        y, aux, _ = _run(layer, x, params)
    p = 1 / (1 + math.exp(-4))  # softmax of (2, -2)
    np.testing.assert_allclose(y[0], [[p, 0], [0, 0], [0, 0], [0, 2 * p]], rtol=1e-12, atol=1e-15)
    assert aux['dropped_fraction'] == 0.5


def test_top2_fills_first_choices_before_second_choices():
    """capacity = ceil(0.5 * 4 * 2 / 2) = 2. First choices: expert 0 takes tokens 0, 1 and drops token 2's;
    expert 1 takes token 3. Second choices, in token order: expert 1 takes token 0 (its last slot) and drops
    tokens 1 and 2; expert 0 is full and drops token 3's. Token 2 is dropped by both experts: output 0.
    Gates are the two probabilities renormalized (here they already sum to 1): p and 1 - p."""
    with jax.enable_x64(True):
        layer, params, x = _hand_layer(k=2, capacity_factor=0.5)
        y, aux, _ = _run(layer, x, params)
    p = 1 / (1 + math.exp(-4))
    expected = [[p + 2 * (1 - p), 0], [p, 0], [0, 0], [0, 2 * p]]
    np.testing.assert_allclose(y[0], expected, rtol=1e-12, atol=1e-15)
    assert aux['dropped_fraction'] == 0.5  # 4 of 8 assignments


def test_expert_weights_carry_the_expert_axis():
    x = jnp.zeros((2, 8, 16))
    boxed = moe.MoeMlp(num_experts=4, mlp_dim=24, gated=True).init(jax.random.PRNGKey(0), x)['params']
    names = {key: value.names for key, value in boxed.items()}
    assert names['wi_0_kernel'] == names['wi_1_kernel'] == ('expert', 'embed', 'mlp')
    assert names['wo_kernel'] == ('expert', 'mlp', 'embed')
    assert names['router'] == ('embed', None)
    kernels = nn.meta.unbox(boxed)['wi_0_kernel']
    assert not np.allclose(kernels[0], kernels[1])  # each expert initialized with its own key


@pytest.mark.parametrize('tokens, num_experts, k, capacity', [(5, 3, 1, 1), (5, 3, 1, 2), (4, 4, 2, 1), (4, 4, 2, 2)])
def test_uniform_dropped_fraction_against_enumerating_every_routing(tokens, num_experts, k, capacity):
    """The plan's drop reference (`uniform_dropped_fraction`, a binomial closed form) equals `route`'s own dropped
    fraction averaged over every routing a uniformly random router makes equally likely: each token's ordered
    choice of k distinct experts, all tokens independent (243 and 20,736 groups, one `route` call each)."""
    choices = [c for c in itertools.product(range(num_experts), repeat=k) if len(set(c)) == k]
    routings = np.array(list(itertools.product(choices, repeat=tokens)))  # [group, token, k]
    logits = np.zeros((len(routings), tokens, num_experts))  # the first choice 10, the second 9, the others 0
    for rank in range(k):
        np.put_along_axis(logits, routings[..., rank:rank + 1], 10.0 - rank, axis=-1)
    with jax.enable_x64(True):
        _, _, aux = moe.route(jnp.asarray(logits), k, capacity)
    expected = moe.uniform_dropped_fraction(tokens, num_experts, k, capacity)
    np.testing.assert_allclose(float(aux['dropped_fraction']), expected, rtol=1e-12)
    assert 0 < expected < 1
