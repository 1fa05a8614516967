"""TPU chips' published peaks and the topologies libtpu compiles for without the hardware.

One table, one row per chip generation, each figure from Google Cloud's page for that chip (the page is the row's
`source`). The pages write HBM capacity as "GB" (v4's as "GiB"); HBM stacks come in binary sizes (a v5e holds two
8 GiB HBM2 stacks), so capacities are taken as GiB. Bandwidths are decimal GB/s as published.
"""

from __future__ import annotations

import dataclasses
import os

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published peak figures."""

    name: str
    bf16_tflops: float  # peak dense bfloat16 matmul TFLOP/s per chip
    hbm_gib: float  # HBM capacity per chip
    hbm_gbps: float  # HBM bandwidth per chip, GB/s (1e9 bytes/s)
    source: str

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * GIB)


CHIPS: dict[str, Chip] = {chip.name: chip for chip in (
    Chip("v4", 275.0, 32.0, 1200.0, "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB, 1200 GBps)"),
    Chip("v5e", 197.0, 16.0, 819.0, "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GB, 819 GBps)"),
    Chip("v5p", 459.0, 95.0, 2765.0, "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GB, 2765 GBps)"),
    Chip("v6e", 918.0, 32.0, 1638.0, "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB, 1638 GBps)"),
)}

# libtpu's accelerator-type names (what a TPU VM's metadata would say), by chip, from the number of chips.
_ACCELERATOR_TYPES = {"v4": "v4-{cores}", "v5e": "v5litepod-{chips}", "v5p": "v5p-{cores}", "v6e": "v6e-{chips}"}


def slice_name(chip: Chip, chips: int) -> str:
    """Google Cloud's name of a slice: v5e/v6e count chips (v5e-16), v4/v5p count TensorCores (v5p-128 = 64 chips)."""
    return f"{chip.name}-{2 * chips if chip.name in ('v4', 'v5p') else chips}"


def parse_topology(topology: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5e:4x4' -> (the v5e row, (4, 4)); a clear ValueError for anything else."""
    name, _, shape = topology.partition(":")
    try:
        dims = tuple(int(d) for d in shape.split("x"))
    except ValueError:
        dims = ()
    if name not in CHIPS or not dims or min(dims) < 1:
        raise ValueError(f"--topology {topology!r} is not '<chip>:<shape>' with chip one of {sorted(CHIPS)} and a "
                         "shape such as 4x4 (v5e, v6e: 2-D) or 4x4x4 (v4, v5p: 3-D), e.g. --topology v5e:4x4.")
    return CHIPS[name], dims


def topology_devices(topology: str) -> list:
    """The devices of a TPU slice, for ahead-of-time compilation on a machine without TPUs.

    Needs libtpu (`pip install 'jax[tpu]'`, plmjax's [tpu] extra). The environment variables keep libtpu from
    probing for TPU hardware and a metadata server, and from refusing to load while another process holds
    /tmp/libtpu_lockfile (values already set, e.g. on a TPU VM, are left alone).
    """
    chip, dims = parse_topology(topology)
    chips = 1
    for d in dims:
        chips *= d
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is used: skip libtpu's one-process lockfile
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", _ACCELERATOR_TYPES[chip.name].format(chips=chips, cores=2 * chips))
    from jax.experimental import topologies
    try:
        # v4 and v5p chips have two TensorCores: "megacore" makes each chip one device, as JAX meshes need.
        options = {"chip_config_name": "megacore"} if chip.name in ("v4", "v5p") else {}
        return list(topologies.get_topology_desc(topology, "tpu", **options).devices)
    except Exception as error:  # noqa: BLE001  libtpu missing or an unknown shape: say which and how to fix
        raise ValueError(f"Cannot get the TPU topology {topology!r} ({type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}). Install libtpu with "
                         "`pip install 'jax[tpu]'` (plmjax's [tpu] extra) and use a shape the chip comes in, e.g. "
                         "v5e:4x4, v5p:4x4x4.") from error


def devices_per_chip(devices) -> int:
    """JAX devices per chip: 1 (v5e, v6e; v4 and v5p in megacore mode, as `topology_devices` asks for)."""
    chips = len({tuple(d.coords) for d in devices})
    return len(devices) // chips
