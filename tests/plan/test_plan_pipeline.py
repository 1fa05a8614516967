"""Plans of pipelined stacks (TransformerConfig.pipeline_stages over the 'stage' mesh axis): the step compiles for a
TPU slice, the stage axis splits the layer parameters, the model FLOPs are the unpipelined model's (useful work,
no bubble), the FLOPs and bytes of the scanned pipeline are those of the same pipeline unrolled, and the report
states the bubble fraction."""

import dataclasses

import pytest

from plmjax import models
from plmjax.plan import aot, loops, report
from tests.plan import needs_libtpu

NO_DROPOUT = dict(dtype="bfloat16", dropout_rate=0.0, attention_dropout_rate=0.0)


def test_extrapolation_of_a_pipeline_grows_by_one_layer_per_stage():
    seen = []

    def cost_of(cfg):  # a made-up linear cost: 7 + 3 per layer
        seen.append((cfg.num_decoder_layers, cfg.scan_layers, cfg.pipeline_stages))
        return {"flops": 7 + 3 * cfg.num_decoder_layers, "bytes accessed": 1.0}

    config = models.tiny_decoder(num_decoder_layers=12, scan_layers=True, pipeline_stages=4, pipeline_microbatches=8)
    cost, _ = loops.extrapolated_cost(config, cost_of)
    assert cost["flops"] == 7 + 3 * 12 and seen == [(4, False, 4), (8, False, 4)]


@pytest.mark.slow
@needs_libtpu
def test_pipelined_plan_on_4_stages():
    lengths, batch, mesh = {"targets": 32}, 16, {"data": 1, "stage": 4}
    config = models.tiny_decoder(num_decoder_layers=12, scan_layers=True, pipeline_stages=4, pipeline_microbatches=4,
                                 **NO_DROPOUT)
    plan = lambda cfg: aot.plan_train_step(cfg, "decoder", "causal_lm", lengths, topology="v5e:2x2",  # noqa: E731
                                           mesh_shape=mesh, batch_size=batch)
    piped, unrolled = plan(config), plan(dataclasses.replace(config, scan_layers=False))
    flat = plan(dataclasses.replace(config, pipeline_stages=1))
    assert piped.mesh["stage"] == 4 and piped.fits
    assert piped.bubble_fraction == pytest.approx(3 / 7)
    assert "bubble 42.9% of stage-iterations" in report.format_plan(piped)
    assert piped.model_flops == pytest.approx(flat.model_flops, rel=1e-6)  # useful work only
    assert piped.flops == pytest.approx(unrolled.flops, rel=1e-3)  # extrapolated == unrolled at full depth
    assert piped.bytes_accessed == pytest.approx(unrolled.bytes_accessed, rel=0.02)
    # Each stage holds a quarter of the layers: less train state per chip than the unpipelined step (replicated).
    assert piped.parameters == flat.parameters and piped.state_bytes < 0.5 * flat.state_bytes
    # Each stage computes a quarter of the layers' work (plus the bubble's filler), not all of it.
    assert piped.flops < flat.flops
