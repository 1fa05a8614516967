"""A DynaBERT run's results: every (width, depth) sub-network of the trained student, cut out
(`compression.dynabert.extract`) and scored alone with the task's official metrics, as a width x depth table
(`<model_dir>/eval/subnetworks.{md,json}`), the code's evaluation of all sub-networks after training."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import numpy as np

from plmjax.compression import dynabert, dynabert_train


def evaluate_subnetworks(run, params, task: str, split: str, scorer: Callable, out_dir: str) -> dict[str, dict]:
    """{(w, d) name: the official scores} of every sub-network of `run.distill`'s multipliers; `run` is the
    DynaBERT run (its `student` the full model), `params` its {'teacher', 'student'} tree."""
    settings, student = run.distill, run.student
    weights = jax.tree.map(np.asarray, jax.device_get(params["student"]))
    options = dynabert_train.AdaptiveOptions(tuple(settings.width_mults), tuple(settings.depth_mults))
    results = {}
    for width, depth in options.subnetworks():
        config, sub_params = dynabert.extract(weights, student.model_config, width, depth)
        sub_run = dataclasses.replace(student, module=student.module.clone(config=config), model_config=config)
        results[dynabert_train.subnetwork_name(width, depth)] = {
            "width": width, "depth": depth, "parameters": int(sum(np.size(x) for x in jax.tree.leaves(sub_params))),
            **scorer(sub_params, sub_run, task, split)}
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "subnetworks.json"), "w") as f:
            json.dump(results, f, indent=2)
        table = format_table(results)
        with open(os.path.join(out_dir, "subnetworks.md"), "w") as f:
            f.write(table + "\n")
        print(table, flush=True)
    return results


def format_table(results: dict[str, dict]) -> str:
    """Markdown: one row per depth, one column per width, each cell the first official metric."""
    metric = next(k for k in next(iter(results.values())) if k not in ("width", "depth", "parameters",
                                                                      "num_examples"))
    widths = sorted({r["width"] for r in results.values()}, reverse=True)
    depths = sorted({r["depth"] for r in results.values()}, reverse=True)
    cell = {(r["width"], r["depth"]): r for r in results.values()}
    lines = [f"DynaBERT sub-networks: {metric} (parameters)", "",
             "| depth \\ width | " + " | ".join(f"{w:g}" for w in widths) + " |",
             "|---|" + "---|" * len(widths)]
    for d in depths:
        row = [f"{cell[(w, d)][metric]:.2f} ({cell[(w, d)]['parameters'] / 1e6:.2f}M)" if (w, d) in cell else "-"
               for w in widths]
        lines.append(f"| {d:g} | " + " | ".join(row) + " |")
    return "\n".join(lines)
