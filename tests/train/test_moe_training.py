"""A tiny mixture-of-experts model in the train step: the router losses are added to the loss and reported, a
scanned stack (blocks of moe_layer_interval layers) equals the unrolled one, and on a (data=2, expert=4) mesh of 8
fake CPU devices the losses and gradients equal 1 device while the expert weights are split over 'expert'."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from plmjax import sharding
from plmjax.models import build_model
from plmjax.models import config as config_lib
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib
from tests.train import families

MOE = dict(num_experts=4, moe_layer_interval=2, expert_capacity_factor=1.0)  # 16 tokens a row: 4 slots an expert


def _params(module, batch):
    inputs = families.objective("decoder").model_inputs(batch)
    return nn.meta.unbox(module.init(jax.random.PRNGKey(0), **inputs, deterministic=True)["params"])


def test_router_losses_are_added_to_the_loss_and_reported():
    config = families.tiny_config("decoder", **MOE, router_aux_loss_weight=0.5, router_z_loss_weight=0.25)
    module, objective = build_model("decoder", config), families.objective("decoder")
    batch = families.synthetic_batch("decoder")
    params = _params(module, batch)
    summed, metrics = step_lib.apply_and_loss(module, params, batch, objective.model_inputs(batch), objective,
                                              deterministic=True)
    plain = build_model("decoder", dataclasses.replace(config, router_aux_loss_weight=0.0, router_z_loss_weight=0.0))
    summed_plain, _ = step_lib.apply_and_loss(plain, params, batch, objective.model_inputs(batch), objective,
                                              deterministic=True)
    balance, z, dropped = (float(metrics[f"moe_{n}"][0]) for n in ("load_balancing_loss", "router_z_loss",
                                                                   "dropped_fraction"))
    weight = float(metrics["loss"][1])
    assert float(summed_plain) == pytest.approx(float(metrics["loss"][0]), rel=1e-6)  # loss: the objective's own
    assert float(summed) - float(summed_plain) == pytest.approx(weight * (0.5 * balance + 0.25 * z), rel=1e-4)
    assert balance >= 1.0 - 1e-6 and z > 0  # num_experts * sum f_e P_e >= 1 (Cauchy-Schwarz on top-1 routing)
    assert 0.0 < dropped < 1.0  # capacity factor 1.0 on random routing drops some tokens, not all
    eval_metrics = step_lib.eval_step(params, batch, module=module, objective=objective)
    assert float(eval_metrics["moe_dropped_fraction"][0]) == pytest.approx(dropped)


@pytest.mark.parametrize("interval", [1, 2])
def test_scanned_moe_stack_equals_unrolled(interval):
    """interval 2: the scan runs over one block `layers/layers_{0,1}` (dense, MoE); interval 1: every layer MoE."""
    config = families.tiny_config("decoder", **{**MOE, "moe_layer_interval": interval})
    unrolled = build_model("decoder", config)
    scanned = build_model("decoder", dataclasses.replace(config, scan_layers=True))
    batch = families.synthetic_batch("decoder")
    inputs = families.objective("decoder").model_inputs(batch)
    params = jax.tree.map(np.asarray, _params(unrolled, batch))
    stack = params["decoder"]
    layers = [stack.pop(f"layers_{i}") for i in range(2)]
    if interval == 1:
        stack["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        stack["layers"] = {f"layers_{j}": jax.tree.map(lambda x: x[None], layer) for j, layer in enumerate(layers)}
    expected = unrolled.apply({"params": _params(unrolled, batch)}, **inputs)["logits"]
    got = scanned.apply({"params": params}, **inputs)["logits"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_scan_needs_the_interval_to_divide_the_layers():
    with pytest.raises(ValueError, match="moe_layer_interval=3"):
        config_lib.tiny_moe_decoder(moe_layer_interval=3, scan_layers=True)
    config_lib.tiny_moe_decoder(moe_layer_interval=3)  # unrolled: any interval


def _assert_same_grads(g1, g8, what):
    flat_1, _ = jax.tree_util.tree_flatten_with_path(g1)
    for (path, a), b in zip(flat_1, jax.tree.leaves(g8)):
        name = jax.tree_util.keystr(path)
        if name.endswith("['key']['bias']"):
            continue  # exactly 0 in exact arithmetic (softmax ignores a per-query constant): rounding noise only
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)), f"{what} grad {name}"


def _assert_experts_split(params):
    """Each of the 4 devices of the 'expert' axis holds 1 of the 4 experts; the router is replicated."""
    experts = params["decoder"]["layers_1"]["mlp"]
    for name in ("wi_kernel", "wo_kernel", "wi_bias", "wo_bias"):
        leaf = experts[name]
        assert leaf.sharding.spec[0] == "expert", (name, leaf.sharding.spec)
        shards = {tuple(s.data.shape) for s in leaf.addressable_shards}
        assert shards == {(1,) + leaf.shape[1:]}, (name, shards)
    assert experts["router"].sharding.shard_shape(experts["router"].shape) == experts["router"].shape


def _grads_and_metrics(config, mesh):
    module, objective = build_model("decoder", config), families.objective("decoder")
    tx, _ = optim.make_optimizer("adamw", learning_rate=1e-2, warmup_steps=1, total_steps=10)
    state, shardings = state_lib.create_train_state(module, tx, "decoder", families.LENGTHS["decoder"], mesh, seed=0)
    batch = sharding.shard_batch(families.synthetic_batch("decoder"), mesh)
    grads = step_lib.jit_grads(module, objective, mesh, shardings)(state, batch)
    metrics = step_lib.jit_eval_step(module, objective, mesh, shardings.params)(state.params, batch)
    return jax.device_get(grads), jax.device_get(metrics), state


needs_8 = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 fake CPU devices (tests/conftest.py)")


@needs_8
def test_data2_expert4_mesh_gradients_and_metrics_equal_one_device():
    config = families.tiny_config("decoder", **MOE)
    grads_1, metrics_1, _ = _grads_and_metrics(config, sharding.create_mesh(devices=jax.devices()[:1]))
    grads_8, metrics_8, state_8 = _grads_and_metrics(
        config, sharding.create_mesh(data=2, expert=4, devices=jax.devices()[:8]))
    _assert_same_grads(grads_1, grads_8, "init")
    assert np.max(np.abs(grads_1["decoder"]["layers_1"]["mlp"]["router"])) > 0  # the router learns
    for name in ("loss", "moe_load_balancing_loss", "moe_router_z_loss", "moe_dropped_fraction"):
        np.testing.assert_allclose(metrics_8[name][0], metrics_1[name][0], rtol=1e-6, err_msg=name)
    assert metrics_1["moe_dropped_fraction"][0] > 0  # routing with drops, identical on both meshes
    _assert_experts_split(state_8.params)


@pytest.mark.slow
@needs_8
def test_data2_expert4_mesh_trains_like_one_device():
    """3 AdamW steps: the same loss at every step and the same gradients (as tests/train/test_sharded_equals_...)."""
    config = families.tiny_config("decoder", **MOE)
    one = sharding.create_mesh(devices=jax.devices()[:1])
    mesh = sharding.create_mesh(data=2, expert=4, devices=jax.devices()[:8])
    losses_1, grads_1, _, _ = families.train_steps("decoder", config, one)
    losses_8, grads_8, _, state_8 = families.train_steps("decoder", config, mesh)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-6)
    assert losses_1[-1] != losses_1[0]
    for step, (g1, g8) in enumerate(zip(grads_1, grads_8)):
        _assert_same_grads(g1, g8, f"step {step}")
    _assert_experts_split(state_8.params)
