"""A teacher beside its compressed students (`scripts/compression_report.py`, `plmjax.interactive.compression_table`):
for each saved model, the task's official metric on a split, retention (metric / the teacher's), parameters, its
size as a float32 file (4 bytes a parameter: a `plmjax train` checkpoint also holds the optimizer state) and a
quantized student's packed low-bit file on disk, and forward-pass throughput (examples/s
at batch x length, min/median/max, the models timed round-robin in one process so they share the machine's load).

A checkpoint whose metadata has `quantize` (a TernaryBERT / BinaryBERT student, or a post-training baseline written
by `post_training_quantize`) is evaluated and timed through `compression.quantize.quantized_model`: the weights and
activations fake-quantized in float32, as it was trained (no low-bit kernels on CPU, so it is not faster).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Mapping, Optional

import jax
import numpy as np

from plmjax import models, sharding
from plmjax.compression import packing, quantize
from plmjax.models import finetune as finetune_models
from plmjax.train import saved_model
from plmjax.train.setup import setup


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _module(saved):
    module = models.build_model(saved.architecture, saved.config, **(saved.metadata.get('head_options') or {}))
    return quantize.as_saved(module, saved.metadata)


def post_training_quantize(checkpoint: str, out_dir: str, method: str = 'int8',
                           activation_bits: Optional[int] = None) -> dict:
    """The simple baselines: `checkpoint`'s weights unchanged, quantized at every apply (`method` weights;
    activations at `activation_bits`, None: weight-only), written as a saved model whose metadata says so, with
    its packed file (`out_dir/packed.npz`). Returns the packed and float32 sizes."""
    saved = saved_model.load_saved_model(checkpoint)
    metadata = {'head_options': saved.metadata.get('head_options'), 'source': f'{method} post-training of '
                f'{os.path.abspath(checkpoint)}', 'quantize': {'method': method, 'activation_bits': activation_bits,
                                                               'clip': quantize.CLIP}}
    if os.path.isdir(os.path.join(out_dir, 'checkpoints')):  # written before: the same baseline is reused
        before = saved_model.load_saved_model(out_dir).metadata
        if {k: before.get(k) for k in metadata} != metadata:
            raise ValueError(f'{out_dir} already holds another model ({before.get("source")!r}); give another '
                             f'out_dir for the {method} baseline of {checkpoint}.')
    else:
        saved_model.save_model(out_dir, saved.architecture, saved.config, saved.params, metadata=metadata,
                               header=f'{method} post-training quantization of {os.path.abspath(checkpoint)}.')
    return packing.export_packed(os.path.join(out_dir, 'packed.npz'), saved.params, method)


def report(checkpoints: Mapping[str, str], task: str, split: str = 'validation', *, sequence_length: int = 64,
           batch_size: int = 32, repeats: int = 5, steps: int = 3, eval_batch_size: int = 32) -> list[dict]:
    """One row per checkpoint (the first is the teacher: retention and speed are relative to it)."""
    from plmjax import evaluation
    mesh = sharding.create_mesh(devices=jax.devices()[:1])
    loaded, rows = {}, []
    for name, path in checkpoints.items():
        saved = saved_model.load_saved_model(path)
        run = setup(saved.config, saved.architecture, 'classification', {'inputs': sequence_length}, mesh, task=task)
        run = dataclasses.replace(run, module=_module(saved))
        scores = evaluation.evaluate_params(saved.params, run, task, split, batch_size=eval_batch_size)
        packed = os.path.join(os.path.dirname(saved.checkpoint), 'packed.npz')
        parameters = packing.parameter_count(saved.params)  # the deployed model's (a split model's twins not)
        rows.append({'name': name, 'checkpoint': path, **scores, 'parameters': parameters,
                     'float32_bytes': parameters * 4,
                     'checkpoint_bytes': directory_bytes(os.path.join(saved.checkpoint, str(saved.step))),
                     'packed_bytes': os.path.getsize(packed) if os.path.exists(packed) else None,
                     'quantize': (saved.metadata.get('quantize') or {}).get('method')})
        loaded[name] = (run.module, saved)
    metric = next(k for k in rows[0] if k not in ('name', 'checkpoint', 'num_examples'))
    for row in rows:
        row['metric'] = metric
        row['retention'] = row[metric] / rows[0][metric]
    for row, rates in zip(rows, throughput(loaded, batch_size, sequence_length, repeats, steps)):
        row['examples_per_s'] = {'median': statistics.median(rates), 'min': min(rates), 'max': max(rates)}
        row['speedup'] = row['examples_per_s']['median'] / rows[0]['examples_per_s']['median']
    return rows


def throughput(loaded: Mapping[str, tuple], batch_size: int, length: int, repeats: int, steps: int) -> list[list]:
    """examples/s of each model's jitted forward pass on random ids, `repeats` rounds, the models in turn each
    round (a load that changes during the run touches every model alike)."""
    calls = []
    for module, saved in loaded.values():
        tokens = jax.random.randint(jax.random.key(0), (batch_size, min(length, saved.config.max_length)), 5,
                                    saved.config.vocab_size)
        forward = jax.jit(lambda p, x, m=module: finetune_models.head_outputs(m.apply({'params': p}, x,
                                                                                 deterministic=True)))
        params = jax.device_put(saved.params)
        jax.block_until_ready(forward(params, tokens))  # compile
        calls.append(lambda f=forward, p=params, x=tokens: jax.block_until_ready(f(p, x)))
    rates = [[] for _ in calls]
    for _ in range(repeats):
        for call, out in zip(calls, rates):
            start = time.perf_counter()
            for _ in range(steps):
                call()
            out.append(steps * batch_size / (time.perf_counter() - start))
    return rates


def markdown(rows: list[dict]) -> str:
    metric = rows[0]['metric']
    lines = [f'| model | {metric} | retention | parameters | float32 MB | packed MB | examples/s | x teacher |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        e = r['examples_per_s']
        packed = '-' if r['packed_bytes'] is None else f"{r['packed_bytes'] / 2 ** 20:.2f}"
        lines.append(f"| {r['name']} | {r[metric]:.2f} | {100 * r['retention']:.1f}% | {r['parameters'] / 1e6:.2f}M "
                     f"| {r['float32_bytes'] / 2 ** 20:.2f} | {packed} | {e['median']:.1f} ({e['min']:.1f}-"
                     f"{e['max']:.1f}) | {r['speedup']:.2f}x |")
    return '\n'.join(lines)
