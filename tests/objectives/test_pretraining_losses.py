"""Each new objective's loss equals a value computed by hand on a small fixed example, and its (total, count)
`loss` metric gives the same value (what the trainer differentiates)."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from plmjax import objectives

LN3 = math.log(3.0)


def reported(metrics, name):
    total, count = metrics[name]
    return float(total) / float(count)


def test_registry_knows_every_new_objective():
    for name in ("nsp", "sop", "span_boundary", "electra", "denoising", "prefix_lm"):
        assert objectives.get_objective(name).name == name


@pytest.mark.parametrize("name", ["nsp", "sop"])
def test_sentence_pair_loss(name):
    objective = objectives.get_objective(name)
    # MLM: vocab 2. Example 0, position 0 predicts token 1 with logits [0, ln 3]: p = 3/4, nll = ln(4/3).
    # Example 1, position 1 predicts token 0 with logits [0, 0]: nll = ln 2. Other positions have weight 0.
    logits = jnp.zeros((2, 2, 2)).at[0, 0, 1].set(LN3).at[0, 1].set(jnp.array([9.0, -9.0]))
    batch = {"encoder_target_tokens": jnp.array([[1, 1], [1, 0]]),
             "encoder_loss_weights": jnp.array([[1.0, 0.0], [0.0, 1.0]]),
             "encoder_sentence_labels": jnp.array([[0], [1]])}
    # Sentence logits: example 0 [ln 4, 0], label 0: p = 4/5, nll = ln(5/4); example 1 [0, 0], label 1: ln 2.
    outputs = {"logits": logits, "sentence_logits": jnp.array([[math.log(4.0), 0.0], [0.0, 0.0]])}
    loss, metrics = objective.loss_fn(batch, outputs)
    mlm = (math.log(4 / 3) + math.log(2)) / 2
    sentence = (math.log(5 / 4) + math.log(2)) / 2
    assert float(loss) == pytest.approx(mlm + sentence, rel=1e-6)
    assert reported(metrics, "loss") == pytest.approx(mlm + sentence, rel=1e-6)
    assert reported(metrics, "mlm_loss") == pytest.approx(mlm, rel=1e-6)
    assert reported(metrics, "sentence_loss") == pytest.approx(sentence, rel=1e-6)
    assert reported(metrics, "sentence_accuracy") == 0.5  # example 1's tie: argmax picks class 0


def test_span_boundary_loss():
    objective = objectives.get_objective("span_boundary")
    # vocab 3, one example, positions 0 and 2 masked with targets 2 and 0.
    mlm_logits = jnp.zeros((1, 3, 3)).at[0, 0].set(jnp.array([0.0, 0.0, math.log(2.0)]))  # p(2) = 1/2
    span_logits = jnp.zeros((1, 3, 3)).at[0, 2].set(jnp.array([LN3, 0.0, 0.0]))  # p(0) = 3/5
    batch = {"encoder_target_tokens": jnp.array([[2, 1, 0]]), "encoder_loss_weights": jnp.array([[1.0, 0.0, 1.0]])}
    loss, metrics = objective.loss_fn(batch, {"logits": mlm_logits, "span_logits": span_logits})
    mlm = (math.log(2.0) + math.log(3.0)) / 2  # position 2 has uniform MLM logits: ln 3
    sbo = (math.log(3.0) + math.log(5 / 3)) / 2  # position 0 has uniform SBO logits: ln 3
    assert float(loss) == pytest.approx(mlm + sbo, rel=1e-6)
    assert reported(metrics, "loss") == pytest.approx(mlm + sbo, rel=1e-6)
    assert reported(metrics, "sbo_loss") == pytest.approx(sbo, rel=1e-6)


def test_electra_loss():
    objective = objectives.get_objective("electra")
    # Generator: vocab 4, uniform logits at the one masked position: ln 4.
    # Discriminator over the 3 real tokens (the 4th is padding): logit ln 3 with label 1: -ln(3/4) = ln(4/3);
    # logit ln 3 with label 0: -ln(1/4) = ln 4; logit 0 with label 0: ln 2. Mean = (ln(4/3) + ln 4 + ln 2) / 3.
    batch = {"encoder_target_tokens": jnp.array([[1, 2, 3, 0]]),
             "encoder_loss_weights": jnp.array([[0.0, 1.0, 0.0, 0.0]])}
    outputs = {"logits": jnp.zeros((1, 4, 4)), "rtd_logits": jnp.array([[LN3, LN3, 0.0, 5.0]]),
               "rtd_labels": jnp.array([[1, 0, 0, 1]])}
    loss, metrics = objective.loss_fn(batch, outputs)
    rtd = (math.log(4 / 3) + math.log(4.0) + math.log(2.0)) / 3
    expected = math.log(4.0) + 50.0 * rtd
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert reported(metrics, "loss") == pytest.approx(expected, rel=1e-6)
    assert reported(metrics, "rtd_loss") == pytest.approx(rtd, rel=1e-6)
    assert reported(metrics, "replaced_fraction") == pytest.approx(1 / 3)
    assert reported(metrics, "rtd_accuracy") == pytest.approx(2 / 3)  # 0 > 0 is False: predicted original, right


def test_denoising_and_prefix_lm_losses():
    # Decoder targets [2, 1, 0(pad)] with weights [1, 1, 0]; logits give p(2) = 1/2 and p(1) = 1/3 (uniform).
    logits = jnp.zeros((1, 3, 3)).at[0, 0].set(jnp.array([0.0, 0.0, math.log(2.0)]))
    batch = {"decoder_target_tokens": jnp.array([[2, 1, 0]]), "decoder_loss_weights": jnp.array([[1.0, 1.0, 0.0]])}
    expected = (math.log(2.0) + math.log(3.0)) / 2
    for name in ("denoising", "prefix_lm"):
        loss, metrics = objectives.get_objective(name).loss_fn(batch, {"logits": logits})
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        assert reported(metrics, "loss") == pytest.approx(expected, rel=1e-6)


def test_model_inputs_read_the_batch_features():
    batch = {k: np.ones((1, 4), np.int32) for k in ("encoder_input_tokens", "encoder_target_tokens",
                                                      "encoder_token_types", "encoder_span_left",
                                                      "encoder_span_right", "encoder_span_positions")}
    batch["encoder_loss_weights"] = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
    assert set(objectives.get_objective("nsp").model_inputs(batch)) == {"input_ids", "token_type_ids"}
    assert set(objectives.get_objective("span_boundary").model_inputs(batch)) == {
        "input_ids", "span_left", "span_right", "span_positions"}
    electra = objectives.get_objective("electra").model_inputs(batch)
    np.testing.assert_array_equal(electra["masked_positions"], [[False, True, False, False]])
