"""The training loop and its gin entry points (`train`, `evaluate`).

gin binds only this edge (t5x's rule): the model preset, the objective's name, the seqio task, sequence
lengths, the optimizer builder and the mesh. Everything below is plain Python called with plain values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Mapping

import gin
import jax
import optax
import seqio

from plmjax import objectives as objectives_lib
from plmjax import sharding
from plmjax.data import feature_converters, pipeline
from plmjax.models import build_model
from plmjax.train import checkpoint as checkpoint_lib
from plmjax.train import evaluate as evaluate_lib
from plmjax.train import metrics as metrics_lib
from plmjax.train import optim
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib

create_mesh = gin.external_configurable(sharding.create_mesh, "create_mesh")
make_optimizer = gin.external_configurable(optim.make_optimizer, "make_optimizer")


# Kill this process (SIGKILL, no clean-up) right after this step: the kill-and-resume test's fault injection.
_CRASH_AFTER_STEP = int(os.environ.get("PLMJAX_TEST_CRASH_AFTER_STEP", "-1"))


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the gin binding to change."""


@dataclasses.dataclass
class RunSetup:
    """Everything `train` and `evaluate` build from the gin configuration."""

    module: Any
    objective: objectives_lib.Objective
    model_config: Any
    mesh: Any
    task_feature_lengths: dict[str, int]


def _check_lengths(config, architecture: str, lengths: Mapping[str, int]) -> None:
    for feature, length in lengths.items():
        if length > config.max_length:
            raise ConfigError(
                f"Sequence length {length} for feature {feature!r} is longer than the model allows "
                f"(max_length={config.max_length}). Lower train.task_feature_lengths['{feature}'] or raise the "
                f"preset's max_length (e.g. --gin_param='MODEL_CONFIG = @{architecture}_preset()' with a larger "
                f"max_length override).")


def _check_vocabulary(task_name: str, config) -> None:
    provider = seqio.get_mixture_or_task(task_name)
    for feature_name, feature in provider.output_features.items():
        size = feature.vocabulary.vocab_size
        if size > config.vocab_size:
            raise ConfigError(
                f"Task {task_name!r} feature {feature_name!r} has a vocabulary of {size} tokens but the model's "
                f"vocab_size is {config.vocab_size}: set vocab_size >= {size} in the model preset (gin macro "
                "VOCAB_SIZE or the preset's vocab_size).")


def setup(model_config, architecture: str, objective: str, task_feature_lengths: Mapping[str, int], mesh) -> RunSetup:
    objective_ = objectives_lib.get_objective(objective)
    if objective_.architecture != architecture:
        raise ConfigError(
            f"Objective {objective!r} trains {objective_.architecture!r} models, but the model gin file builds "
            f"an {architecture!r} model (MODEL_ARCH). Pick a matching model gin file or objective.")
    _check_lengths(model_config, architecture, task_feature_lengths)
    module = build_model(architecture, model_config)
    return RunSetup(module, objective_, model_config, mesh, dict(task_feature_lengths))


def _config_dict(model_config) -> dict:
    return {"model_config": dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config)
            else str(model_config), "operative_gin": gin.operative_config_str()}


@gin.configurable(denylist=["model_dir"])
def train(
    model_dir: str,
    *,
    model_config=gin.REQUIRED,
    architecture: str = gin.REQUIRED,
    objective: str = gin.REQUIRED,
    task: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = 32,
    num_steps: int = 1000,
    optimizer=None,
    mesh=None,
    seed: int = 0,
    grad_accum_steps: int = 1,
    log_every: int = 50,
    eval_every: int = 0,
    eval_batches: int = 20,
    eval_split: str = "validation",
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    progress: bool = True,
    input_sharding: str = "shard",
) -> dict[str, float]:
    """Trains (or resumes) a model; returns the final evaluation metrics.

    Resuming is automatic: when `model_dir/checkpoints` holds a checkpoint, the run continues from it with
    the same parameters, optimizer state, rng and data position, so an interrupted run ends bit-identical to an
    uninterrupted one.

    input_sharding: 'shard' (each host reads only its part of the data, `seqio.ShardInfo`) or 'slice' (each
      host reads the global batch and keeps its rows: the same batches as one process, for small data and for
      checking that several processes train exactly like one).
    """
    if input_sharding not in ("shard", "slice"):
        raise ConfigError(f"train.input_sharding={input_sharding!r}: use 'shard' or 'slice'.")
    start = time.time()
    mesh = mesh if mesh is not None else sharding.create_mesh()
    run = setup(model_config, architecture, objective, task_feature_lengths, mesh)
    _check_vocabulary(task, model_config)
    tx, schedule = optimizer if optimizer is not None else optim.make_optimizer(total_steps=num_steps)
    os.makedirs(model_dir, exist_ok=True)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(model_dir, "checkpoints"), max_to_keep=keep_checkpoints)

    abstract, shardings = state_lib.state_shardings(run.module, tx, architecture, run.task_feature_lengths, mesh)
    data_position = 0
    if checkpointer.latest_step() is not None:
        state, meta = checkpointer.restore(abstract_state=abstract)
        data_position = int(meta["data_position"])
        print(f"Resumed from {checkpointer.directory} at step {int(state.step)} (batch {data_position}).")
    else:
        state, shardings = state_lib.create_train_state(run.module, tx, architecture, run.task_feature_lengths,
                                                        mesh, seed)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.operative_config_str())

    train_step = step_lib.jit_train_step(run.module, run.objective, tx, schedule, mesh, shardings,
                                         grad_accum_steps=grad_accum_steps)
    dataset = pipeline.get_dataset(
        task, task_feature_lengths=run.task_feature_lengths, feature_converter=feature_converters.make_feature_converter(
            run.objective.feature_converter), split="train", batch_size=batch_size, shuffle=True, seed=seed,
        shard_info=sharding.host_shard_info() if input_sharding == "shard" else None, skip_batches=data_position)
    eval_fn = evaluate_lib.make_eval_fn(run, shardings.params)

    writer = metrics_lib.MetricsWriter(model_dir)
    bar = metrics_lib.ProgressBar(total=num_steps, initial=int(state.step), enabled=progress)
    totals = None
    last_log, tokens_since = time.time(), 0
    last_train: dict[str, float] = {}
    batches = dataset.as_numpy_iterator()
    while int(state.step) < num_steps:
        batch = next(batches)
        if input_sharding == "slice":  # every host read the global batch: keep this host's rows
            batch = sharding.host_rows(batch, mesh)
        data_position += 1
        state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh))
        totals = step_metrics if totals is None else metrics_lib.add_metrics(totals, step_metrics)
        tokens_since += batch_size * max(run.task_feature_lengths.values())
        step = int(state.step)
        if step % log_every == 0 or step == num_steps:
            last_train = metrics_lib.reduce_metrics(totals)
            elapsed = time.time() - last_log
            last_train["tokens_per_second"] = tokens_since * jax.process_count() / max(elapsed, 1e-9)
            writer.write(step, "train", last_train)
            bar.update(step, last_train)
            totals, last_log, tokens_since = None, time.time(), 0
        else:
            bar.update(step)
        if eval_every and step % eval_every == 0 and step != num_steps:
            writer.write(step, eval_split, eval_fn(state.params, task, eval_split, eval_batches))
        if step % checkpoint_every == 0 or step == num_steps:
            checkpointer.save(step, state, data_position=data_position, config=_config_dict(model_config))
        if step == _CRASH_AFTER_STEP:  # fault injection for the kill-and-resume test
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    checkpointer.wait()

    final = eval_fn(state.params, task, eval_split, eval_batches)
    baseline = evaluate_lib.most_frequent_token_baseline(
        task, run, split_train="train", split_eval=eval_split, num_batches=eval_batches)
    final.update(baseline)
    writer.write(int(state.step), eval_split, final)
    writer.close()
    curve = os.path.join(model_dir, "loss_curve.png")
    metrics_lib.plot_loss_curve(writer.jsonl_path, curve)
    summary = {
        "steps": int(state.step),
        "wall_time_s": round(time.time() - start, 1),
        "train_loss": last_train.get("loss"),
        f"{eval_split}_loss": final.get("loss"),
        f"{eval_split}_accuracy": final.get("accuracy"),
        "most_frequent_token_accuracy": final.get("most_frequent_token_accuracy"),
        "checkpoint": checkpointer.directory,
        "metrics": writer.jsonl_path,
        "tensorboard": writer.tensorboard_dir,
        "loss_curve": curve,
    }
    if jax.process_index() == 0:
        print(_format_summary(summary))
        with open(os.path.join(model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return final


@gin.configurable(denylist=["checkpoint"])
def evaluate(
    checkpoint: str,
    *,
    model_config=gin.REQUIRED,
    architecture: str = gin.REQUIRED,
    objective: str = gin.REQUIRED,
    task: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    split: str = "validation",
    batch_size: int = 32,
    eval_batches: int = 0,
    mesh=None,
    **unused_train_settings,
) -> dict[str, float]:
    """Evaluates the parameters of a checkpoint directory on a task split; prints and returns the metrics.

    `eval_batches=0` evaluates the whole split.
    """
    mesh = mesh if mesh is not None else sharding.create_mesh()
    run = setup(model_config, architecture, objective, task_feature_lengths, mesh)
    _check_vocabulary(task, model_config)
    # Only the parameters are read, so any optimizer's checkpoint evaluates (optax.identity: no optimizer state).
    abstract, shardings = state_lib.state_shardings(run.module, optax.identity(), architecture,
                                                    run.task_feature_lengths, mesh)
    checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_root(checkpoint))
    restored, meta = checkpointer.restore(step=checkpoint_lib.checkpoint_step(checkpoint),
                                          abstract_state={"params": abstract.params}, partial=True)
    eval_fn = evaluate_lib.make_eval_fn(run, shardings.params, batch_size=batch_size)
    results = eval_fn(restored["params"], task, split, eval_batches or None)
    if jax.process_index() == 0:
        print(json.dumps({"checkpoint": checkpoint, "step": meta["step"], "split": split, **results}, indent=2))
    return results


def _format_summary(summary: Mapping[str, Any]) -> str:
    width = max(len(k) for k in summary)
    lines = ["", "Summary", "-------"]
    for key, value in summary.items():
        value = f"{value:.4f}" if isinstance(value, float) else value
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)
