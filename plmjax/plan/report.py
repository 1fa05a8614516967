"""Plans as text: one plan's summary for the terminal, its JSON record, and the Markdown table of several.

    python -m plmjax.plan.report plans.jsonl     # the table of every plan `plmjax plan --out plans.jsonl` appended
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from plmjax.plan.hardware import GIB, slice_name
from plmjax.plan.hlo_traffic import CHECK_TOLERANCE

if TYPE_CHECKING:  # the report reads plans; it does not compile them (no TensorFlow, no libtpu to import)
    from plmjax.plan.aot import Plan


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _mesh(mesh) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def _tokens(plan: Plan) -> str:
    lengths = {k.split("_")[0]: v for k, v in plan.lengths.items() if k.endswith("_input_tokens")}
    return " + ".join(f"{v} {k}" for k, v in lengths.items())


def _pipeline_note(plan: Plan) -> str:
    if plan.pipeline_stages <= 1:
        return ""
    return (f" (pipeline {plan.pipeline_stages} stages x {plan.pipeline_microbatches} microbatches, bubble "
            f"{100 * plan.bubble_fraction:.0f}%)")


def _moe_routing(plan: Plan) -> str:
    """'8 experts, top-1, capacity factor 1.25: encoder 80 slots / 512 tokens (0.1% dropped), ...'."""
    moe = plan.moe
    stacks = ", ".join(f"{name} {g['capacity']} slots / {g['tokens']} tokens "
                       f"({100 * g['uniform_dropped_fraction']:.1f}% dropped)" for name, g in moe["stacks"].items())
    return f"{moe['experts']} experts, top-{moe['k']}, capacity factor {moe['capacity_factor']:g}: {stacks}"


def _moe_note(plan: Plan) -> str:
    return "" if not plan.moe else f" ({_moe_routing(plan)} at a uniformly random router)"


def _model_note(plan: Plan) -> str:
    """What the table's model cell adds: the pipeline's bubble, the experts' capacity and drop."""
    return _pipeline_note(plan) + _moe_note(plan)


def format_plan(plan: Plan) -> str:
    """The terminal summary of one plan (every figure per chip, as the compiler reports it per device)."""
    chips = plan.devices // plan.devices_per_chip
    lines = [f"{plan.model} on {plan.topology} ({slice_name(plan.chip, chips)}: {chips} chips), mesh "
             f"{_mesh(plan.mesh)}, batch {plan.batch_size} x ({_tokens(plan)}) tokens, remat {plan.remat_policy}, "
             f"{plan.dtype} compute, {plan.param_dtype} parameters"]
    rows = [("parameters", f"{plan.parameters / 1e9:.3f} B")]
    if plan.pipeline_stages > 1:
        rows.append(("pipeline", f"{plan.pipeline_stages} stages x {plan.pipeline_microbatches} microbatches "
                                 f"(GPipe), bubble {100 * plan.bubble_fraction:.1f}% of stage-iterations"))
    if plan.moe:
        rows.append(("experts", f"{_moe_routing(plan)} per sequence, the dropped fraction at a uniformly random "
                                f"router (the trainer's moe_dropped_fraction metric measures a trained one's)"))
    if plan.compiler_message:
        rows.append(("compiler", plan.compiler_message))
    rows += [
        ("memory per chip", f"arguments {_gib(plan.argument_bytes)} (train state {_gib(plan.state_bytes)}), "
                            f"outputs {_gib(plan.output_bytes)} (aliased to donated arguments "
                            f"{_gib(plan.alias_bytes)}), temporaries {_gib(plan.temp_bytes)}, code "
                            f"{_gib(plan.code_bytes)}"),
        ("total per chip", f"{_gib(plan.total_bytes)} of {plan.hbm_bytes / GIB:.0f} GiB HBM "
                           f"({100 * plan.total_bytes / plan.hbm_bytes:.0f}%)"),
    ]
    if plan.flops is not None:
        rows += [
            ("FLOPs per chip", f"{plan.flops:.3e} compiled, {plan.model_flops:.3e} model (3 x forward); ratio "
                               f"{plan.flops / plan.model_flops:.2f}" + (
                                   " (below 1: XLA's cost analysis undercounts this step, as under tensor "
                                   "parallelism; its real FLOPs are not known, the roofline uses the model's)"
                                   if plan.flops_undercounted else "")
                               + ("; with the flash kernel's backward FLOPs, which XLA counts as 0 (plan.kernels)"
                                  if plan.attention_kernel == "flash" else "")),
            ("HBM bytes per chip", f"{plan.bytes_accessed:.3e} (XLA's count)"),
            ("roofline step", f"{plan.step_seconds * 1e3:.1f} ms ({plan.bound}-bound at {plan.chip.bf16_tflops:g} "
                              f"TFLOP/s, {plan.chip.hbm_gbps:g} GB/s): "
                              f"{plan.tokens_per_step / plan.step_seconds:,.0f} tokens/s (a lower bound on the step"
                              + (", from the model FLOPs: no recomputation counted)" if plan.flops_undercounted
                                 else ")")),
            ("MFU at roofline", mfu_text(plan)),
            ("HBM-only estimate", hbm_estimate_text(plan)),
        ]
    compile_text = f"{plan.compile_seconds:.0f} s on this machine"
    if plan.scan_layers and plan.flops is not None:
        compile_text += (f"; FLOPs and bytes from the step unrolled at two small depths (XLA counts a loop body "
                         f"once; plan.loops), {plan.cost_compile_seconds:.0f} s more")
    rows.append(("compile time", compile_text))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if not plan.fits:
        lines.append(plan.does_not_fit_message())
    return "\n".join(lines)


def mfu_text(plan: Plan) -> str:
    """The roofline MFU and what it is: an upper bound, or not known (and why)."""
    if plan.mfu is None:
        return ("- (not known: the compiled FLOPs are undercounted and the roofline is compute-bound, so from the "
                "model FLOPs it would be 100% by construction)")
    if plan.flops_undercounted:
        return (f"{100 * plan.mfu:.1f}% (an upper bound: memory-bound, so it does not depend on the undercounted "
                "FLOPs; communication is not counted)")
    return f"{100 * plan.mfu:.1f}% (an upper bound: communication is not counted)"


def hbm_estimate_text(plan: Plan) -> str:
    """The roofline again with plan.hlo_traffic's HBM-only bytes, or why it is not given."""
    if plan.hbm_bytes_estimate is None:
        return "- (not computed)"
    check = f"the walk counts {plan.xla_rules_bytes:.3e} by XLA's rules against its {plan.bytes_accessed:.3e}"
    if not plan.hbm_estimate_checked:
        return f"- (not trusted: {check}, more than {100 * CHECK_TOLERANCE:.0f}% apart)"
    mfu = "-" if plan.hbm_mfu is None else f"{100 * plan.hbm_mfu:.1f}%"
    return (f"{plan.hbm_bytes_estimate:.3e} bytes (on-chip buffers and each asynchronous move's repeats not counted; "
            f"{check}): roofline {plan.hbm_step_seconds * 1e3:.1f} ms ({plan.hbm_bound}-bound), MFU bound {mfu}")


def plan_record(plan: Plan) -> dict:
    """A JSON-ready record of a plan, with the derived figures."""
    record = dataclasses.asdict(plan)
    record["chip"] = dataclasses.asdict(plan.chip)
    record.update(total_bytes=plan.total_bytes, hbm_bytes=plan.hbm_bytes, fits=plan.fits,
                  step_seconds=plan.step_seconds, bound=plan.bound, mfu=plan.mfu,
                  hbm_estimate_checked=plan.hbm_estimate_checked, hbm_step_seconds=plan.hbm_step_seconds,
                  hbm_mfu=plan.hbm_mfu,
                  flops_undercounted=plan.flops_undercounted,
                  tokens_per_step=plan.tokens_per_step, message=plan.does_not_fit_message())
    return record


def plan_from_record(record: dict) -> "Plan":
    """The plan a record holds (derived figures recomputed, so records outlive changes to their formulas)."""
    from plmjax.plan.aot import Plan
    from plmjax.plan.hardware import Chip
    names = {f.name for f in dataclasses.fields(Plan)}
    return Plan(**{**{k: v for k, v in record.items() if k in names}, "chip": Chip(**record["chip"])})


def markdown_table(records: list[dict]) -> str:
    """One row per plan record: model, slice, mesh, batch, remat, memory per chip, FLOPs, roofline, MFU; a note
    under the table when a row's compiled FLOPs are undercounted."""
    header = ("| model | params | slice | mesh | batch x tokens | remat | state GiB | temps GiB | "
              "total GiB / HBM | fits | TFLOPs/chip (compiled / model) | roofline step | MFU | compile |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for plan in map(plan_from_record, records):
        chips = plan.devices // plan.devices_per_chip
        if plan.flops is not None:
            flops = f"{plan.flops / 1e12:.3g} / {plan.model_flops / 1e12:.3g}"
            flops += "*" if plan.flops_undercounted else ""
            step = f"{plan.step_seconds * 1e3:.0f} ms ({plan.bound[:3]})"
            mfu = "-*" if plan.mfu is None else f"{100 * plan.mfu:.0f}%"
            if plan.hbm_mfu is not None:
                mfu += f" ({100 * plan.hbm_mfu:.0f}%)"
        else:
            flops, step, mfu = "-", "-", "-"
        slice_ = f"{slice_name(plan.chip, chips)} ({plan.topology.split(':')[1]})"
        lines.append(
            f"| {plan.model}{_model_note(plan)} | {plan.parameters / 1e9:.2f} B | {slice_} | "
            f"{_mesh_cell(plan.mesh)} | "
            f"{plan.batch_size} x {plan.tokens_per_step // plan.batch_size} | {plan.remat_policy} | "
            f"{plan.state_bytes / GIB:.2f} | {plan.temp_bytes / GIB:.2f} | "
            f"{plan.total_bytes / GIB:.1f} / {plan.hbm_bytes / GIB:.0f} | {'yes' if plan.fits else '**no**'} | "
            f"{flops} | {step} | {mfu} | {_compile_cell(plan)} |")
    if any(plan_from_record(r).flops_undercounted for r in records):
        lines += ["", UNDERCOUNT_NOTE]
    if any(plan_from_record(r).hbm_mfu is not None for r in records):
        lines += ["", HBM_NOTE]
    return "\n".join(lines)


def _mesh_cell(mesh) -> str:
    """The mesh axes that split something, e.g. 'data=4,fsdp=16' (every axis of size 1 left out)."""
    return ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "1 device"


def _compile_cell(plan: Plan) -> str:
    """The step's compile time; for scanned layers, + the unrolled compiles its cost comes from."""
    if plan.scan_layers and plan.cost_compile_seconds:
        return f"{plan.compile_seconds:.0f} s (+{plan.cost_compile_seconds:.0f} s)"
    return f"{plan.compile_seconds:.0f} s"


UNDERCOUNT_NOTE = ("`*`: the compiled FLOPs are below the model FLOPs (XLA's cost analysis undercounts the step, as under "
                   "tensor parallelism), so the step's real FLOPs are not known; the roofline step uses the model "
                   "FLOPs (a lower bound, without recomputation). Memory-bound, the MFU bound holds; compute-bound, "
                   "it would be 100% by construction and is not given (`-*`).")

HBM_NOTE = ("MFU `x% (y%)`: x from XLA's \"bytes accessed\", y from the HBM-only estimate (plan.hlo_traffic: on-chip "
            "buffers and the repeated counts of asynchronous moves left out), given where its walk reproduces XLA's "
            "count within 5%.")


def read_records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    print(markdown_table(read_records(sys.argv[1])))
