"""Plans of models with the Pallas flash-attention kernel: XLA counts no FLOPs for the kernel's backward calls, so
the plan adds them from the compiled HLO (`plan.kernels`). With them, the step's FLOPs are the einsum step's plus the
3 products a layer the kernel's backward recomputes (q k^T and do v^T in each of its two calls, against einsum's
backward, which keeps the probabilities)."""

import dataclasses

import pytest

from plmjax import models, sharding
from plmjax.plan import aot, hardware, kernels
from tests.plan import needs_libtpu

NO_DROPOUT = dict(dtype="bfloat16", dropout_rate=0.0, attention_dropout_rate=0.0, max_length=256)
CASES = [  # the MLM step holds its model twice (a lax.cond over sparse and full logits): counted once
    (models.tiny_encoder(**NO_DROPOUT), "encoder", "mlm", {"inputs": 256, "targets": 256}),
    (models.tiny_decoder(**NO_DROPOUT), "decoder", "causal_lm", {"targets": 256}),
]


def _compile(config, architecture, objective, lengths):
    mesh = sharding.create_mesh(devices=hardware.topology_devices("v4:2x2x1"))
    return aot._compile_step(config, architecture, objective, lengths, mesh, 16, None, 1, sharding.LOGICAL_AXIS_RULES)


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("case", CASES, ids=lambda case: case[1])
def test_flash_step_counts_the_einsum_steps_flops(case):
    config, architecture, objective, lengths = case
    einsum = _compile(config, architecture, objective, lengths)["cost"]
    flash = _compile(dataclasses.replace(config, attention_kernel="flash"), architecture, objective, lengths)
    added = kernels.uncounted_flops(flash["compiled"].as_text())
    # Closed form of what was added: 7 products of 2 x (batch per device 4) x heads x length^2 x head_dim per
    # layer, in one branch of the conditional.
    length = max(lengths.values())
    assert added == 7 * 2 * 4 * config.num_heads * length * length * config.head_dim * 2
    assert flash["cost"]["flops"] - added < 0.8 * einsum["flops"]  # what XLA alone counts
    recomputed = 3 * 2 * 4 * config.num_heads * length * length * config.head_dim * 2
    assert flash["cost"]["flops"] == pytest.approx(einsum["flops"] + recomputed, rel=0.03)
