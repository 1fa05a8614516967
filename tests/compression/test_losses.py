"""Every TinyBERT loss against a hand computation in numpy float64, the layer maps, and the wrapper's wiring
(the mapped teacher layers and the projection) against separate runs of each model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax.compression import distill
from plmjax.models import intermediates
from tests.compression import helpers

MIN = np.finfo(np.float32).min


def _np_mse_layers(a, b):
    """Released code: sum over layers of torch MSELoss (mean over batch and every other axis)."""
    return sum(np.mean((np.float64(x) - np.float64(y)) ** 2) for x, y in zip(a, b))


def test_attention_loss_zeroes_masked_scores_in_both_models():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 2, 4, 4)) * 5, rng.normal(size=(2, 3, 2, 4, 4)) * 5  # [layers, b, h, q, k]
    s[..., 3], t[..., 2:] = MIN, MIN  # masked keys (finfo.min, as the models sow them)
    t[0, 0, 0, 0, 0] = -150.0  # below the code's -1e2 threshold: zeroed too
    zero = lambda x: np.where(x <= -1e2, 0.0, x)  # noqa: E731  torch.where(att <= -1e2, 0, att)
    expected = _np_mse_layers(zero(s), zero(t))
    outputs = {"student_scores": jnp.float32(s), "teacher_scores": jnp.float32(t),
               "student_hidden": jnp.zeros((2, 3, 4, 2)), "teacher_hidden": jnp.zeros((2, 3, 4, 2))}
    loss, metrics = distill.loss_fn({"encoder_input_tokens": jnp.ones((3, 4))}, outputs,
                                    options=distill.DistillOptions())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["att_loss"][0] / metrics["att_loss"][1]), expected, rtol=1e-6)
    assert float(metrics["rep_loss"][0]) == 0.0
    assert np.isfinite(float(loss)) and expected < 1e3  # the finfo.min entries never enter the squares


def test_hidden_loss_and_example_weights():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(3, 4, 5, 6))  # [M + 1, b, l, d]
    weights = np.array([1.0, 1.0, 0.0, 1.0])  # the padding row of an eval batch counts for nothing
    expected = _np_mse_layers(s[:, weights > 0], t[:, weights > 0])
    outputs = {"student_scores": jnp.zeros((2, 4, 1, 5, 5)), "teacher_scores": jnp.zeros((2, 4, 1, 5, 5)),
               "student_hidden": jnp.float32(s), "teacher_hidden": jnp.float32(t)}
    batch = {"encoder_input_tokens": jnp.ones((4, 5)), "example_weights": jnp.float32(weights)[:, None]}
    loss, metrics = distill.loss_fn(batch, outputs, options=distill.DistillOptions(stage="general"))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["loss"][1]) == 3.0


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_cross_entropy_with_temperature(temperature):
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(4, 3)) * 3, rng.normal(size=(4, 3)) * 3

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    # the code: (-softmax(t/T) * log_softmax(s/T)).mean() over batch and labels, no T^2
    expected = np.mean(-np.exp(log_softmax(t / temperature)) * log_softmax(s / temperature))
    outputs = {"classification_logits": jnp.float32(s), "teacher_outputs": {"classification_logits": jnp.float32(t)}}
    batch = {"encoder_input_tokens": jnp.ones((4, 2)), "labels": jnp.array([[0], [1], [2], [0]])}
    loss, metrics = distill.loss_fn(batch, outputs, options=distill.DistillOptions("prediction",
                                                                                   temperature=temperature))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["accuracy"][0]) == np.sum(np.argmax(s, -1) == [0, 1, 2, 0])


def test_regression_prediction_is_mse_against_the_gold_label():
    s, gold = np.array([[0.5], [2.0], [-1.0]]), np.array([1.0, 1.5, 0.0])
    outputs = {"classification_logits": jnp.float32(s), "teacher_outputs": {"classification_logits": jnp.zeros((3, 1))}}
    batch = {"encoder_input_tokens": jnp.ones((3, 2)), "label_values": jnp.float32(gold)}
    loss, _ = distill.loss_fn(batch, outputs, options=distill.DistillOptions("prediction"), regression=True)
    np.testing.assert_allclose(float(loss), np.mean((s[:, 0] - gold) ** 2), rtol=1e-6)


def test_layer_maps():
    g = distill.layer_map(12, 4)
    assert g == (3, 6, 9, 12)
    k = 3  # the code: student attention i <- teacher i*k + k - 1, student hidden i <- teacher hidden i*k
    assert list(distill.attention_indices(g)) == [i * k + k - 1 for i in range(4)]
    assert list(distill.hidden_indices(g)) == [i * k for i in range(5)]
    assert distill.layer_map(12, 4, "top") == (9, 10, 11, 12)
    assert distill.layer_map(12, 4, "bottom") == (1, 2, 3, 4)
    assert distill.layer_map(6, 3, (2, 4, 5)) == (2, 4, 5)
    assert list(distill.hidden_indices((2, 4, 5))) == [0, 2, 4, 5]
    for bad in [(12, 5, "uniform"), (6, 3, (1, 2)), (6, 3, (0, 1, 2)), (6, 3, "middle"), (2, 3, "top")]:
        with pytest.raises(distill.DistillationConfigError):
            distill.layer_map(*bad)


@pytest.mark.parametrize("separate", [False, True])
def test_wrapper_outputs_are_the_mapped_layers_and_the_projection(separate):
    options = distill.DistillOptions(layer_map="top", separate_projections=separate)
    module = helpers.pair(options)
    params = helpers.init(module)
    batch = helpers.batch()
    ids = jnp.asarray(batch["encoder_input_tokens"])
    outputs = jax.jit(lambda p: module.apply({"params": p}, ids, deterministic=True))(params)
    t_out, t_inter = jax.jit(lambda p: intermediates.capture(module.teacher.module, {"params": p}, ids))(
        params["teacher"])
    s_out, s_inter = jax.jit(lambda p: intermediates.capture(module.student.module, {"params": p}, ids))(
        params["student"])
    (t_stack,), (s_stack,) = t_inter.values(), s_inter.values()
    np.testing.assert_array_equal(outputs["teacher_scores"], t_stack["attention_scores"][1:])  # top: g(1) = 2
    np.testing.assert_array_equal(outputs["teacher_hidden"], t_stack["hidden_states"][np.array([0, 2])])
    np.testing.assert_array_equal(outputs["classification_logits"], s_out["classification_logits"])
    np.testing.assert_array_equal(outputs["teacher_outputs"]["classification_logits"],
                                  t_out["classification_logits"])
    hidden = np.float64(s_stack["hidden_states"])
    proj = params["projection"]
    names = ("embedding", "hidden") if separate else ("fit_dense", "fit_dense")
    expected = [hidden[i] @ np.float64(proj[names[min(i, 1)]]["kernel"]) + np.float64(proj[names[min(i, 1)]]["bias"])
                for i in range(2)]
    np.testing.assert_allclose(outputs["student_hidden"], np.stack(expected), rtol=1e-5, atol=1e-6)
    assert set(proj) == set(names)
    # padded keys are finfo.min in the sown scores, and count as 0 in the loss
    masked = np.broadcast_to((np.asarray(ids) == 0)[None, :, None, None, :], outputs["teacher_scores"].shape)
    assert masked.any() and np.all(np.asarray(outputs["teacher_scores"])[masked] == MIN)


def test_scanned_teacher_gives_the_same_losses():
    """A teacher in the scanned layout (nn.scan over layers) distils exactly like the unrolled one."""
    import dataclasses

    from plmjax.models import layout
    options = distill.DistillOptions()
    unrolled = helpers.pair(options)
    scanned = helpers.pair(options, teacher=dataclasses.replace(helpers.teacher_config(), scan_layers=True))
    params = helpers.init(unrolled)
    scanned_params = {**params, "teacher": layout.scan_params(params["teacher"])}
    batch = helpers.batch()
    ids = jnp.asarray(batch["encoder_input_tokens"])
    run = lambda m, p: distill.loss_fn(batch, m.apply({"params": p}, ids), options=options)[0]  # noqa: E731
    np.testing.assert_allclose(float(jax.jit(lambda p: run(scanned, p))(scanned_params)),
                               float(jax.jit(lambda p: run(unrolled, p))(params)), rtol=1e-6)
