"""Plans of scanned layer stacks: XLA's cost analysis counts a loop body once, so `plmjax plan` takes a scanned
step's FLOPs and HBM bytes from the same step unrolled at two small depths (`plan.loops`). Checked against the
step unrolled at full depth, compiled for the same slice."""

import dataclasses

import pytest

from plmjax import models
from plmjax.plan import aot, loops
from tests.plan import needs_libtpu

NO_DROPOUT = dict(dtype="bfloat16", dropout_rate=0.0, attention_dropout_rate=0.0)
CASES = [  # (config, architecture, objective, feature lengths): one stack; two stacks of different depths
    (models.tiny_decoder(num_decoder_layers=4, **NO_DROPOUT), "decoder", "causal_lm", {"targets": 32}),
    (models.tiny_encoder_decoder(num_encoder_layers=3, num_decoder_layers=2, **NO_DROPOUT), "encoder_decoder",
     "span_corruption", {"inputs": 32, "targets": 16}),
]


def _plan(config, architecture, objective, lengths):
    return aot.plan_train_step(config, architecture, objective, lengths, topology="v4:2x2x1",
                               mesh_shape={"data": -1}, batch_size=16)


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("case", CASES, ids=lambda case: case[1])
def test_scanned_plan_counts_every_layer(case):
    config, architecture, objective, lengths = case
    unrolled = _plan(config, architecture, objective, lengths)
    scanned = _plan(dataclasses.replace(config, scan_layers=True), architecture, objective, lengths)
    # What the compiler alone says about the scanned step: one layer's work (the loop body, counted once).
    compiled = aot._compile_step(dataclasses.replace(config, scan_layers=True), architecture, objective, lengths,
                                 aot.sharding.create_mesh(devices=aot.hardware.topology_devices("v4:2x2x1")), 16,
                                 None, 1, aot.sharding.LOGICAL_AXIS_RULES)["cost"]
    assert compiled["flops"] < 0.8 * unrolled.flops
    assert scanned.scan_layers and scanned.cost_compile_seconds > 0
    assert scanned.flops == pytest.approx(unrolled.flops, rel=1e-3)
    assert scanned.bytes_accessed == pytest.approx(unrolled.bytes_accessed, rel=0.02)
    assert scanned.model_flops == pytest.approx(unrolled.model_flops, rel=1e-6)
    assert scanned.parameters == unrolled.parameters


def test_extrapolation_is_linear_in_each_stack():
    """cost(n_e, n_d) = cost(1, 1) + (n_e - 1) a + (n_d - 1) b, from compiles at (1, 1), (2, 1), (1, 2)."""
    seen = []

    def cost_of(cfg):  # a made-up linear cost: 7 + 3 per encoder layer + 5 per decoder layer
        seen.append((cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.scan_layers))
        return {"flops": 7 + 3 * cfg.num_encoder_layers + 5 * cfg.num_decoder_layers, "bytes accessed": 1.0}

    config = models.tiny_encoder_decoder(num_encoder_layers=6, num_decoder_layers=4, scan_layers=True)
    cost, _ = loops.extrapolated_cost(config, cost_of)
    assert cost["flops"] == 7 + 3 * 6 + 5 * 4 and cost["bytes accessed"] == 1.0
    assert seen == [(1, 1, False), (2, 1, False), (1, 2, False)]
    seen.clear()
    cost, _ = loops.extrapolated_cost(dataclasses.replace(config, num_encoder_layers=4), cost_of)
    assert cost["flops"] == 7 + 3 * 4 + 5 * 4 and seen == [(1, 1, False), (2, 2, False)]  # equal depths: together
    seen.clear()
    pangu = models.tiny_decoder(num_decoder_layers=5, query_layer=True, scan_layers=True)  # 4 layers + query layer
    cost, _ = loops.extrapolated_cost(pangu, cost_of)
    assert cost["flops"] == 7 + 5 * 5 and seen == [(0, 2, False), (0, 3, False)]
