"""FLOPs and HBM bytes of a step whose layers run in a loop (`scan_layers`), which XLA's cost analysis cannot count.

`compiled.cost_analysis()` counts the body of a while loop once, whatever its trip count: the train step of a
24-layer scanned BERT reports the FLOPs and bytes of one layer plus the rest of the step (measured: a scanned
tiny GPT reports the same FLOPs with 2 and with 4 layers). The memory analysis, an allocation, is right.

A layer stack's cost is linear in its number of layers (every layer is the same program). So the cost of the
scanned step is taken from the same step unrolled at two small depths, compiled for the same slice, mesh and
batch: cost(n) = cost(s) + (n - s) x (cost(s + u) - cost(s)) / u per stack, where s is the smallest depth the
model accepts and u the layers of one repeating unit (1; an MoE model's expert interval; a pipeline's number of
stages: unrolled, its M + S - 1 iterations each run one more layer per stage). Stacks of equal depth
(T5's encoder and decoder) grow together, two compiles; stacks of different depths take one compile more each.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Mapping

LAYER_FIELDS = ("num_encoder_layers", "num_decoder_layers")
COST_KEYS = ("flops", "bytes accessed", "hbm bytes", "xla rules bytes")  # the last two: plan.hlo_traffic's


def repeating_unit(config) -> int:
    """Layers of the smallest repeating block of a stack: an MoE model alternates dense and expert layers; a
    pipeline grows by one layer per stage."""
    unit = getattr(config, "moe_layer_interval", 1) if getattr(config, "num_experts", 0) else 1
    return math.lcm(unit, config.pipeline_stages)


def _smallest_depth(config, field: str) -> int:
    # PanGu-alpha's query layer is the last decoder layer and is not repeated: the stack below it starts at 1.
    return repeating_unit(config) + (1 if field == "num_decoder_layers" and config.query_layer else 0)


def extrapolated_cost(config, cost_of: Callable[[object], Mapping[str, float]],
                      keys: tuple[str, ...] = ("flops", "bytes accessed")) -> tuple[dict[str, float], float]:
    """The cost of `config`'s step unrolled at its full depth, from `cost_of` (compiles one unrolled config, returns
    its cost analysis) at two or three small depths; and the seconds those compiles took."""
    depths = {f: getattr(config, f) for f in LAYER_FIELDS if getattr(config, f)}
    unit = repeating_unit(config)
    smallest = {f: _smallest_depth(config, f) for f in depths}
    for field, depth in depths.items():
        if (depth - smallest[field]) % unit:
            raise ValueError(f"{field}={depth} is not {smallest[field]} plus a multiple of the {unit}-layer repeating "
                             f"unit (moe_layer_interval); change the depth or the interval.")
    unrolled = lambda **d: dataclasses.replace(config, scan_layers=False, **d)  # noqa: E731
    start = time.time()
    base = cost_of(unrolled(**smallest))
    if len(set(depths.values())) == 1 and len(set(smallest.values())) == 1:  # stacks of equal depth grow together
        grown = [(cost_of(unrolled(**{f: s + unit for f, s in smallest.items()})), next(iter(depths.values()))
                  - next(iter(smallest.values())))]
    else:
        grown = [(cost_of(unrolled(**{**smallest, field: smallest[field] + unit})), depths[field] - smallest[field])
                 for field in depths]
    cost = {key: base[key] + sum((g[key] - base[key]) * extra / unit for g, extra in grown) for key in keys
            if key in base}
    return cost, time.time() - start
