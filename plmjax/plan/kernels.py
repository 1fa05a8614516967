"""FLOPs of the Pallas flash-attention backward kernels, which XLA's cost analysis counts as zero.

jax's TPU flash attention (`jax.experimental.pallas.ops.tpu.flash_attention`, plmjax.layers.flash) gives its
forward `pallas_call` a cost estimate (the reference attention's FLOPs), but not its two backward calls
(`flash_mha_bwd_dkv`, `flash_mha_bwd_dq`): measured on a v4 compile of one attention, the step's FLOPs do not grow
when the backward is added, while its bytes grow by the kernels' operands and outputs (XLA counts those for a custom
call). So the plan adds their FLOPs from the compiled HLO: per call, q [batch, heads, q, d] and k [batch, heads,
k, d] are its first two operands, and the kernels do 4 (dkv: q k^T again, p^T do, do v^T, ds^T q) and 3 (dq: q k^T,
do v^T, ds k) matrix products of 2 x batch x heads x q x k x d FLOPs each, as the forward's estimate counts its two
(every block, causal or not). Calls inside the branches of a `lax.cond` (the MLM step's sparse and full logits)
count once, for the largest branch, as XLA's cost analysis counts a conditional.
"""

from __future__ import annotations

import math
import re

_PRODUCTS = {"flash_mha_bwd_dkv": 4, "flash_mha_bwd_dq": 3}
_DEFINITION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(?[a-z0-9]+\[[\d,]*\][^ ]*)")
_CALL = re.compile(r"^\s*(?:ROOT )?%(flash_mha_bwd_(?:dkv|dq))[\w.\-]* = .*? custom-call\(([^)]*)\)")
_SHAPE = re.compile(r"[a-z0-9]+\[([\d,]*)\]")
_BRANCH = re.compile(r'op_name="[^"]*/(?:cond|switch)/branch_(\d+)_fun/')


def _dims(type_text: str) -> list[int]:
    return [int(d) for d in _SHAPE.match(type_text.lstrip("(")).group(1).split(",") if d]


def uncounted_flops(hlo_text: str) -> float:
    """FLOPs of every flash-attention backward kernel call in a compiled module's HLO text (per device)."""
    types = {}
    for line in hlo_text.splitlines():
        found = _DEFINITION.match(line)
        if found:
            types[found.group(1)] = found.group(2)
    flops: dict[str | None, float] = {}  # per branch of a conditional (None: outside any)
    for line in hlo_text.splitlines():
        found = _CALL.match(line)
        if not found:
            continue
        operands = re.findall(r"%([\w.\-]+)", found.group(2))
        q, k = (_dims(types[name]) for name in operands[:2])  # [batch, heads, q, d], [batch, heads, k, d]
        branch = _BRANCH.search(line)
        key = branch and branch.group(1)
        flops[key] = flops.get(key, 0.0) + _PRODUCTS[found.group(1)] * 2 * math.prod(q) * k[2]
    outside = flops.pop(None, 0.0)
    return outside + max(flops.values(), default=0.0)
