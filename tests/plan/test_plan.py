"""`plmjax plan`: the real train step compiled by libtpu for a TPU slice reports memory and FLOPs that behave as
the model says they must (against closed forms and against doubling the batch), and a plan over the chip's HBM
ends in one message saying by how much and what to change."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest

from plmjax import models
from plmjax.plan import aot, command, hardware, report
from tests.plan import needs_libtpu


# A 2-layer GPT; dropout off so that the step's FLOPs are the model's (threefry dropout masks are a third of a tiny
# model's FLOPs and slow its compilation). Four v4 chips, data parallel, 16 then 32 sequences of 32 tokens a chip.
TINY = models.tiny_decoder(dtype="bfloat16", dropout_rate=0.0, attention_dropout_rate=0.0)
LENGTH, BATCH = 32, 64


def _matmul_flops_per_token(cfg, length):
    """Closed form: 2 FLOPs per weight of every matmul (attention and MLP kernels, the tied output projection)
    plus the attention products QK^T and PV (2 * 2 * length * heads * head_dim a layer), times 3 (forward and
    backward); elementwise work (norms, softmax, GELU, cross entropy) is left out."""
    d, inner = cfg.emb_dim, cfg.num_heads * cfg.head_dim
    per_layer = 4 * d * inner + 2 * d * cfg.mlp_dim
    weights = cfg.num_decoder_layers * per_layer + cfg.vocab_size * d
    attention = cfg.num_decoder_layers * 4 * length * inner
    return 3 * (2 * weights + attention)


@pytest.fixture(scope="module")
def plans():
    return [aot.plan_train_step(TINY, "decoder", "causal_lm", {"targets": LENGTH}, topology="v4:2x2x1",
                                mesh_shape={"data": -1}, batch_size=batch) for batch in (BATCH, 2 * BATCH)]


@pytest.mark.slow
@needs_libtpu
def test_doubling_the_batch_doubles_flops_and_activations_not_the_state(plans):
    small, large = plans
    assert small.devices == 4 and small.devices_per_chip == 1
    assert small.mesh == {"data": 4, "fsdp": 1, "tensor": 1, "expert": 1, "stage": 1}
    # Model FLOPs (XLA's count of the forward pass, x3) per device match the closed form of the matmuls; the rest
    # is elementwise work, a few percent at this width.
    tokens_per_device = BATCH * LENGTH / 4
    closed_form = _matmul_flops_per_token(TINY, LENGTH) * tokens_per_device
    assert 1.0 <= small.model_flops / closed_form <= 1.1
    assert large.model_flops / small.model_flops == pytest.approx(2.0, rel=1e-3)
    # The compiled step does the model's work plus the optimizer's (independent of the batch): just under 2x.
    assert 1.0 <= small.flops / small.model_flops <= 1.1
    assert 1.95 <= large.flops / small.flops < 2.0
    assert large.bytes_accessed > small.bytes_accessed
    # The train state is the same: float32 parameters and AdamW's two moments, replicated (data parallel).
    module = models.build_model("decoder", TINY)
    parameters = models.count_params(jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, LENGTH), jnp.int32)))
    for plan in plans:
        assert plan.parameters == parameters
        assert abs(plan.state_bytes - 3 * 4 * plan.parameters) < 64  # + step, Adam's count, rng key
        assert plan.argument_bytes >= plan.state_bytes
        assert plan.alias_bytes >= 0.99 * plan.state_bytes  # the donated state is updated in place
    assert large.output_bytes == small.output_bytes
    assert large.argument_bytes - small.argument_bytes < 0.05 * small.argument_bytes  # only the batch grew
    # Activations kept for the backward pass grow with the batch.
    assert large.temp_bytes > small.temp_bytes
    # Roofline: the slower of compute and HBM traffic; MFU below 1 since compiled FLOPs >= model FLOPs.
    assert large.step_seconds == max(large.flops / 275e12, large.bytes_accessed / 1200e9)
    assert 0 < large.mfu <= 1
    assert large.fits and large.does_not_fit_message() == ""


def _plan(**overrides):
    fields = dict(model="pangu_alpha_13b", topology="v5p:4x4x4", chip=hardware.CHIPS["v5p"], devices=64,
                  devices_per_chip=1, mesh={"data": 1, "fsdp": 16, "tensor": 4}, batch_size=512,
                  lengths={"decoder_input_tokens": 1024}, remat_policy="none", dtype="bfloat16",
                  param_dtype="float32", parameters=13_000_000_000, state_bytes=10 * hardware.GIB,
                  argument_bytes=10 * hardware.GIB, output_bytes=10 * hardware.GIB, alias_bytes=10 * hardware.GIB,
                  temp_bytes=110 * hardware.GIB, code_bytes=0, flops=1e15, bytes_accessed=1e12,
                  model_flops=9e14, compile_seconds=1.0)
    return aot.Plan(**{**fields, **overrides})


def test_does_not_fit_message_says_by_how_much_and_what_to_change():
    plan = _plan()
    assert plan.total_bytes == 120 * hardware.GIB and not plan.fits
    message = plan.does_not_fit_message()
    assert "does not fit on v5p:4x4x4" in message
    assert "120.0 GiB per chip, 25.0 GiB more than the 95 GiB of HBM" in message
    # Activations dominate: rematerialization comes first, then the batch, then sharding.
    assert message.index("--remat") < message.index("--batch_size") < message.index("raise fsdp")
    # State dominates (already rematerialized): more sharding first.
    state_bound = _plan(argument_bytes=100 * hardware.GIB, temp_bytes=20 * hardware.GIB, remat_policy="full")
    assert state_bound.does_not_fit_message().index("raise fsdp") < state_bound.does_not_fit_message().index("--batch")
    assert "--remat" not in state_bound.does_not_fit_message()
    assert _plan(temp_bytes=80 * hardware.GIB).fits


def test_roofline_and_mfu_closed_form():
    plan = _plan(temp_bytes=10 * hardware.GIB)
    assert plan.step_seconds == pytest.approx(1e15 / 459e12)  # compute-bound: 1e12 bytes take 0.36 s at 2765 GB/s
    assert plan.bound == "compute"
    assert plan.mfu == pytest.approx(9e14 / 1e15)
    assert not plan.flops_undercounted
    # A compiled count below the model's (XLA counts a loop body once) never makes the roofline faster than the model.
    undercounted = _plan(flops=5e14)
    assert undercounted.flops_undercounted
    assert undercounted.step_seconds == pytest.approx(9e14 / 459e12) and undercounted.bound == "compute"
    # ... and there, compute-bound at the model FLOPs, an MFU would be 100% by construction: none is given.
    assert undercounted.mfu is None
    memory_bound = _plan(bytes_accessed=1e13)
    assert memory_bound.bound == "memory" and memory_bound.step_seconds == pytest.approx(1e13 / 2765e9)
    # Memory-bound, the MFU bound does not depend on the compiled FLOPs: it holds when they are undercounted too.
    assert _plan(flops=5e14, bytes_accessed=1e13).mfu == pytest.approx(9e14 / (1e13 / 2765e9 * 459e12))


def test_plan_report_says_what_is_known_when_flops_are_undercounted():
    undercounted = _plan(flops=5e14, temp_bytes=10 * hardware.GIB)
    text = report.format_plan(undercounted)
    assert "XLA's cost analysis undercounts" in text
    mfu_line = lambda text: next(line for line in text.splitlines() if "MFU at roofline" in line).split(None, 3)[3]  # noqa: E731
    assert mfu_line(text).startswith("- (not known: the compiled FLOPs are undercounted and the roofline is compute-bound")
    assert "100.0%" not in text
    assert "from the model FLOPs: no recomputation counted" in text
    memory_bound = report.format_plan(_plan(flops=5e14, bytes_accessed=1e13, temp_bytes=10 * hardware.GIB))
    assert "an upper bound: memory-bound, so it does not depend on the undercounted FLOPs" in memory_bound
    counted = report.format_plan(_plan(temp_bytes=10 * hardware.GIB))
    assert mfu_line(counted) == "90.0% (an upper bound: communication is not counted)"
    assert "undercount" not in counted
    # The table: '-*' for the unknown MFU, the compiled/model FLOPs marked, and the note under the table.
    records = [report.plan_record(p) for p in (undercounted, _plan(temp_bytes=10 * hardware.GIB))]
    table = report.markdown_table(records).splitlines()
    assert table[2].endswith("| 500 / 900* | 1961 ms (com) | -* | 1 s |")
    assert table[3].endswith("| 1e+03 / 900 | 2179 ms (com) | 90% | 1 s |")
    assert table[-1] == report.UNDERCOUNT_NOTE
    assert report.markdown_table(records[1:]).splitlines()[-1] == table[3]


def test_moe_plan_states_capacity_and_drop_at_a_uniform_router():
    """A mixture-of-experts plan: per stack, each sequence's expert capacity and the dropped fraction of a uniformly
    random router (`moe.uniform_dropped_fraction`), in the terminal summary, the table and the record."""
    from plmjax.layers import moe
    from plmjax.models import config as config_lib
    config = config_lib.tiny_moe_decoder(num_experts=8, expert_capacity_factor=1.25)
    batch = {"encoder_input_tokens": jnp.zeros((4, 512), jnp.int32), "decoder_input_tokens": jnp.zeros((4, 114)),
             "decoder_target_tokens": jnp.zeros((4, 114))}
    routing = aot.moe_routing(config, batch)
    capacity = math.ceil(1.25 * 512 / 8)
    assert routing["stacks"]["encoder"] == {"tokens": 512, "capacity": capacity, "uniform_dropped_fraction":
                                            moe.uniform_dropped_fraction(512, 8, 1, capacity)}
    assert routing["stacks"]["decoder"]["capacity"] == math.ceil(1.25 * 114 / 8) and set(routing["stacks"]) == {
        "encoder", "decoder"}
    assert aot.moe_routing(models.tiny_decoder(), batch) is None
    plan = _plan(moe=routing, temp_bytes=10 * hardware.GIB)
    drop = 100 * routing["stacks"]["decoder"]["uniform_dropped_fraction"]
    assert f"decoder 18 slots / 114 tokens ({drop:.1f}% dropped)" in report.format_plan(plan)
    row = report.markdown_table([report.plan_record(plan)]).splitlines()[2]
    assert row.startswith("| pangu_alpha_13b (8 experts, top-1, capacity factor 1.25: encoder 80 slots / 512 tokens")
    assert report.plan_from_record(report.plan_record(plan)).moe == routing


def test_hbm_only_estimate_is_reported_beside_xla_count_when_its_walk_checks_out():
    """plan.hlo_traffic's estimate: a second roofline and MFU bound beside XLA's, in the summary and the table (with
    its note), given only when the walk's total under XLA's rules is within 5% of XLA's count."""
    plan = _plan(bytes_accessed=1e13, hbm_bytes_estimate=8e12, xla_rules_bytes=1.03e13, temp_bytes=10 * hardware.GIB)
    assert plan.hbm_estimate_checked and plan.hbm_bound == "memory"
    assert plan.hbm_step_seconds == pytest.approx(8e12 / 2765e9)
    assert plan.hbm_mfu == pytest.approx(9e14 / (8e12 / 2765e9 * 459e12))
    text = report.format_plan(plan)
    assert f"roofline {8e12 / 2765e9 * 1e3:.1f} ms (memory-bound), MFU bound {100 * plan.hbm_mfu:.1f}%" in text
    table = report.markdown_table([report.plan_record(plan)]).splitlines()
    assert f"| {100 * plan.mfu:.0f}% ({100 * plan.hbm_mfu:.0f}%) |" in table[2] and table[-1] == report.HBM_NOTE
    off = _plan(bytes_accessed=1e13, hbm_bytes_estimate=8e12, xla_rules_bytes=1.06e13, temp_bytes=10 * hardware.GIB)
    assert not off.hbm_estimate_checked and off.hbm_mfu is None
    assert "not trusted" in report.format_plan(off)
    assert report.HBM_NOTE not in report.markdown_table([report.plan_record(off)])
    assert _plan().hbm_mfu is None and "- (not computed)" in report.format_plan(_plan(temp_bytes=10 * hardware.GIB))


def test_report_command_prints_the_table(tmp_path):
    """`python -m plmjax.plan.report plans.jsonl`, as docs/plans.md runs it (its notes were once defined below the
    command's own code, so the command stopped with a NameError while the functions passed)."""
    import json
    import subprocess
    import sys
    plan = _plan(bytes_accessed=1e13, hbm_bytes_estimate=8e12, xla_rules_bytes=1.03e13, temp_bytes=10 * hardware.GIB)
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps(report.plan_record(plan)) + "\n")
    out = subprocess.run([sys.executable, "-m", "plmjax.plan.report", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == report.markdown_table([report.plan_record(plan)])


def test_compiler_out_of_memory_message_is_parsed():
    # libtpu 0.0.42's words for a program over a v5e's HBM (a 60000^2 float32 matmul on one chip).
    refusal = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(26.84G) exceeds available HBM (15.75G).")
    assert aot.parse_out_of_memory(refusal, argument_bytes=10) == int(26.84 * hardware.GIB)
    older = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 130.21G of 95.74G hbm."
    assert aot.parse_out_of_memory(older, argument_bytes=hardware.GIB) == int(130.21 * hardware.GIB) - hardware.GIB
    assert aot.parse_out_of_memory("INVALID_ARGUMENT: something else", argument_bytes=0) is None


def test_topology_and_mesh_flags():
    assert hardware.parse_topology("v5e:4x4") == (hardware.CHIPS["v5e"], (4, 4))
    for bad in ("v5e", "v7:4x4", "v5e:4xfour"):
        with pytest.raises(ValueError, match="--topology"):
            hardware.parse_topology(bad)
    assert command.parse_mesh("fsdp=16,tensor=4") == {"data": 1, "fsdp": 16, "tensor": 4, "expert": 1, "stage": 1}
    assert command.parse_mesh("data=2,expert=4") == {"data": 2, "fsdp": 1, "tensor": 1, "expert": 4, "stage": 1}
    assert command.parse_mesh("data=-1") == {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1, "stage": 1}
    assert command.parse_mesh("fsdp=4,stage=4") == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 1, "stage": 4}
    with pytest.raises(ValueError, match="--mesh"):
        command.parse_mesh("pipeline=2")


def test_gin_run_settings_are_what_train_reads():
    settings = command.read_gin_run(["gin_configs/experiments/tiny_gpt_lm.gin",
                                     "gin_configs/mesh/data2_fsdp2_tensor2.gin"], ["BATCH_SIZE = 8"])
    assert settings["model_config"] == dataclasses.replace(models.tiny_decoder(), vocab_size=4096)
    assert (settings["architecture"], settings["objective"]) == ("decoder", "causal_lm")
    assert settings["task_feature_lengths"] == {"targets": 32}
    assert settings["batch_size"] == 8
    assert settings["mesh_shape"] == {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1, "stage": 1}
    tx, _ = settings["optimizer"]
    assert hasattr(tx, "update")


@pytest.mark.slow
@needs_libtpu
def test_plmjax_plan_runs_from_the_command_line(tmp_path, capsys):
    """`plmjax plan` end to end on a tiny recipe with scanned layers: the terminal summary and the JSON line."""
    import gin

    from plmjax import cli
    out = tmp_path / "plans.jsonl"
    try:
        status = cli.main(["plan", "--gin_file=gin_configs/experiments/tiny_gpt_lm.gin",
                           "--gin_param=tiny_decoder.scan_layers = True", "--gin_param=tiny_decoder.dropout_rate = 0.0",
                           "--topology=v4:2x2x1", "--mesh=data=4", "--batch_size=8", f"--out={out}"])
    finally:
        gin.clear_config()
    assert status == 0
    summary = capsys.readouterr().out
    assert "tiny_decoder on v4:2x2x1" in summary and "unrolled at two small depths" in summary
    [record] = report.read_records(out)
    assert record["scan_layers"] and record["fits"] and record["batch_size"] == 8
    assert record["flops"] >= record["model_flops"] > 0
