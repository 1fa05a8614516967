"""HBM traffic of a compiled TPU program, from its HLO text: what XLA's "bytes accessed" would be if it counted only
the high-bandwidth memory.

`compiled.cost_analysis()["bytes accessed"]` (libtpu 0.0.42) counts every instruction's operand and output bytes
whatever memory they live in. On TPU the compiler's memory-space assignment moves hot buffers into an on-chip
memory space (`S(1)` in the HLO layouts) with asynchronous copies (`copy-start`/`copy-done`) and slices
(`slice-start`/`slice-done`), and the cost analysis counts those on-chip buffers as if they were HBM, and each
asynchronous move of A bytes three to four times (measured: a BERT-base-wide layer at 8 x 512 tokens a v5e chip
counts 4.83 GB, of which about 1.25 GB touch HBM; docs/plans.md).

This module walks the compiled module as XLA's HloCostAnalysis does (xla/service/hlo_cost_analysis.cc: operands
plus output by default; a fusion its outputs and, per parameter, the bytes its users read; slices twice their
output; while loops their body once; conditionals their largest branch) with the sizes of the TPU layouts (tile
padding), and sums two things:
- `xla_rules_bytes`: every buffer counted, the asynchronous moves as libtpu counts them (fitted on single-chip
  programs: a copy of A bytes ~4A, a slice of s bytes ~3s); it reproduces "bytes accessed" and so checks that the
  walk matches what XLA counted (`Plan.hbm_estimate_checked`);
- `hbm_bytes`: only the operands and outputs in memory space 0 (HBM), each asynchronous move once.
It is an estimate of the traffic, not a measurement: it assumes every HBM operand of an instruction is read once
and every HBM output written once, as XLA's own rules do.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re

CHECK_TOLERANCE = 0.05  # how closely the walk must reproduce XLA's "bytes accessed" for its HBM estimate to count
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0, "s4": 0.5, "u4": 0.5,
                "f8e4m3fn": 1, "f8e5m2": 1}
_POINTER = 8  # a tuple's size: its table of leaf pointers
_ASYNC_CONTEXT = 512  # libtpu: the context word a copy-done / slice-done reads
_COPY_START_EXTRA = 4092  # libtpu: what a copy-start's output tuple adds beyond its two buffers
_FREE = ("parameter", "constant", "get-tuple-element", "bitcast", "after-all", "add-dependency", "domain")
_INSTRUCTION = re.compile(r"^\s+(ROOT\s+)?%?([\w.\-]+)\s+=\s+")
_ARRAY = re.compile(r"([a-z0-9]+)\[([\d,]*)\]")


@dataclasses.dataclass
class Array:
    dtype: str
    dims: tuple
    layout: str  # the text inside {...}: minor-to-major order, tiles T(..), memory space S(n)

    @property
    def memory_space(self) -> int:
        found = re.search(r"S\((\d+)\)", self.layout)
        return int(found.group(1)) if found else 0

    @property
    def bytes(self) -> float:
        """Bytes in the TPU layout: the first tile pads the minor physical dimensions."""
        dims = list(self.dims)
        if not dims:
            return _DTYPE_BYTES.get(self.dtype, 4)
        order = [int(x) for x in self.layout.split(":")[0].split(",") if x.strip().isdigit()]
        if sorted(order) != list(range(len(dims))):
            order = list(range(len(dims)))[::-1]
        physical = [dims[d] for d in reversed(order)]  # major .. minor
        tiles = re.findall(r"T\(([\d,]+)\)", self.layout)
        if tiles:
            tile = [int(x) for x in tiles[0].split(",")]
            for i in range(1, min(len(tile), len(physical)) + 1):
                physical[-i] = -(-physical[-i] // tile[-i]) * tile[-i]
        return math.prod(physical) * _DTYPE_BYTES.get(self.dtype, 4)


@dataclasses.dataclass
class Tuple:
    elements: list

    def leaves(self) -> list:
        return [leaf for e in self.elements for leaf in (e.leaves() if isinstance(e, Tuple) else [e])]


def _leaves(shape) -> list:
    return shape.leaves() if isinstance(shape, Tuple) else [shape]


def _size(shape) -> float:
    return _POINTER * len(shape.elements) if isinstance(shape, Tuple) else shape.bytes


def _parse_shape(text: str, i: int = 0):
    while text[i] == " ":
        i += 1
    if text[i] == "(":
        i, elements = i + 1, []
        while True:
            while text[i] in " ,":
                i += 1
            if text[i] == ")":
                return Tuple(elements), i + 1
            shape, i = _parse_shape(text, i)
            elements.append(shape)
    found = _ARRAY.match(text, i)
    if not found:
        raise ValueError(f"no shape at {text[i:i + 60]!r}")
    dims, i, layout = tuple(int(x) for x in found.group(2).split(",") if x), found.end(), ""
    if i < len(text) and text[i] == "{":
        end = _closing(text, i)
        layout, i = text[i + 1:end], end + 1
    return Array(found.group(1), dims, layout), i


def _unquoted(text: str, start: int = 0):
    """(index, character) of text[start:] outside double-quoted strings."""
    quoted, j = False, start
    while j < len(text):
        c = text[j]
        if quoted:
            if c == "\\":
                j += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        else:
            yield j, c
        j += 1


def _closing(text: str, i: int) -> int:
    """The index of the bracket that closes text[i]."""
    depth = 0
    for j, c in _unquoted(text, i):
        depth += (c in "({[") - (c in ")}]")
        if depth == 0:
            return j
    raise ValueError("unbalanced brackets in HLO text")


def _split_top(text: str) -> list[str]:
    """Comma-separated parts at bracket depth 0."""
    parts, start, depth = [], 0, 0
    for j, c in _unquoted(text):
        depth += (c in "({[") - (c in ")}]")
        if c == "," and depth == 0:
            parts.append(text[start:j].strip())
            start = j + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


@dataclasses.dataclass
class Instruction:
    name: str
    shape: object
    opcode: str
    operands: list
    attrs: dict
    root: bool

    def called(self, key: str) -> list[str]:
        value = self.attrs.get(key)
        return [] if value is None else [x.strip().lstrip("%") for x in value.strip("{}").split(",") if x.strip()]


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """{computation name: its instructions}, the entry computation's name."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)
        if not line.strip() or line.startswith("HloModule"):
            continue
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            words = line.split()
            name = (words[1] if words[0] == "ENTRY" else words[0]).lstrip("%")
            current = computations[name] = []
            entry = name if words[0] == "ENTRY" else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        found = _INSTRUCTION.match(line)
        if not found or current is None:
            continue
        rest = line[found.end():]
        shape, i = _parse_shape(rest)
        rest = rest[i:].lstrip()
        opcode = re.match(r"([\w\-]+)\(", rest)
        close = _closing(rest, opcode.end() - 1)
        operands = []
        for part in _split_top(rest[opcode.end():close]):
            names = re.findall(r"%?([\w.\-]+)\s*$", part)
            operands.append(names[0] if names else part)
        attrs = dict(part.split("=", 1) for part in _split_top(rest[close + 1:].lstrip(", ")) if "=" in part)
        attrs = {k.strip(): v.strip() for k, v in attrs.items()}
        current.append(Instruction(found.group(2), shape, opcode.group(1), operands, attrs, bool(found.group(1))))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


class _Walk:
    """XLA's byte rules over a module; per instruction (its bytes as XLA counts them, its HBM bytes)."""

    def __init__(self, computations: dict[str, list[Instruction]]):
        self.computations = computations
        self.by_name = {c: {i.name: i for i in body} for c, body in computations.items()}
        self.users = {}
        for c, body in computations.items():
            users = collections.defaultdict(list)
            for instruction in body:
                for operand in instruction.operands:
                    users[operand].append(instruction)
            self.users[c] = users

    def _parameter_read(self, computation: str, parameter: Instruction) -> float:
        """FusionParameterReadBytes: slices read their output; any other users share one read of the parameter."""
        total, read_whole = 0.0, False
        for user in self.users[computation].get(parameter.name, []):
            if user.opcode == "fusion":  # a nested fusion: what its own parameter's users read
                nested = user.called("calls")[0]
                inner = {int(p.operands[0]): p for p in self.computations[nested] if p.opcode == "parameter"}
                for index, operand in enumerate(user.operands):
                    if operand == parameter.name:
                        total += self._parameter_read(nested, inner[index])
            elif user.opcode == "slice" or (user.opcode == "dynamic-slice" and user.operands[0] == parameter.name):
                total += _size(user.shape)
            elif user.opcode in ("broadcast", "reshape"):
                total += _size(parameter.shape)
            elif not read_whole and not (user.opcode == "dynamic-update-slice"
                                         and user.operands[0] == parameter.name):
                read_whole = True
                total += _size(parameter.shape)
        return total

    def _fusion(self, instruction: Instruction) -> tuple[list[float], list[float]]:
        """(bytes read per operand, bytes written per output leaf)."""
        body = instruction.called("calls")[0]
        root = next(i for i in self.computations[body] if i.root)
        outputs = _leaves(instruction.shape)
        roots = ([self.by_name[body][name] for name in root.operands] if root.opcode == "tuple"
                 and len(root.operands) == len(outputs) else [root] * len(outputs))
        written = [(_size(self.by_name[body][r.operands[1]].shape) if r.opcode == "dynamic-update-slice"
                    else 0.0 if self._passed_through(body, r, root) else leaf.bytes)
                   for r, leaf in zip(roots, outputs)]
        parameters = {int(p.operands[0]): p for p in self.computations[body] if p.opcode == "parameter"}
        read = [0.0 if self._passed_through(body, parameters[k], root) else self._parameter_read(body, parameters[k])
                for k in range(len(instruction.operands))]
        return read, written

    def _passed_through(self, body: str, parameter: Instruction, root: Instruction) -> bool:
        """A parameter that a tuple-rooted fusion only forwards to its output (the buffers an asynchronous collective
        fusion carries from start to done, aliased in and out): libtpu counts neither its read nor its write."""
        users = self.users[body].get(parameter.name, [])
        return (parameter.opcode == "parameter" and root.opcode == "tuple" and bool(users)
                and all(u is root for u in users))

    def computation(self, name: str) -> tuple[float, float]:
        xla = hbm = 0.0
        for instruction in self.computations[name]:
            x, h = self.instruction(name, instruction)
            xla, hbm = xla + x, hbm + h
        return xla, hbm

    def _space(self, computation: str, operand: str) -> int:
        source = self.by_name[computation].get(operand)
        return _leaves(source.shape)[0].memory_space if source is not None else 0

    def instruction(self, computation: str, instruction: Instruction) -> tuple[float, float]:
        op = instruction.opcode
        operand_shapes = [self.by_name[computation][o].shape if o in self.by_name[computation] else None
                          for o in instruction.operands]
        if op in _FREE:
            return 0.0, 0.0
        if op == "tuple":
            return _size(instruction.shape), 0.0
        if op == "while":
            return tuple(map(sum, zip(*(self.computation(c) for c in instruction.called("body")
                                        + instruction.called("condition")))))
        if op == "conditional":
            branches = instruction.called("branch_computations") or (
                instruction.called("true_computation") + instruction.called("false_computation"))
            return max((self.computation(b) for b in branches), key=lambda t: t[0])
        if op in ("call", "async-start"):
            return self.computation(instruction.called("to_apply" if op == "call" else "calls")[0])
        if op == "copy-start":  # an asynchronous move between memory spaces: its bytes once over HBM
            moved = _leaves(instruction.shape)[0].bytes
            return (_size(operand_shapes[0]) + sum(leaf.bytes for leaf in _leaves(instruction.shape))
                    + _COPY_START_EXTRA), moved
        if op == "slice-start":
            moved = _leaves(instruction.shape)[1].bytes if isinstance(instruction.shape, Tuple) else _size(
                instruction.shape)
            return 2 * moved, moved
        if op in ("copy-done", "slice-done"):
            return sum(leaf.bytes for leaf in _leaves(instruction.shape)) + _ASYNC_CONTEXT, 0.0
        if op == "custom-call":
            target = instruction.attrs.get("custom_call_target", "")
            if "ConcatBitcast" in target:
                return 0.0, 0.0
            if "tpu_custom_call" in target:  # a Pallas kernel: XLA counts its cost_estimate's bytes, if any
                estimate = re.search(r'bytes_accessed\\?"?\s*[:=]\s*\\?"?(\d+)', instruction.attrs.get(
                    "backend_config", ""))
                read = [_size(s) if s is not None else 0.0 for s in operand_shapes]
                hbm = self._hbm(computation, instruction, read, [leaf.bytes for leaf in _leaves(instruction.shape)])
                return (float(estimate.group(1)) if estimate else 0.0), hbm
        if op == "fusion":
            read, written = self._fusion(instruction)
        elif op == "slice":
            read, written = [_size(instruction.shape)], [_size(instruction.shape)]
        elif op == "dynamic-slice":
            read = [_size(instruction.shape)] + [_size(s) for s in operand_shapes[1:]]
            written = [_size(instruction.shape)]
        elif op == "dynamic-update-slice":
            update = _size(operand_shapes[1])
            read, written = [0.0, update] + [_size(s) for s in operand_shapes[2:]], [update]
        elif op == "gather":
            read, written = [_size(instruction.shape), _size(operand_shapes[1])], [_size(instruction.shape)]
        elif op in ("all-reduce", "all-reduce-start"):
            read = [_size(s) if s is not None else 0.0 for s in operand_shapes]
            written = [leaf.bytes for leaf in _leaves(instruction.shape)]
        else:
            read = [_size(s) if s is not None else 0.0 for s in operand_shapes]
            written = [_size(instruction.shape)] if not isinstance(instruction.shape, Tuple) else [
                leaf.bytes for leaf in _leaves(instruction.shape)]
            if isinstance(instruction.shape, Tuple):  # XLA counts a tuple output's pointer table, not its leaves
                return sum(read) + _size(instruction.shape), self._hbm(computation, instruction, read, written)
        return sum(read) + sum(written), self._hbm(computation, instruction, read, written)

    def _hbm(self, computation: str, instruction: Instruction, read: list[float], written: list[float]) -> float:
        """The bytes of `read` (per operand) and `written` (per output leaf) whose buffers are in HBM."""
        reads = sum(b for operand, b in zip(instruction.operands, read) if self._space(computation, operand) == 0)
        leaves = _leaves(instruction.shape)
        if len(written) == len(leaves):
            return reads + sum(b for leaf, b in zip(leaves, written) if leaf.memory_space == 0)
        in_hbm = sum(leaf.bytes for leaf in leaves if leaf.memory_space == 0)
        total = sum(leaf.bytes for leaf in leaves) or 1.0
        return reads + sum(written) * in_hbm / total


def traffic(hlo_text: str) -> dict[str, float]:
    """{'xla rules bytes': the module's bytes under XLA's counting rules (compare "bytes accessed"),
    'hbm bytes': the HBM-only estimate} of a compiled module's text (`compiled.as_text()`)."""
    computations, entry = parse_module(hlo_text)
    xla, hbm = _Walk(computations).computation(entry)
    return {"xla rules bytes": xla, "hbm bytes": hbm}
