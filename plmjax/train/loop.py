"""The training loop (`train`) and checkpoint evaluation (`evaluate`): plain Python called with plain values.

The gin entry points that bind these arguments (t5x's rule: only the edges are configurable) are in
`plmjax.launch`; a fine-tuning run's official scoring (`plmjax.evaluation`, which sits above the trainer) comes
in as `finetune_evaluator`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import optax

from plmjax import sharding
from plmjax.data import feature_converters, pipeline
from plmjax.train import adapter as adapter_lib
from plmjax.train import checkpoint as checkpoint_lib
from plmjax.train import evaluate as evaluate_lib
from plmjax.train import faults
from plmjax.train import fill_mask_examples
from plmjax.train import init as init_lib
from plmjax.train import metrics as metrics_lib
from plmjax.train import optim
from plmjax.train import quantized as quantized_lib
from plmjax.train import saved_model
from plmjax.train import state as state_lib
from plmjax.train import step as step_lib
from plmjax.train.setup import ConfigError, RunSetup, check_vocabulary, is_finetune_run, setup

# Fault injection for the tests: make the float features (loss weights) of these steps ('6' or '6,7,8') NaN; the
# kill -9 points are `faults.CrashPoint`'s (PLMJAX_TEST_CRASH_AT, PLMJAX_TEST_CRASH_AFTER_STEP).
_NAN_AT_STEPS = {int(s) for s in os.environ.get("PLMJAX_TEST_NAN_AT_STEPS", "").split(",") if s.strip()}


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()  # a setting the gin files must bind (train.task, ...): `plmjax.launch` maps it to gin's


def _check_required(entry_point: str, **settings) -> None:
    missing = [name for name, value in settings.items() if value is REQUIRED]
    if missing:
        raise ConfigError(f"{entry_point} needs {', '.join(f'{entry_point}.{m}' for m in missing)}: include a model "
                          "file (gin_configs/models/), an objective file (gin_configs/objectives/) and a run file "
                          "(gin_configs/runs/), or an experiment file that includes them.")


# A fine-tuning run's scorer: (params, run, task, split, *, batch_size, out_dir, checkpoint, param_shardings)
# -> {metric: value}; `plmjax.evaluation.evaluate_params`.
FinetuneEvaluator = Callable[..., dict]


def _config_dict(run: RunSetup, operative_config: Optional[Callable[[], str]], input_sharding: str) -> dict:
    config = run.model_config
    return {"model_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else str(config),
            "architecture": run.architecture, "head_options": run.head_options, "peft": run.peft,
            "input_sharding": input_sharding, "operative_gin": operative_config() if operative_config else ""}


def _check_data_order(checkpointer, meta: dict, input_sharding: str, data_position: int, allow: bool) -> None:
    """A resume on another process count (or input sharding) must not silently read another data stream: with
    'shard' each process read its own shard, so the batches the run would see next depend on the process count
    (with 'slice' they do not). Raises ConfigError, or with `allow` prints one line and goes on."""
    step, count = int(meta["step"]), jax.process_count()
    writers = checkpointer.data_writers(step)
    mode = meta.get("config", {}).get("input_sharding", input_sharding)
    if writers is None or max(writers, count) == 1 or (
            writers == count and mode == input_sharding) or (mode == input_sharding == "slice"):
        return
    what = (f"Checkpoint {checkpointer.directory}/{step} was written by {writers} process(es) with "
            f"train.input_sharding='{mode}'; resuming it with {count} process(es) and '{input_sharding}' reads "
            f"another data order from batch {data_position + 1} on ('shard': each process reads its own shard of "
            "the data)")
    if not allow:
        raise ConfigError(f"{what}, so the run would not continue as it began. Resume with {writers} processes and "
                          f"'{mode}'; or accept the new data order with train.allow_data_order_change = True. "
                          "(Runs started with train.input_sharding='slice' resume exactly on any process count.)")
    print(f"{what}: going on (train.allow_data_order_change = True).", flush=True)


def _finetune_scorer(run: RunSetup, finetune_evaluator: Optional[FinetuneEvaluator]) -> FinetuneEvaluator:
    if finetune_evaluator is None:
        raise ConfigError(f"Fine-tuning runs ({run.architecture!r}, objective {run.objective.name!r}) are scored with "
                          "the task's official metrics: run them through `plmjax train` / plmjax.launch.train, or "
                          "pass finetune_evaluator=plmjax.evaluation.evaluate_params.")
    return finetune_evaluator


def _evaluate_run(run: RunSetup, eval_fn, params, task: str, split: str, num_batches: Optional[int],
                  model_dir: str, final: bool, param_shardings=None, finetune_evaluator=None) -> dict[str, float]:
    """The run's evaluation, during training (`eval_every`) and at its end.

    Fine-tuning runs are scored with the task's official metrics over the whole split
    (`plmjax.evaluation.run.evaluate_params`); the final evaluation also writes the results table and the
    submission file under `model_dir/eval`. Pre-training runs report the objective's metrics on `num_batches`.
    """
    if is_finetune_run(run):
        return _finetune_scorer(run, finetune_evaluator)(
            params, run, task, split, out_dir=os.path.join(model_dir, "eval") if final else None,
            checkpoint=model_dir, param_shardings=param_shardings)
    results = eval_fn(params, task, split, num_batches)
    if final:
        results.update(evaluate_lib.most_frequent_token_baseline(
            task, run, split_train="train", split_eval=split, num_batches=num_batches))
    return results


def train(
    model_dir: str,
    *,
    model_config=REQUIRED,
    architecture: str = REQUIRED,
    objective: str = REQUIRED,
    task: str = REQUIRED,
    task_feature_lengths: Mapping[str, int] = REQUIRED,
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
    peft_options: Any = None,
    length_buckets: Optional[Sequence[int]] = None, pack: bool = False,
    logical_axis_rules: Optional[Sequence] = None,
    finetune_evaluator: Optional[FinetuneEvaluator] = None,
    operative_config: Optional[Callable[[], str]] = None,
    nonfinite: str = "stop",
    max_consecutive_skips: int = 10,
    preemption_grace_s: float = 120.0,
    allow_data_order_change: bool = False,
    distill: Any = None,
    two_stage: Any = None,
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
    pack: seqio packing, several examples per row with segment ids (the families of feature_converters.PACKABLE).
    peft_options: the PEFT method's options dataclass (gin: `lora.rank = 8`, ...); default its defaults.
    logical_axis_rules: the logical-axis -> mesh-axes table (default `sharding.LOGICAL_AXIS_RULES`; gin:
      `train.logical_axis_rules = @logical_axis_rules()`).
    finetune_evaluator: scores a fine-tuning run with the task's official metrics (plmjax.evaluation).
    operative_config: returns the run's configuration text, written to `model_dir/config.gin`.
    nonfinite: a step whose loss or gradient norm is not finite is never applied; 'stop' (default) then raises
      `faults.NonFiniteError` naming the step, at the next log or checkpoint step and before any checkpoint
      after it; 'skip' goes on, counting `skipped_steps` (metrics, summary), and raises after more than
      `max_consecutive_skips` in a row.
    preemption_grace_s: SIGTERM or a first Ctrl-C ends the run after the current step with a synchronous
      checkpoint of it (`faults.Preempted`; `plmjax train` exits with status 75); if that takes longer than
      this, the process exits with status 76. docs/reliability.md.
    allow_data_order_change: resuming a checkpoint written by another number of processes with
      input_sharding='shard' (or with the other input_sharding) reads the data in another order from there on:
      by default that is an error; True prints one line and goes on.
    distill: a TinyBERT run (`plmjax.compression.distill.DistillRun`; gin `train.distill = @distill()`): the
      frozen teacher (read from `distill.teacher_checkpoint`) and the student (the run's model, initialized from
      `init_checkpoint`) in one step; the student is evaluated alone and written to `model_dir/student`.
    two_stage: bert2BERT's two-stage pre-training of a grown encoder (`plmjax.compression.two_stage.TwoStage`; gin
      `train.two_stage = @two_stage()`, `two_stage.block_layers`, `two_stage.stage1_steps`): the first
      `stage1_steps` steps each train a sampled sub-model's top block and the MLM head, the rest the full model.
    """
    _check_required("train", model_config=model_config, architecture=architecture, objective=objective, task=task,
                    task_feature_lengths=task_feature_lengths)
    faults.check_settings(nonfinite, max_consecutive_skips, preemption_grace_s)
    if length_buckets and jax.process_count() > 1 and input_sharding != "slice":
        raise ConfigError("train.length_buckets with several processes needs train.input_sharding='slice' (with "
                          "'shard' each host would bucket its own examples and run different shapes).")
    if input_sharding not in ("shard", "slice"):
        raise ConfigError(f"train.input_sharding={input_sharding!r}: use 'shard' or 'slice'.")
    if two_stage is not None:
        two_stage.check(model_config, architecture, objective, num_steps, peft=peft, distill=distill)
    start = time.time()
    mesh = mesh if mesh is not None else sharding.create_mesh()
    run = setup(model_config, architecture, objective, task_feature_lengths, mesh, task=task, peft=peft,
                peft_options=peft_options, rules=logical_axis_rules, distill=distill)
    check_vocabulary(task, model_config)
    converter = feature_converters.make_feature_converter(run.objective.feature_converter, pack=pack)  # may refuse
    if is_finetune_run(run):
        _finetune_scorer(run, finetune_evaluator)
    tx, schedule = optimizer if optimizer is not None else optim.make_optimizer(total_steps=num_steps)
    if peft:
        from plmjax import peft as peft_lib
        tx = peft_lib.optimizer(tx)  # optax.multi_transform: set_to_zero on the frozen parameters
    if distill is not None:
        from plmjax.compression import distill as distill_lib
        tx = distill_lib.optimizer(tx)  # set_to_zero on the teacher
    if two_stage is not None:
        from plmjax.compression import two_stage as two_stage_lib
        tx = two_stage_lib.optimizer(tx, two_stage, model_config)  # only the trained groups, each its own count
    faults.lock_model_dir(model_dir)  # creates it; a second run on it refuses (released at the end)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(model_dir, "checkpoints"), max_to_keep=keep_checkpoints)

    abstract, shardings = state_lib.state_shardings(run.module, tx, architecture, run.task_feature_lengths, mesh,
                                                    run.rules)
    data_position, data_state = 0, None
    crash = faults.CrashPoint.from_env()  # the tests' kill -9 points (none in a user's run)
    checkpointer.move_unfinished_saves_aside()  # a crashed save: one line each, kept aside
    if checkpointer.latest_step() is not None:
        state, meta, data_state = checkpointer.restore_newest_good(
            abstract_state=abstract, config=_config_dict(run, operative_config, input_sharding))
        data_position = int(meta["data_position"])
        _check_data_order(checkpointer, meta, input_sharding, data_position, allow_data_order_change)
        print(f"Resumed from {checkpointer.directory} at step {meta['step']} (batch {data_position}).", flush=True)
        crash.at("restore", int(meta["step"]))
    else:
        state, shardings = state_lib.create_train_state(run.module, tx, architecture, run.task_feature_lengths,
                                                        mesh, seed, run.rules)
        if distill is not None:
            state = init_lib.init_from_checkpoint(state, shardings, tx, distill.teacher_checkpoint,
                                                  architecture=architecture, model_config=distill.teacher_config,
                                                  under=("teacher",))
        if init_checkpoint:
            state = init_lib.init_from_checkpoint(state, shardings, tx, init_checkpoint, architecture=architecture,
                                                  model_config=model_config, peft=peft,
                                                  under=("student",) if distill is not None else ())
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(operative_config() if operative_config else "")

    train_step = step_lib.jit_train_step(run.module, run.objective, tx, schedule, mesh, shardings,
                                         grad_accum_steps=grad_accum_steps, rules=run.rules, two_stage=two_stage)
    # The saved iterator state continues the stream where it stopped; without one (a checkpoint written before
    # plmjax saved it, or by another number of processes) the consumed batches are read again and dropped.
    batches = pipeline.DataIterator(pipeline.get_dataset(task, task_feature_lengths=run.task_feature_lengths,
        feature_converter=converter, split="train", batch_size=batch_size, shuffle=True, seed=seed,
        shard_info=sharding.host_shard_info() if input_sharding == "shard" else None, length_buckets=length_buckets,
        skip_batches=0 if data_state is not None else data_position))
    if data_state is not None:
        batches.restore(data_state)
    eval_fn = evaluate_lib.make_eval_fn(run, shardings.params)
    evaluated = _evaluated(run, shardings.params)

    writer = metrics_lib.MetricsWriter(model_dir)
    step = int(jax.device_get(state.step))  # the one read of the device step; the loop counts on the host
    bar = metrics_lib.ProgressBar(total=num_steps, initial=step, enabled=progress)
    totals = None
    last_log, tokens_since, examples_since = time.time(), 0, 0
    last_train: dict[str, float] = {}
    monitor = faults.NonFiniteMonitor(nonfinite, max_consecutive_skips)
    last_good = lambda: _last_checkpoint(checkpointer)  # noqa: E731
    save = lambda: checkpointer.save(step, state, data_position=data_position,  # noqa: E731
                                     config=_config_dict(run, operative_config, input_sharding),
                                     data_state=batches.state())
    with faults.PreemptionWatcher(preemption_grace_s, checkpointer.reached_preemption) as watcher:
        while step < num_steps:
            batch = next(batches)
            if input_sharding == "slice":  # every host read the global batch: keep this host's rows
                batch = sharding.host_rows(batch, mesh, run.rules)
            data_position += 1
            if step + 1 in _NAN_AT_STEPS:  # fault injection for the non-finite tests
                batch = faults.poison_batch(batch)
            state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh, run.rules))
            step += 1
            monitor.add(step, step_metrics.pop("nonfinite"))
            totals = metrics_lib.accumulate(totals, step_metrics, batch)  # + the batch's padding_fraction
            tokens_since += batch_size * max(value.shape[-1] for value in batch.values())  # global batch
            examples_since += batch_size
            checkpoint_due = step % checkpoint_every == 0 or step == num_steps
            if step % log_every == 0 or checkpoint_due:  # never a checkpoint after an unchecked step
                monitor.check(last_good)
            if step % log_every == 0 or step == num_steps:  # the only place the loop waits for the devices
                last_train = metrics_lib.reduce_metrics(totals)
                if nonfinite == "skip":
                    last_train["skipped_steps"] = monitor.skipped
                elapsed = time.time() - last_log
                last_train["tokens_per_second"] = tokens_since / max(elapsed, 1e-9)
                last_train["examples_per_second"] = examples_since / max(elapsed, 1e-9)
                writer.write(step, "train", last_train)
                bar.update(step, last_train)
                totals, last_log, tokens_since, examples_since = None, time.time(), 0, 0
            else:
                bar.update(step)
            if eval_every and step % eval_every == 0 and step != num_steps:
                writer.write(step, eval_split, _evaluate_run(
                    evaluated.run, eval_fn, evaluated.params(state.params), task, eval_split, eval_batches, model_dir,
                    final=False, param_shardings=evaluated.shardings, finetune_evaluator=finetune_evaluator))
            if checkpoint_due and save():
                crash.at("save", step)
            crash.at("step", step)
            if watcher.should_stop(step):
                _stop_preempted(step, monitor, last_good, watcher.signal_name, save, checkpointer, bar)
    bar.close()
    checkpointer.wait()

    final = _evaluate_run(evaluated.run, eval_fn, evaluated.params(state.params), task, eval_split, eval_batches,
                          model_dir, final=True, param_shardings=evaluated.shardings,
                          finetune_evaluator=finetune_evaluator)
    if distill is not None and distill.method == "dynabert" and is_finetune_run(run.student):
        from plmjax.train import subnetworks
        subnetworks.evaluate_subnetworks(run, state.params, task, eval_split,
                                         _finetune_scorer(run, finetune_evaluator), os.path.join(model_dir, "eval"))
    saved = adapter_lib.save_run_adapter(model_dir, state.params, peft) if peft else {}  # every process writes
    if distill is not None:
        saved = _save_student(model_dir, run, state.params)
        if distill.method == "dynabert":
            saved["subnetworks"] = os.path.join(model_dir, "eval", "subnetworks.md")
    writer.write(step, eval_split, final)
    writer.close()
    curve = os.path.join(model_dir, "loss_curve.png")
    summary = {
        "steps": step,
        "skipped_steps": monitor.skipped if nonfinite == "skip" else None,
        "wall_time_s": round(time.time() - start, 1),
        "train_loss": last_train.get("loss"),
        f"{eval_split}_loss": final.get("loss"),
        f"{eval_split}_accuracy": final.get("accuracy"),
        "most_frequent_token_accuracy": final.get("most_frequent_token_accuracy"),
        **saved,
        "checkpoint": checkpointer.directory,
        "metrics": writer.jsonl_path,
        "tensorboard": writer.tensorboard_dir,
        "loss_curve": curve,
    }
    summary = {key: value for key, value in summary.items() if value is not None}
    examples = None if is_finetune_run(run) or distill is not None else fill_mask_examples.fill_mask_examples(
        run, state.params, task, eval_split)
    if examples:
        summary["fill_mask_examples"] = examples
    if jax.process_index() == 0:  # the files of the run (the adapter and checkpoints: Orbax, all processes)
        metrics_lib.plot_loss_curve(writer.jsonl_path, curve)
        print(_format_summary({k: v for k, v in summary.items() if k != "fill_mask_examples"}))
        if examples:
            print(fill_mask_examples.format_examples(examples))
        with open(os.path.join(model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    faults.unlock_model_dir(model_dir)
    return final


@dataclasses.dataclass
class _Evaluated:
    """What a run evaluates: its own model, or a distillation run's student alone (task distillation: the
    student's official scores; general distillation: the pair's losses on held-out batches)."""
    run: RunSetup
    shardings: Any
    under: Optional[str] = None

    def params(self, params):
        return params[self.under] if self.under else params


def _evaluated(run: RunSetup, param_shardings) -> _Evaluated:
    if run.student is not None and is_finetune_run(run.student):
        return _Evaluated(run.student, param_shardings["student"], "student")
    return _Evaluated(run, param_shardings)


def _save_student(model_dir: str, run: RunSetup, params) -> dict:
    """A distillation run's student alone, as a checkpoint every command loads (`model_dir/student`), and for a
    quantized student its packed low-bit weights (`model_dir/student/packed.npz`)."""
    from plmjax.compression import distill as distill_lib
    directory = os.path.join(model_dir, "student")
    student = run.student
    settings = run.distill
    how = "DynaBERT adaptive training" if settings.method == "dynabert" else f"TinyBERT {settings.stage} distillation"
    source = f"{how} of {settings.teacher_checkpoint}"
    quantized = {"quantize": {"method": settings.quantize, "activation_bits": settings.activation_bits,
                              "clip": settings.clip}} if settings.quantize else {}
    saved_model.save_model(directory, student.architecture, student.model_config, params[distill_lib.STUDENT],
                           metadata={"head_options": student.head_options, "source": source, **quantized},
                           header=f"The student of {os.path.abspath(model_dir)} ({source}).", replace=True)
    saved = {"student": directory}
    if settings.quantize:  # the real low-bit file beside the latent weights, written by process 0
        from jax.experimental import multihost_utils

        from plmjax.compression import packing
        packed = os.path.join(directory, "packed.npz")
        weights = multihost_utils.process_allgather(params[distill_lib.STUDENT], tiled=True)  # every process calls
        sizes = packing.export_packed(packed, weights, settings.quantize, settings.clip) if (
            jax.process_index() == 0) else {"packed_bytes": 0, "float32_bytes": 0}
        saved.update(student_packed=packed, **sizes)
    if settings.quantize and jax.process_index() == 0:
        print(f"Packed {settings.quantize} student: {packed}, {sizes['packed_bytes']:,} bytes against "
              f"{sizes['float32_bytes']:,} in float32 (1/{sizes['float32_bytes'] / sizes['packed_bytes']:.1f}).",
              flush=True)
    if jax.process_index() == 0:
        print(f"Student saved to {directory} (load it with train.init_checkpoint / plmjax eval "
              f"--checkpoint={directory}).", flush=True)
    return saved


def _last_checkpoint(checkpointer: checkpoint_lib.Checkpointer) -> str:
    checkpointer.wait()
    latest = checkpointer.latest_step()
    return "(none yet)" if latest is None else os.path.join(checkpointer.directory, str(latest))


def _stop_preempted(step, monitor, last_good, signal_name, save, checkpointer, bar) -> None:
    """SIGTERM / Ctrl-C: checkpoint this step synchronously (when its steps were finite) and raise Preempted."""
    bar.close()
    monitor.check(last_good)
    save()  # False when this step was just saved
    checkpointer.wait()
    where = os.path.join(checkpointer.directory, str(step))
    if jax.process_index() == 0:
        print(f"Preempted ({signal_name}) after step {step}: checkpoint {where} written; run the same command "
              "again to resume from it.", flush=True)
    raise faults.Preempted(step, where, signal_name)


def evaluate(
    checkpoint: str,
    out_dir: Optional[str] = None,
    *,
    model_config=REQUIRED,
    architecture: str = REQUIRED,
    objective: str = REQUIRED,
    task: str = REQUIRED,
    task_feature_lengths: Mapping[str, int] = REQUIRED,
    split: str = "validation",
    batch_size: int = 32,
    eval_batches: int = 0,
    mesh=None,
    peft: Optional[str] = None,
    peft_options: Any = None,
    logical_axis_rules: Optional[Sequence] = None,
    finetune_evaluator: Optional[FinetuneEvaluator] = None,
    **unused_train_settings,
) -> dict[str, float]:
    """Evaluates the parameters of a checkpoint directory on a task split; prints and returns the metrics.

    `eval_batches=0` evaluates the whole split. A fine-tuning checkpoint is scored with the task's official
    metrics over the whole split, and the results table (Markdown, JSON) and the submission file are written to
    `out_dir` (default: `<checkpoint's model dir>/eval`).
    """
    _check_required("evaluate", model_config=model_config, architecture=architecture, objective=objective,
                    task=task, task_feature_lengths=task_feature_lengths)
    mesh = mesh if mesh is not None else sharding.create_mesh()
    run = setup(model_config, architecture, objective, task_feature_lengths, mesh, task=task, peft=peft,
                peft_options=peft_options, rules=logical_axis_rules)
    check_vocabulary(task, model_config)
    model_dir = quantized_lib.model_dir_of(checkpoint)  # a packed low-bit file: the saved model beside it
    checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_root(model_dir))
    step = checkpoint_lib.checkpoint_step(model_dir)
    metadata = checkpointer.read_metadata(step)
    saved = metadata.get("config") or {}
    run = quantized_lib.as_saved(run, saved, checkpoint)
    # Only the parameters are read, so any optimizer's checkpoint evaluates (optax.identity: no optimizer state).
    abstract, shardings = state_lib.state_shardings(run.module, optax.identity(), architecture,
                                                    run.task_feature_lengths, mesh, run.rules)
    if quantized_lib.is_packed(checkpoint):
        restored = {"params": quantized_lib.load_packed_params(checkpoint, saved, abstract.params, shardings.params)}
        meta = {"step": metadata.get("step")}
    else:
        restored, meta = checkpointer.restore(step=step, abstract_state={"params": abstract.params}, partial=True)
    if is_finetune_run(run):
        out_dir = out_dir or os.path.join(os.path.dirname(checkpoint_lib.checkpoint_root(model_dir)), "eval")
        results = _finetune_scorer(run, finetune_evaluator)(restored["params"], run, task, split,
                                                            batch_size=batch_size, out_dir=out_dir,
                                                            checkpoint=checkpoint, param_shardings=shardings.params)
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
