"""Compile time and step time of one model's train step on this machine (one device), e.g. scanned vs unrolled:

    python scripts/time_train_step.py --preset bert_base --steps 3              # layers unrolled
    python scripts/time_train_step.py --preset bert_base --steps 3 --scan_layers

Batch 8 x 128 of random MLM targets (15% predicted), AdamW, float32 unless --matmul_dtype=bfloat16. Prints the
first call (trace + compile + one step) and the median (min-max) of the steps after it.
"""
import argparse
import time

import jax
import numpy as np

from plmjax import models, objectives, sharding
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="bert_base", help="an encoder preset of plmjax.models.PRESETS")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--scan_layers", action="store_true")
    parser.add_argument("--matmul_dtype", default=None)
    args = parser.parse_args()
    overrides = {"scan_layers": True} if args.scan_layers else {}
    if args.matmul_dtype:
        overrides["matmul_dtype"] = args.matmul_dtype
    config = models.PRESETS[args.preset](**overrides)
    module = models.build_model("encoder", config)
    objective = objectives.get_objective("mlm")
    tx, schedule = optim.make_optimizer("adamw", learning_rate=1e-4, warmup_steps=10, total_steps=100)
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    lengths = {"inputs": args.length, "targets": args.length}
    state, shardings = state_lib.create_train_state(module, tx, "encoder", lengths, mesh, seed=0)
    rng = np.random.default_rng(0)
    targets = rng.integers(3, config.vocab_size, size=(args.batch_size, args.length)).astype(np.int32)
    selected = rng.random(targets.shape) < 0.15
    batch = sharding.shard_batch({"encoder_input_tokens": np.where(selected, 103, targets).astype(np.int32),
                                  "encoder_target_tokens": targets,
                                  "encoder_loss_weights": selected.astype(np.float32)}, mesh)
    train_step = step_lib.jit_train_step(module, objective, tx, schedule, mesh, shardings)
    start = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    layout = "scanned" if args.scan_layers else "unrolled"
    print(f"{args.preset} {layout}: first call {first:.1f} s, step {np.median(times):.3f} s "
          f"({min(times):.3f}-{max(times):.3f}, {args.steps} steps)")


if __name__ == "__main__":
    main()
