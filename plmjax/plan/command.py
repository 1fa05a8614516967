"""`plmjax plan`: a gin experiment's train step compiled ahead of time for a TPU slice; memory, FLOPs, roofline.

    plmjax plan --gin_file=gin_configs/experiments/gpt2_small_lm.gin --topology=v5e:4x4 --mesh=data=16
    plmjax plan --gin_file=gin_configs/runs/pretrain.gin --gin_file=gin_configs/models/pangu_alpha_13b.gin \\
        --gin_file=gin_configs/objectives/causal_lm.gin --gin_param='SEQUENCE_LENGTH = 1024' \\
        --topology=v5p:4x4x4 --mesh=fsdp=16,tensor=4 --batch_size=256 --remat=full --out=plans.jsonl

The model, objective, feature lengths, batch size, optimizer and mesh come from the gin files as `plmjax train`
reads them (the `train.*` bindings, or the MODEL_CONFIG / MODEL_ARCH / OBJECTIVE / TASK_FEATURE_LENGTHS macros when
no run file is given); flags override the batch, the mesh, rematerialization and the dtypes. `run` returns the exit
status: 0 when the step fits the chip's HBM, 1 (after one message saying by how much and what to change) when not.
"""

from __future__ import annotations

import dataclasses
import json
import os

from plmjax import launch
from plmjax.sharding import MESH_AXES
from plmjax.models.config import DTYPES, REMAT_POLICIES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="compile the train step for a TPU slice ahead of time: memory, FLOPs, MFU")
    launch.add_gin_flags(p)
    p.add_argument("--topology", required=True, help="TPU slice as <chip>:<shape>, e.g. v5e:4x4 (v5e-16), "
                   "v5e:8x8 (v5e-64), v5p:4x4x4 (v5p-128: 64 chips), v6e:4x4, v4:2x2x2")
    p.add_argument("--mesh", default=None, help="mesh axis sizes, e.g. data=16, fsdp=16,tensor=4, data=4,expert=4 or "
                   "fsdp=16,stage=4 (unnamed axes are 1; one may be -1: the rest of the devices). Default: the gin "
                   "file's create_mesh bindings")
    p.add_argument("--batch_size", type=int, default=None, help="global batch (default: train.batch_size)")
    p.add_argument("--remat", choices=REMAT_POLICIES, default=None,
                   help="rematerialize each layer with this policy (default: the model config's remat_policy)")
    p.add_argument("--dtype", choices=DTYPES[:2], default="bfloat16", help="compute dtype (default bfloat16, as a "
                   "TPU run computes)")
    p.add_argument("--param_dtype", choices=DTYPES[:2], default="float32",
                   help="parameter and optimizer-state dtype (default float32: mixed precision)")
    p.add_argument("--out", default=None, help="append the plan as one JSON line to this file "
                   "(`python -m plmjax.plan.report FILE` prints the Markdown table of all of them)")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error")


def parse_mesh(text: str | None) -> dict[str, int] | None:
    """'fsdp=16,tensor=4' -> {'data': 1, 'fsdp': 16, 'tensor': 4}; None -> None."""
    if text is None:
        return None
    shape = dict.fromkeys(MESH_AXES, 1)
    for part in filter(None, text.split(",")):
        axis, _, size = part.partition("=")
        if axis.strip() not in shape or not size.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: expected comma-separated axis=size with axes {MESH_AXES}, "
                             "e.g. --mesh data=2,fsdp=8,tensor=4.")
        shape[axis.strip()] = int(size)
    return shape


def read_gin_run(gin_files: list[str], gin_params: list[str]) -> dict:
    """The run settings `plmjax train` would read from these gin files (the mesh as create_mesh's bindings)."""
    settings = launch.run_settings(gin_files, gin_params, MESH_AXES)
    settings.pop("task")  # the step's shapes come from the feature lengths; the data is never read
    if settings["rules"] is None:
        settings.pop("rules")
    return settings


def run(args) -> int:
    from plmjax.plan import aot, report
    settings = read_gin_run(args.gin_file, args.gin_param)
    overrides = {"dtype": args.dtype, "param_dtype": args.param_dtype}
    if args.remat is not None:
        overrides.update(remat_policy=args.remat)
    model_config = dataclasses.replace(settings.pop("model_config"), **overrides)
    settings["mesh_shape"] = parse_mesh(args.mesh) or settings["mesh_shape"]
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    plan = aot.plan_train_step(model_config, topology=args.topology, **settings)
    print(report.format_plan(plan))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(report.plan_record(plan)) + "\n")
    return 0 if plan.fits else 1
