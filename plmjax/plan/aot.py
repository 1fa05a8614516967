"""Ahead-of-time compilation of the real train step for a TPU slice this machine does not have.

`plan_train_step` builds what `plmjax train` builds (the module, the objective, the optimizer, the sharded
`TrainState` of `train.state.state_shardings`, the jitted step of `train.step.jit_train_step`), but over the devices
of a TPU topology (`jax.experimental.topologies`) and with abstract arguments: `ShapeDtypeStruct`s carrying the
`NamedSharding`s the run would use. libtpu's compiler then partitions, schedules and allocates the step exactly as
on the slice, and reports per device:

- memory (`compiled.memory_analysis()`): arguments (train state + batch), outputs, the part of the outputs that
  reuses donated argument buffers (alias), temporaries (activations kept for the backward pass, gradients, XLA
  scratch) and the generated code; the total is arguments + outputs - alias + temporaries + code;
- FLOPs and HBM bytes accessed (`compiled.cost_analysis()`), from which the roofline step time is
  max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) at the chip's published peaks (`hardware.CHIPS`), FLOPs being
  at least the model FLOPs (`Plan.work_flops`). The roofline ignores communication between chips and assumes
  compute and memory traffic overlap: it is a lower bound on the step time and so an upper bound on MFU. Where
  the compiled count is below the model's (`Plan.flops_undercounted`, tensor parallelism) and the roofline is
  compute-bound, no MFU is given (`Plan.mfu` is None): from the model FLOPs it would be 100% by construction;
- model FLOPs: 3 x the FLOPs of the forward pass and loss (XLA's cost analysis of the unpartitioned program; the
  backward pass costs twice the forward), whatever the rematerialization, so MFU = model FLOPs per chip /
  (roofline step time x peak) counts only useful work.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from plmjax import models, sharding
from plmjax.data import feature_converters
from plmjax.layers import moe
from plmjax.models import pipeline
from plmjax.plan import hardware, hlo_traffic, kernels, loops
from plmjax.train import optim
from plmjax.train import setup as setup_lib
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib

GIB = hardware.GIB


@dataclasses.dataclass
class Plan:
    """What the TPU compiler says about one train step on one device of a slice (bytes, FLOPs per device)."""

    model: str
    topology: str
    chip: hardware.Chip
    devices: int
    devices_per_chip: int
    mesh: dict[str, int]
    batch_size: int
    lengths: dict[str, int]  # model feature lengths of one example
    remat_policy: str
    dtype: str
    param_dtype: str
    parameters: int
    state_bytes: int  # this device's shard of the train state (params + optimizer state), from the shardings
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float | None  # per device, as compiled (includes rematerialized recomputation)
    bytes_accessed: float | None
    model_flops: float | None  # per device: 3 x forward-and-loss FLOPs of the whole batch / devices
    compile_seconds: float
    compiler_message: str = ""  # the compiler's own words when it refused the program (out of memory)
    scan_layers: bool = False  # layers in a loop: flops and bytes_accessed extrapolated from unrolled compiles
    cost_compile_seconds: float = 0.0  # the time those unrolled compiles took (plan.loops)
    attention_kernel: str = "einsum"  # 'flash': FLOPs include the kernel's backward, which XLA counts as 0
    pipeline_stages: int = 1  # GPipe stages over the 'stage' mesh axis (TransformerConfig.pipeline_stages)
    pipeline_microbatches: int = 1
    # mixture of experts: experts, k, capacity factor and, per stack ('encoder', 'decoder'), the routing group's
    # tokens (one sequence), the expert capacity and the dropped fraction at a uniformly random router
    moe: dict | None = None
    # plan.hlo_traffic: the compiled module's HBM-only traffic estimate, and the same walk's total under XLA's own
    # rules (which must reproduce bytes_accessed for the estimate to be trusted)
    hbm_bytes_estimate: float | None = None
    xla_rules_bytes: float | None = None

    @property
    def bubble_fraction(self) -> float:
        """The pipeline's idle fraction of stage-iterations, (stages - 1) / (microbatches + stages - 1)."""
        return pipeline.bubble_fraction(self.pipeline_stages, self.pipeline_microbatches)

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def hbm_bytes(self) -> int:
        """HBM one device may use: the chip's, shared by its devices."""
        return self.chip.hbm_bytes // self.devices_per_chip

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes and not self.compiler_message

    @property
    def peak_flops(self) -> float:
        return self.chip.bf16_tflops * 1e12 / self.devices_per_chip

    @property
    def hbm_bandwidth(self) -> float:
        return self.chip.hbm_gbps * 1e9 / self.devices_per_chip

    @property
    def work_flops(self) -> float | None:
        """FLOPs the step does at least: the compiled count, or the model's when the compiler counts fewer (seen
        under tensor parallelism, presumably loop bodies counted once by XLA's cost analysis)."""
        if self.flops is None:
            return None
        return max(self.flops, self.model_flops or 0.0)

    @property
    def step_seconds(self) -> float | None:
        """Roofline step time: max(compute time at peak, HBM traffic time at full bandwidth)."""
        if self.flops is None or self.bytes_accessed is None:
            return None
        return max(self.work_flops / self.peak_flops, self.bytes_accessed / self.hbm_bandwidth)

    @property
    def bound(self) -> str:
        if self.flops is None or self.bytes_accessed is None:
            return "-"
        return "compute" if self.work_flops / self.peak_flops >= self.bytes_accessed / self.hbm_bandwidth else "memory"

    @property
    def flops_undercounted(self) -> bool:
        """The compiled count is below the model FLOPs, which the step does at least: XLA's cost analysis missed
        work (seen under tensor parallelism), so the step's real FLOPs are not known."""
        return self.flops is not None and self.model_flops is not None and self.flops < self.model_flops

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilization at the roofline step time: an upper bound. None where the compiled FLOPs are
        undercounted and the roofline is compute-bound: computed from the model FLOPs it would be 100% by
        construction. (Memory-bound, the bound does not depend on the FLOP count and holds.)"""
        if self.step_seconds is None or self.model_flops is None:
            return None
        if self.flops_undercounted and self.bound == "compute":
            return None
        return self.model_flops / (self.step_seconds * self.peak_flops)

    @property
    def hbm_estimate_checked(self) -> bool:
        """The HBM-only estimate is given when the walk that makes it reproduces XLA's own count within 5%."""
        return (self.hbm_bytes_estimate is not None and self.xla_rules_bytes is not None and bool(self.bytes_accessed)
                and abs(self.xla_rules_bytes / self.bytes_accessed - 1) <= hlo_traffic.CHECK_TOLERANCE)

    @property
    def hbm_step_seconds(self) -> float | None:
        """The roofline step with the HBM-only traffic estimate in place of XLA's count."""
        if not self.hbm_estimate_checked or self.flops is None:
            return None
        return max(self.work_flops / self.peak_flops, self.hbm_bytes_estimate / self.hbm_bandwidth)

    @property
    def hbm_bound(self) -> str:
        if self.hbm_step_seconds is None:
            return "-"
        return "compute" if self.work_flops / self.peak_flops >= self.hbm_bytes_estimate / self.hbm_bandwidth \
            else "memory"

    @property
    def hbm_mfu(self) -> float | None:
        """The MFU bound at `hbm_step_seconds` (None where it is not known, as for `mfu`)."""
        if self.hbm_step_seconds is None or self.model_flops is None:
            return None
        if self.flops_undercounted and self.hbm_bound == "compute":
            return None
        return self.model_flops / (self.hbm_step_seconds * self.peak_flops)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * sum(v for k, v in self.lengths.items() if k.endswith("_input_tokens"))

    def does_not_fit_message(self) -> str:
        """One message: the configuration does not fit, by how much, and what to change ('' when it fits)."""
        if self.fits:
            return ""
        over = (self.total_bytes - self.hbm_bytes) / GIB
        state_share = self.argument_bytes / max(self.total_bytes, 1)
        fixes = ["shard the parameters and optimizer state over more devices (raise fsdp in --mesh, or tensor)",
                 "rematerialize the layers (--remat full, or dots_saveable)",
                 "lower the batch (--batch_size, or gradient accumulation: train.grad_accum_steps)"]
        if state_share < 0.5:  # activations dominate: remat and a smaller batch help most
            fixes = fixes[1:] + fixes[:1]
        elif self.remat_policy != "none":
            fixes = [fixes[0], fixes[2]]
        return (f"{self.model} does not fit on {self.topology} with mesh {_mesh_text(self.mesh)} and batch "
                f"{self.batch_size}: it needs {self.total_bytes / GIB:.1f} GiB per chip, {over:.1f} GiB more than "
                f"the {self.hbm_bytes / GIB:.0f} GiB of HBM of a {self.chip.name} chip (state "
                f"{self.argument_bytes / GIB:.1f} GiB, temporaries {self.temp_bytes / GIB:.1f} GiB). To fit: "
                + "; or ".join(fixes) + ".")


def _mesh_text(mesh: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def batch_spec(objective, task_feature_lengths: Mapping[str, int], batch_size: int, mesh,
               rules=sharding.LOGICAL_AXIS_RULES):
    """The abstract global batch the objective's feature converter produces (docs/interfaces.md: every
    `*_loss_weights` float32, every other feature int32), sharded as `sharding.shard_batch` would put it."""
    converter = feature_converters.make_feature_converter(objective.feature_converter)
    lengths = converter.get_model_feature_lengths(task_feature_lengths)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    dtype = lambda name: jnp.float32 if name.endswith("_loss_weights") else jnp.int32  # noqa: E731
    return {name: jax.ShapeDtypeStruct((batch_size, length), dtype(name), sharding=batch_sharding)
            for name, length in lengths.items()}


def per_device_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard, for uneven splits)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # a typed key: its key data, e.g. uint32[2]
            data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shard, leaf.dtype))
            total += math.prod(data.shape) * data.dtype.itemsize
        else:
            total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def check_divisible(abstract_state, mesh_shape: Mapping[str, int]) -> None:
    """A clear ValueError when a sharded dimension does not split evenly over its mesh axes (jit requires it)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        spec = leaf.sharding.spec
        for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec)))):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            parts = math.prod(mesh_shape[a] for a in axes)
            if size % parts:
                name = jax.tree_util.keystr(path)
                raise ValueError(
                    f"{name} has {size} along dimension {dim}, which does not split over mesh axes {axes} of "
                    f"{parts} devices (mesh {_mesh_text(mesh_shape)}). Choose mesh sizes that divide it (--mesh), or "
                    f"change the model (e.g. pad vocab_size to a multiple of {128 * parts}: gin "
                    "`<preset>.vocab_size = ...`; num_heads must be a multiple of tensor).")


def forward_flops(config, run, abstract_batch) -> float:
    """FLOPs of the forward pass and loss of the whole batch, from XLA's cost analysis of the unpartitioned,
    unrematerialized program (lowered only, never compiled), for `config`: `run.model_config` or the same model
    unrolled (scanned layers are a loop whose body the cost analysis counts once)."""
    unsharded = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)  # noqa: E731
    if getattr(config, "attention_kernel", "einsum") != "einsum":  # the model's FLOPs, in the reference attention
        config = dataclasses.replace(config, attention_kernel="einsum")  # (a TPU kernel does not lower for the host,
        # and XLA counts a Mosaic call's FLOPs only from its cost estimate)
    module = run.module if config == run.model_config else run.module.clone(config=config)
    dummy = state_lib.dummy_inputs(run.architecture, 1, run.task_feature_lengths)
    params = jax.eval_shape(lambda: module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, **dummy,
                                                deterministic=True)["params"])
    params = nn.meta.unbox(params)

    def loss(params, batch):
        outputs = module.apply({"params": params}, **run.objective.model_inputs(batch), deterministic=True)
        return run.objective.loss_fn(batch, outputs)[0]

    return float(_cost(jax.jit(loss).lower(unsharded(params), unsharded(abstract_batch)))["flops"])


def _traffic(hlo_text: str) -> dict[str, float]:
    """plan.hlo_traffic's figures; none (and a warning) for a module its parser does not read: the estimate is an
    addition to the plan, which must not fail for it."""
    try:
        return hlo_traffic.traffic(hlo_text)
    except (ValueError, KeyError, IndexError, StopIteration, AttributeError) as error:
        print(f"plmjax plan: no HBM-only estimate ({type(error).__name__}: {error}).", file=sys.stderr)
        return {}


def _cost(lowered_or_compiled) -> dict[str, float]:
    cost = lowered_or_compiled.cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


# The TPU compiler's refusals, e.g. "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO
# temporaries (26.84G) exceeds available HBM (15.75G)." (libtpu 0.0.42) or "... Used 130.21G of 95.74G hbm. ...".
_OOM_TEMPS = re.compile(r"temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM")
_OOM_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_out_of_memory(message: str, argument_bytes: int) -> int | None:
    """Temporaries the compiler needed when it refused a program for lack of HBM; None for other errors."""
    found = _OOM_TEMPS.search(message)
    if found:
        return int(float(found.group(1)) * _UNITS[found.group(2)])
    found = _OOM_USED.search(message)
    if found:
        return int(float(found.group(1)) * _UNITS[found.group(2)]) - argument_bytes
    return None


def _compile_step(model_config, architecture: str, objective: str, task_feature_lengths: Mapping[str, int], mesh,
                  batch_size: int, optimizer, grad_accum_steps: int, rules) -> dict:
    """`plmjax train`'s step for `model_config` over `mesh`, lowered and compiled with abstract arguments: the run,
    its abstract state and batch, and the compiler's memory and cost analyses (memory None and `message` the
    compiler's words when it refused the program for lack of HBM)."""
    run = setup_lib.setup(model_config, architecture, objective, task_feature_lengths, mesh, rules=rules)
    tx, schedule = optimizer if optimizer is not None else optim.make_optimizer(total_steps=1000)
    abstract_state, shardings = state_lib.state_shardings(run.module, tx, architecture, run.task_feature_lengths,
                                                          mesh, rules)
    check_divisible(abstract_state, dict(mesh.shape))
    batch = batch_spec(run.objective, run.task_feature_lengths, batch_size, mesh, rules)
    train_step = step_lib.jit_train_step(run.module, run.objective, tx, schedule, mesh, shardings,
                                         grad_accum_steps=grad_accum_steps, rules=rules)
    start = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        lowered = train_step.__wrapped__.lower(abstract_state, batch)  # the jitted step inside jit_train_step's mesh
    out = dict(run=run, abstract_state=abstract_state, batch=batch, message="", memory=None, cost={})
    try:
        compiled = lowered.compile()
        cost, text = dict(_cost(compiled)), compiled.as_text()
        if model_config.attention_kernel != "einsum":  # XLA counts no FLOPs for the kernel's backward (plan.kernels)
            cost["flops"] = cost.get("flops", 0.0) + kernels.uncounted_flops(text)
        cost.update(_traffic(text))  # "hbm bytes", "xla rules bytes"
        out.update(memory=compiled.memory_analysis(), cost=cost, compiled=compiled)
    except Exception as error:  # noqa: BLE001  only the compiler's out-of-memory refusal is a result
        arguments = per_device_bytes(abstract_state) + per_device_bytes(batch)
        temps = parse_out_of_memory(str(error), arguments)
        if temps is None:
            raise
        out.update(message=str(error).strip().splitlines()[0], temps=temps)
    out["seconds"] = time.time() - start
    return out


def plan_train_step(model_config, architecture: str, objective: str, task_feature_lengths: Mapping[str, int], *,
                    topology: str, mesh_shape: Mapping[str, int], batch_size: int, optimizer=None,
                    grad_accum_steps: int = 1, rules=sharding.LOGICAL_AXIS_RULES, name: str | None = None) -> Plan:
    """Compiles `plmjax train`'s step for `topology` ('v5e:4x4') over a mesh of its devices (`mesh_shape`: axis
    sizes of `sharding.MESH_AXES`, one may be -1); returns the compiler's figures.

    optimizer: `(tx, schedule)` as `train.optimizer` (default: `optim.make_optimizer`'s AdamW).
    With `scan_layers`, the FLOPs and bytes come from the step unrolled at two small depths (`plan.loops`): XLA's
    cost analysis counts a loop body once.
    """
    chip, _ = hardware.parse_topology(topology)
    devices = hardware.topology_devices(topology)
    mesh = sharding.create_mesh(devices=devices, **mesh_shape)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % (data_parallel * grad_accum_steps):
        raise ValueError(f"Batch size {batch_size} does not split over data x fsdp = {data_parallel} devices "
                         f"(x grad_accum_steps={grad_accum_steps}): use a multiple of "
                         f"{data_parallel * grad_accum_steps} (--batch_size).")
    compile_ = lambda cfg: _compile_step(cfg, architecture, objective, task_feature_lengths, mesh,  # noqa: E731
                                         batch_size, optimizer, grad_accum_steps, rules)
    step = compile_(model_config)
    run, abstract_state, batch, memory, cost = (step[k] for k in ("run", "abstract_state", "batch", "memory", "cost"))
    state_bytes = per_device_bytes(abstract_state)
    if memory is not None:
        mem = dict(argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
                   alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
                   code_bytes=memory.generated_code_size_in_bytes)
    else:  # refused: the compiler's temporaries beside the (known) arguments
        mem = dict(argument_bytes=state_bytes + per_device_bytes(batch), output_bytes=0, alias_bytes=0,
                   temp_bytes=step["temps"], code_bytes=0)
    cost_seconds, forward_config = 0.0, model_config
    if model_config.scan_layers:
        # a pipeline's model FLOPs are the unpipelined stack's: its useful work, without the bubble's filler
        forward_config = dataclasses.replace(model_config, scan_layers=False, pipeline_stages=1)
        if memory is not None:
            cost, cost_seconds = loops.extrapolated_cost(model_config, lambda cfg: compile_(cfg)["cost"],
                                                         keys=loops.COST_KEYS)
    fwd = forward_flops(forward_config, run, batch)
    cfg = model_config
    return Plan(
        model=name or cfg.name, topology=topology, chip=chip, devices=len(devices),
        devices_per_chip=hardware.devices_per_chip(devices), mesh=dict(mesh.shape), batch_size=batch_size,
        lengths={k: int(v.shape[1]) for k, v in batch.items()}, remat_policy=cfg.remat_policy, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, parameters=models.count_params(abstract_state.params), state_bytes=state_bytes,
        flops=cost.get("flops"), bytes_accessed=cost.get("bytes accessed"), model_flops=3 * fwd / len(devices),
        compile_seconds=step["seconds"], compiler_message=step["message"], scan_layers=cfg.scan_layers,
        attention_kernel=cfg.attention_kernel,
        cost_compile_seconds=cost_seconds, pipeline_stages=cfg.pipeline_stages,
        pipeline_microbatches=cfg.pipeline_microbatches, moe=moe_routing(cfg, batch),
        hbm_bytes_estimate=cost.get("hbm bytes"), xla_rules_bytes=cost.get("xla rules bytes"), **mem)


def moe_routing(config, batch) -> dict | None:
    """A mixture-of-experts model's routing at the plan's lengths (`Plan.moe`); None for a dense model."""
    if not getattr(config, "num_experts", 0):
        return None
    k, experts, factor = config.num_experts_per_token, config.num_experts, config.expert_capacity_factor
    stacks = {}
    for key, value in batch.items():
        if key.endswith("_input_tokens"):  # each sequence of a stack is one routing group (plmjax.layers.moe)
            tokens = int(value.shape[1])
            capacity = moe.expert_capacity(tokens, experts, k, factor)
            stacks[key.split("_")[0]] = {"tokens": tokens, "capacity": capacity,
                                         "uniform_dropped_fraction": moe.uniform_dropped_fraction(
                                             tokens, experts, k, capacity)}
    return {"experts": experts, "k": k, "capacity_factor": factor, "stacks": stacks}
