"""The distillation train step through the ordinary trainer step: the teacher gets zero gradient and stays
bit-identical, the student improves, a (2, 2, 2) mesh of 8 fake devices gives the numbers of 1 device, both
models load from plmjax checkpoints, and a teacher/student mismatch stops with one clear error."""
import jax
import numpy as np
import pytest

from plmjax import convert, models, sharding
from plmjax.compression import distill
from plmjax.train import init as init_lib
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib
from tests.compression import helpers


def _run(options, mesh, steps, learning_rate=3e-3, confident_teacher=False, with_grads=True, module=None):
    module = module or helpers.pair(options)
    objective = distill.objective(options)
    tx, schedule = optim.make_optimizer("adamw", learning_rate=learning_rate, warmup_steps=1, total_steps=100)
    tx = distill.optimizer(tx)
    state, shardings = state_lib.create_train_state(module, tx, "encoder_classifier", helpers.LENGTHS, mesh, seed=0)
    if confident_teacher:  # a random teacher's logits are near uniform: the soft cross-entropy is at its floor
        head = state.params["teacher"]["classifier"]
        head = jax.tree.map(lambda x: x * 30.0, head)
        state = state.replace(params={**state.params, "teacher": {**state.params["teacher"], "classifier": head}})
    start = jax.device_get(state.params)
    train_step = step_lib.jit_train_step(module, objective, tx, schedule, mesh, shardings)
    grads_fn = step_lib.jit_grads(module, objective, mesh, shardings)
    losses, grads = [], []
    for i in range(steps):
        batch = sharding.shard_batch(helpers.batch(seed=i % 2), mesh)
        if with_grads and i < 2:
            grads.append(jax.device_get(grads_fn(state, batch)))
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"][0]) / float(metrics["loss"][1]))
    return losses, grads, start, state


@pytest.fixture(scope="module")
def one_device_run():
    return _run(distill.DistillOptions(), sharding.create_mesh(devices=jax.devices()[:1]), steps=12)


def test_teacher_is_frozen_and_student_improves(one_device_run):
    losses, grads, start, state = one_device_run
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[0]["teacher"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads[0]["student"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads[0]["projection"]))
    final = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(start["teacher"]), jax.tree.leaves(final["teacher"])):
        np.testing.assert_array_equal(a, b)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow  # ~35 s on 2 shared cores: two compilations of the 8-device step
@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 fake CPU devices (tests/conftest.py)")
def test_sharded_equals_one_device(one_device_run):
    losses_1, grads_1, _, _ = one_device_run
    eight = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    losses_8, grads_8, _, state_8 = _run(distill.DistillOptions(), eight, steps=3)
    np.testing.assert_allclose(losses_8, losses_1[:3], rtol=1e-5)
    for g1, g8 in zip(grads_1, grads_8):
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
            assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(a)), 1e-30)
    kernel = state_8.params["teacher"]["bert"]["encoder"]["layers_0"]["mlp"]
    assert any(leaf.sharding.shard_shape(leaf.shape) != leaf.shape for leaf in jax.tree.leaves(kernel))


@pytest.mark.slow  # ~40 s on 2 shared cores: the 1- and 8-device steps of a quantized student
@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 fake CPU devices (tests/conftest.py)")
def test_quantized_student_sharded_equals_one_device():
    """A BinaryBERT student (split binary weights: the twins shard like their tensors) in the same step on a
    (2, 2, 2) mesh: the numbers of 1 device. Binary weights (sign and mean |w|) and float activations, so that no
    rounding boundary of an 8-bit activation grid turns a reduction-order difference into a different level."""
    from plmjax.compression import quantize
    options = distill.DistillOptions(stage="all", fit_dense=False)
    student = quantize.quantized_model(models.build_model("encoder_classifier", helpers.teacher_config(),
                                                          num_labels=3), "split_binary", activation_bits=None)
    module = distill.distillation_model(models.build_model("encoder_classifier", helpers.teacher_config(),
                                                           num_labels=3), student, options)
    losses_1, grads_1, _, _ = _run(options, sharding.create_mesh(devices=jax.devices()[:1]), 3, module=module)
    eight = sharding.create_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    losses_8, grads_8, _, state_8 = _run(options, eight, 3, module=module)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    for g1, g8 in zip(grads_1, grads_8):
        assert set(g1["student"]["bert"]["encoder"]["layers_0"]["mlp"]["wi"]) == {"kernel", "kernel_split", "bias"}
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
            assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(a)), 1e-30)
    twin = state_8.params["student"]["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel_split"]
    assert twin.sharding.shard_shape(twin.shape) != twin.shape


def test_prediction_stage_trains_the_student_towards_the_teacher():
    options = distill.DistillOptions(stage="prediction", temperature=2.0)
    losses, _, start, state = _run(options, sharding.create_mesh(devices=jax.devices()[:1]), steps=6,
                                   learning_rate=1e-2, confident_teacher=True, with_grads=False)
    for a, b in zip(jax.tree.leaves(start["teacher"]), jax.tree.leaves(jax.device_get(state.params["teacher"]))):
        np.testing.assert_array_equal(a, b)
    assert losses[-1] < losses[0], losses


def test_teacher_and_student_load_from_checkpoints(tmp_path):
    teacher_config, student_config = helpers.teacher_config(), helpers.student_config()
    saved = {}
    for name, config, architecture, seed in (("teacher", teacher_config, "encoder_classifier", 5),
                                              ("student", student_config, "encoder", 6)):
        options = {"num_labels": 3} if architecture == "encoder_classifier" else {}
        module = models.build_model(architecture, config, **options)
        saved[name] = helpers.init(module, seed)
        convert.save_checkpoint(str(tmp_path / name), architecture, config, jax.device_get(saved[name]))
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    module = helpers.pair()
    tx = distill.optimizer(optim.make_optimizer("adamw", learning_rate=1e-3, total_steps=10)[0])
    state, shardings = state_lib.create_train_state(module, tx, "encoder_classifier", helpers.LENGTHS, mesh, seed=0)
    logs = []
    for name, config in (("teacher", teacher_config), ("student", student_config)):
        state = init_lib.init_from_checkpoint(state, shardings, tx, str(tmp_path / name),
                                              architecture="encoder_classifier", model_config=config,
                                              under=(name,), log=logs.append)
    params = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(saved["teacher"]), jax.tree.leaves(params["teacher"])):
        np.testing.assert_array_equal(a, b)  # the fine-tuned teacher, head included
    for a, b in zip(jax.tree.leaves(saved["student"]), jax.tree.leaves(params["student"]["bert"])):
        np.testing.assert_array_equal(a, b)  # a pre-trained (general-distilled) encoder under the student's head
    assert "student/bert" in logs[1] and "student/classifier" in logs[1]


def test_mismatched_teacher_and_student_give_one_clear_error():
    with pytest.raises(distill.DistillationConfigError) as error:
        helpers.pair(student=helpers.student_config(vocab_size=128, max_length=32))
    message = str(error.value)
    assert "vocab_size: teacher 64, student 128" in message and "max_length: teacher 16, student 32" in message
    with pytest.raises(distill.DistillationConfigError, match="num_heads"):
        helpers.pair(student=helpers.student_config(num_heads=2))
