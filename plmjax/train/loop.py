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
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import optax
import seqio

from plmjax import objectives as objectives_lib
from plmjax import sharding
from plmjax.data import feature_converters, pipeline
from plmjax.train import checkpoint as checkpoint_lib
from plmjax.train import evaluate as evaluate_lib
from plmjax.train import init as init_lib
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
    architecture: str = ""
    head_options: dict[str, int] = dataclasses.field(default_factory=dict)  # num_labels / num_choices
    peft: Optional[str] = None  # the parameter-efficient tuning method wrapping the module, if any


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


def setup(model_config, architecture: str, objective: str, task_feature_lengths: Mapping[str, int], mesh, *,
          task: Optional[str] = None, peft: Optional[str] = None) -> RunSetup:
    """The module (with its task head and PEFT wrapper) and objective of a run. `task` gives a fine-tuning
    architecture its head options (`init.head_options`)."""
    objective_ = objectives_lib.get_objective(objective)
    if objective_.architecture != architecture:
        raise ConfigError(
            f"Objective {objective!r} trains {objective_.architecture!r} models, but the model gin file builds "
            f"an {architecture!r} model (MODEL_ARCH). Pick a matching model gin file or objective.")
    _check_lengths(model_config, architecture, task_feature_lengths)
    options = init_lib.head_options(architecture, objective, task)
    module = init_lib.build_module(architecture, model_config, options, peft)
    return RunSetup(module, objective_, model_config, mesh, dict(task_feature_lengths), architecture, options, peft)


def _config_dict(run: RunSetup) -> dict:
    config = run.model_config
    return {"model_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else str(config),
            "architecture": run.architecture, "head_options": run.head_options, "peft": run.peft,
            "operative_gin": gin.operative_config_str()}


def _is_finetune_run(run: RunSetup) -> bool:
    """A fine-tuning architecture, or a prompt-based objective on a plain model (PET on the MLM head)."""
    return init_lib.is_finetune(run.architecture) or run.objective.name == "pet"


def _evaluate_run(run: RunSetup, eval_fn, params, task: str, split: str, num_batches: Optional[int],
                  model_dir: str, final: bool, param_shardings=None) -> dict[str, float]:
    """The run's evaluation, during training (`eval_every`) and at its end.

    Fine-tuning runs are scored with the task's official metrics over the whole split
    (`plmjax.evaluation.run.evaluate_params`); the final evaluation also writes the results table and the
    submission file under `model_dir/eval`. Pre-training runs report the objective's metrics on `num_batches`.
    """
    if _is_finetune_run(run):
        from plmjax.evaluation import run as evaluation_run
        return evaluation_run.evaluate_params(params, run, task, split, out_dir=os.path.join(model_dir, "eval")
                                              if final else None, checkpoint=model_dir, param_shardings=param_shardings)
    results = eval_fn(params, task, split, num_batches)
    if final:
        results.update(evaluate_lib.most_frequent_token_baseline(
            task, run, split_train="train", split_eval=split, num_batches=num_batches))
    return results


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
    init_checkpoint: Optional[str] = None,
    peft: Optional[str] = None,
    length_buckets: Optional[Sequence[int]] = None,
) -> dict[str, float]:
    """Trains (or resumes) a model; returns the final evaluation metrics.

    Resuming is automatic: when `model_dir/checkpoints` holds a checkpoint, the run continues from it with
    the same parameters, optimizer state, rng and data position, so an interrupted run ends bit-identical to an
    uninterrupted one.

    input_sharding: 'shard' (each host reads only its part of the data, `seqio.ShardInfo`) or 'slice' (each
      host reads the global batch and keeps its rows: the same batches as one process, for small data and for
      checking that several processes train exactly like one).
    init_checkpoint: a converted or pre-trained checkpoint (`plmjax convert` / `plmjax train` output) whose
      parameters initialize the model (`init.init_from_checkpoint`); ignored when the run resumes.
    peft: 'lora' | 'adapter' | 'prompt_tuning' | 'prefix_tuning': wrap the model with `plmjax.peft.wrap`, train
      only the method's parameters (the rest stay bit-identical) and write them to `model_dir/adapter`.
    length_buckets: e.g. (16, 32, 64): batch similar-length examples and trim each batch to its bucket
      (`pipeline.get_dataset`); one compiled step per bucket. Several processes need input_sharding='slice'
      (every host then reads the same batch, so all hosts run the same shapes).
    """
    if length_buckets and jax.process_count() > 1 and input_sharding != "slice":
        raise ConfigError("train.length_buckets with several processes needs train.input_sharding='slice' (with "
                          "'shard' each host would bucket its own examples and run different shapes).")
    if input_sharding not in ("shard", "slice"):
        raise ConfigError(f"train.input_sharding={input_sharding!r}: use 'shard' or 'slice'.")
    start = time.time()
    mesh = mesh if mesh is not None else sharding.create_mesh()
    run = setup(model_config, architecture, objective, task_feature_lengths, mesh, task=task, peft=peft)
    _check_vocabulary(task, model_config)
    tx, schedule = optimizer if optimizer is not None else optim.make_optimizer(total_steps=num_steps)
    if peft:
        from plmjax import peft as peft_lib
        tx = peft_lib.optimizer(tx)  # optax.multi_transform: set_to_zero on the frozen parameters
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
        if init_checkpoint:
            state = init_lib.init_from_checkpoint(state, shardings, tx, init_checkpoint, architecture=architecture,
                                                  model_config=model_config, peft=peft)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.operative_config_str())

    train_step = step_lib.jit_train_step(run.module, run.objective, tx, schedule, mesh, shardings,
                                         grad_accum_steps=grad_accum_steps)
    dataset = pipeline.get_dataset(
        task, task_feature_lengths=run.task_feature_lengths, feature_converter=feature_converters.make_feature_converter(
            run.objective.feature_converter), split="train", batch_size=batch_size, shuffle=True, seed=seed,
        shard_info=sharding.host_shard_info() if input_sharding == "shard" else None, skip_batches=data_position,
        length_buckets=length_buckets)
    eval_fn = evaluate_lib.make_eval_fn(run, shardings.params)

    writer = metrics_lib.MetricsWriter(model_dir)
    bar = metrics_lib.ProgressBar(total=num_steps, initial=int(state.step), enabled=progress)
    totals = None
    last_log, tokens_since, examples_since = time.time(), 0, 0
    last_train: dict[str, float] = {}
    batches = dataset.as_numpy_iterator()
    while int(state.step) < num_steps:
        batch = next(batches)
        if input_sharding == "slice":  # every host read the global batch: keep this host's rows
            batch = sharding.host_rows(batch, mesh)
        data_position += 1
        state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh))
        totals = step_metrics if totals is None else metrics_lib.add_metrics(totals, step_metrics)
        tokens_since += batch_size * max(value.shape[-1] for value in batch.values())  # global batch, this length
        examples_since += batch_size
        step = int(state.step)
        if step % log_every == 0 or step == num_steps:
            last_train = metrics_lib.reduce_metrics(totals)
            elapsed = time.time() - last_log
            last_train["tokens_per_second"] = tokens_since / max(elapsed, 1e-9)
            last_train["examples_per_second"] = examples_since / max(elapsed, 1e-9)
            writer.write(step, "train", last_train)
            bar.update(step, last_train)
            totals, last_log, tokens_since, examples_since = None, time.time(), 0, 0
        else:
            bar.update(step)
        if eval_every and step % eval_every == 0 and step != num_steps:
            writer.write(step, eval_split, _evaluate_run(run, eval_fn, state.params, task, eval_split, eval_batches,
                                                         model_dir, final=False, param_shardings=shardings.params))
        if step % checkpoint_every == 0 or step == num_steps:
            checkpointer.save(step, state, data_position=data_position, config=_config_dict(run))
        if step == _CRASH_AFTER_STEP:  # fault injection for the kill-and-resume test
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    checkpointer.wait()

    final = _evaluate_run(run, eval_fn, state.params, task, eval_split, eval_batches, model_dir, final=True,
                          param_shardings=shardings.params)
    adapter = init_lib.save_adapter(model_dir, state.params, peft) if peft else {}
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
        **adapter,
        "checkpoint": checkpointer.directory,
        "metrics": writer.jsonl_path,
        "tensorboard": writer.tensorboard_dir,
        "loss_curve": curve,
    }
    summary = {key: value for key, value in summary.items() if value is not None}
    if jax.process_index() == 0:
        print(_format_summary(summary))
        with open(os.path.join(model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return final


@gin.configurable(denylist=["checkpoint", "out_dir"])
def evaluate(
    checkpoint: str,
    out_dir: Optional[str] = None,
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
    peft: Optional[str] = None,
    **unused_train_settings,
) -> dict[str, float]:
    """Evaluates the parameters of a checkpoint directory on a task split; prints and returns the metrics.

    `eval_batches=0` evaluates the whole split. A fine-tuning checkpoint is scored with the task's official
    metrics over the whole split, and the results table (Markdown, JSON) and the submission file are written to
    `out_dir` (default: `<checkpoint's model dir>/eval`).
    """
    mesh = mesh if mesh is not None else sharding.create_mesh()
    run = setup(model_config, architecture, objective, task_feature_lengths, mesh, task=task, peft=peft)
    _check_vocabulary(task, model_config)
    # Only the parameters are read, so any optimizer's checkpoint evaluates (optax.identity: no optimizer state).
    abstract, shardings = state_lib.state_shardings(run.module, optax.identity(), architecture,
                                                    run.task_feature_lengths, mesh)
    checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_root(checkpoint))
    restored, meta = checkpointer.restore(step=checkpoint_lib.checkpoint_step(checkpoint),
                                          abstract_state={"params": abstract.params}, partial=True)
    if _is_finetune_run(run):
        from plmjax.evaluation import run as evaluation_run
        out_dir = out_dir or os.path.join(os.path.dirname(checkpoint_lib.checkpoint_root(checkpoint)), "eval")
        results = evaluation_run.evaluate_params(restored["params"], run, task, split, batch_size=batch_size,
                                                 out_dir=out_dir, checkpoint=checkpoint,
                                                 param_shardings=shardings.params)
    else:
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
