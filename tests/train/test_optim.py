"""optim.py against closed forms, a hand-computed AdamW step and torch.optim.AdamW."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from plmjax.train import optim

LR = 1e-3


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


# ------------------------------------------------------------------------------------------------ schedules

def test_linear_warmup_then_linear_decay():
    sched = optim.make_schedule("linear", LR, warmup_steps=10, total_steps=110, end_lr_factor=0.1)
    steps = [0, 5, 10, 35, 60, 110, 500]
    # warmup: LR * s / 10; decay: LR * (1 - 0.9 * (s - 10) / 100); after total_steps: LR * 0.1
    expected = [0.0, LR * 0.5, LR, LR * (1 - 0.9 * 0.25), LR * (1 - 0.9 * 0.5), LR * 0.1, LR * 0.1]
    np.testing.assert_allclose(_values(sched, steps), expected, rtol=1e-6, atol=1e-12)


def test_cosine_warmup_then_cosine_decay():
    sched = optim.make_schedule("cosine", LR, warmup_steps=10, total_steps=110, end_lr_factor=0.1)
    steps = [0, 5, 10, 35, 60, 110, 500]

    def closed(s):
        if s < 10:
            return LR * s / 10
        frac = min(s - 10, 100) / 100
        return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    np.testing.assert_allclose(_values(sched, steps), [closed(s) for s in steps], rtol=1e-6, atol=1e-12)


def test_rsqrt_after_warmup():
    sched = optim.make_schedule("rsqrt", LR, warmup_steps=100)
    steps = [0, 50, 100, 400, 10_000]
    expected = [0.0, LR * 0.5, LR, LR * math.sqrt(100 / 400), LR * math.sqrt(100 / 10_000)]
    np.testing.assert_allclose(_values(sched, steps), expected, rtol=1e-6, atol=1e-12)
    no_warmup = optim.make_schedule("rsqrt", LR)
    np.testing.assert_allclose(_values(no_warmup, [0, 1, 4, 100]), [LR, LR, LR / 2, LR / 10], rtol=1e-6)


def test_constant_after_warmup():
    sched = optim.make_schedule("constant", LR, warmup_steps=4)
    np.testing.assert_allclose(_values(sched, [0, 2, 4, 1000]), [0.0, LR / 2, LR, LR], rtol=1e-6)


def test_schedule_errors_name_the_fix():
    with pytest.raises(ValueError, match="linear, cosine, rsqrt, constant"):
        optim.make_schedule("noam", LR)
    with pytest.raises(ValueError, match="make_optimizer.total_steps"):
        optim.make_schedule("linear", LR, warmup_steps=10)
    with pytest.raises(ValueError, match="must not exceed"):
        optim.make_schedule("cosine", LR, warmup_steps=10, total_steps=5)


# ----------------------------------------------------------------------------------------- optimizer steps

def _params():
    return {"dense": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], jnp.float32),
                      "bias": jnp.array([0.1, -0.2], jnp.float32)},
            "layer_norm": {"scale": jnp.array([1.0, 0.9], jnp.float32)}}


X = np.array([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-2.0, 0.5, 1.0], [1.5, 1.0, 0.5]], np.float32)
Y = np.array([[1.0, -1.0], [0.0, 2.0], [1.5, 0.5], [-1.0, 1.0]], np.float32)


def _loss(params, x=X, y=Y):
    """A tiny quadratic: mean squared error of a dense layer followed by a scale."""
    pred = (x @ params["dense"]["kernel"] + params["dense"]["bias"]) * params["layer_norm"]["scale"]
    return 0.5 * jnp.mean((pred - y) ** 2)


def test_adamw_one_step_equals_hand_computed_update():
    lr, wd, eps = 1e-2, 0.1, 1e-6
    tx, _ = optim.make_optimizer("adamw", learning_rate=lr, schedule="constant", weight_decay=wd, eps=eps,
                                 clip_norm=None)
    params = _params()
    grads = jax.grad(_loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # Step 1 of Adam: m_hat = g, v_hat = g^2, so the Adam direction is g / (|g| + eps); decay only on kernels.
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        g = np.asarray(_get(grads, path))
        decay = wd if path[-1].key == "kernel" else 0.0
        expected = np.asarray(p) - lr * (g / (np.abs(g) + eps) + decay * np.asarray(p))
        np.testing.assert_allclose(np.asarray(_get(new, path)), expected, rtol=1e-6, atol=1e-7)


def _get(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return tree


def test_adamw_matches_torch_adamw_with_schedule_and_clipping():
    """Six steps of warmup + linear decay, global-norm clipping and masked weight decay, in float64.

    torch gets the learning rate optax uses: optax evaluates the schedule at its int32 step counter, which
    gives a float32 rate even in float64 mode. Clipping on the torch side is written out as optax defines it
    (scale by clip / norm when norm > clip); torch's clip_grad_norm_ divides by norm + 1e-6 instead.
    """
    torch = pytest.importorskip("torch")
    lr, wd, eps, clip, steps = 5e-2, 0.01, 1e-6, 0.5, 6
    with jax.enable_x64(True):
        tx, schedule = optim.make_optimizer("adamw", learning_rate=lr, schedule="linear", warmup_steps=2,
                                            total_steps=steps, end_lr_factor=0.2, weight_decay=wd, eps=eps,
                                            clip_norm=clip)
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), _params())
        x64, y64 = X.astype(np.float64), Y.astype(np.float64)
        opt_state = tx.init(params)
        step_fn = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p, x64, y64), s, p))

        t_params = {k: {n: torch.tensor(np.asarray(v), requires_grad=True) for n, v in d.items()}
                    for k, d in params.items()}
        decay = [t_params["dense"]["kernel"]]
        no_decay = [t_params["dense"]["bias"], t_params["layer_norm"]["scale"]]
        t_opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=eps)
        x, y = torch.tensor(x64), torch.tensor(y64)
        clipped_steps = 0
        for step in range(steps):
            updates, opt_state = step_fn(params, opt_state)
            params = optax.apply_updates(params, updates)

            for group in t_opt.param_groups:
                group["lr"] = float(schedule(jnp.int32(step)))
            t_opt.zero_grad()
            pred = (x @ t_params["dense"]["kernel"] + t_params["dense"]["bias"]) * t_params["layer_norm"]["scale"]
            (0.5 * ((pred - y) ** 2).mean()).backward()
            with torch.no_grad():
                norm = torch.sqrt(sum((p.grad ** 2).sum() for p in decay + no_decay))
                if norm > clip:
                    clipped_steps += 1
                    for p in decay + no_decay:
                        p.grad.mul_(clip / norm)
            t_opt.step()

        assert clipped_steps == steps  # the clipping path is exercised on every step
        for module, leaves in t_params.items():
            for name, t in leaves.items():
                np.testing.assert_allclose(np.asarray(params[module][name]), t.detach().numpy(),
                                           rtol=1e-12, atol=1e-14)


def test_weight_decay_mask_excludes_biases_and_norms():
    params = {
        "embed": {"embedding": jnp.ones((5, 4))},
        "layer_0": {
            "attention": {"query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}},
            "pre_attention_layer_norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
            "mlp": {"wi": {"kernel": jnp.ones((4, 8))}},
        },
        "final_norm": {"weight": jnp.ones(4)},
        "ln_f": {"weight": jnp.ones(4)},
        "LayerNorm": {"gamma": jnp.ones(4)},
    }
    expected = {
        "embed": {"embedding": True},
        "layer_0": {"attention": {"query": {"kernel": True, "bias": False}},
                    "pre_attention_layer_norm": {"scale": False, "bias": False},
                    "mlp": {"wi": {"kernel": True}}},
        "final_norm": {"weight": False},
        "ln_f": {"weight": False},
        "LayerNorm": {"gamma": False},
    }
    assert optim.default_weight_decay_mask(params) == expected

    boxed = {"dense": {"kernel": nn.Partitioned(jnp.ones((2, 2)), ("embed", "mlp")),
                       "bias": nn.Partitioned(jnp.ones(2), ("mlp",))}}
    mask = optim.default_weight_decay_mask(boxed)
    assert mask["dense"]["kernel"].value is True and mask["dense"]["bias"].value is False


def test_weight_decay_acts_only_on_masked_parameters():
    """Zero gradients: AdamW moves only decayed parameters, by exactly lr * wd * param."""
    lr, wd = 0.1, 0.5
    tx, _ = optim.make_optimizer("adamw", learning_rate=lr, schedule="constant", weight_decay=wd, clip_norm=None)
    params = _params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -lr * wd * params["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["layer_norm"]["scale"], 0.0)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_descends(name):
    tx, _ = optim.make_optimizer(name, learning_rate=0.05, schedule="constant")
    params = _params()
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
    start = float(_loss(params))
    for _ in range(30):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    assert float(_loss(params)) < 0.5 * start


def test_optimizer_errors_name_the_fix():
    with pytest.raises(ValueError, match="adamw, lamb, adafactor, sgd"):
        optim.make_optimizer("adam")
    with pytest.raises(ValueError, match="make_optimizer.b2"):
        optim.make_optimizer("adafactor", b2=0.99, schedule="constant")
    with pytest.raises(ValueError, match="layerwise_lr_decay"):
        optim.make_optimizer(layerwise_lr_decay=1.5, schedule="constant")
