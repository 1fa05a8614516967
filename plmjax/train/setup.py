"""A run's setup: the module (task head, PEFT wrapper), objective, mesh and sharding rules it trains, evaluates or
plans, built from plain values (the gin entry points in `plmjax.launch` pass them in). The trainer, evaluation
and `plmjax plan` share it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import seqio

from plmjax import objectives as objectives_lib
from plmjax import sharding
from plmjax.train import init as init_lib


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the gin binding to change."""


@dataclasses.dataclass
class RunSetup:
    """Everything a run builds from its configuration."""

    module: Any
    objective: objectives_lib.Objective
    model_config: Any
    mesh: Any
    task_feature_lengths: dict[str, int]
    architecture: str = ""
    head_options: dict[str, int] = dataclasses.field(default_factory=dict)  # num_labels / num_choices
    peft: Optional[str] = None  # the parameter-efficient tuning method wrapping the module, if any
    rules: tuple = sharding.LOGICAL_AXIS_RULES  # logical axis name -> mesh axes (gin: logical_axis_rules)
    distill: Any = None  # a TinyBERT run's `compression.distill.DistillRun`: `module` is the teacher/student pair
    student: Optional["RunSetup"] = None  # a distillation run's student alone, with the run's own objective


def check_lengths(config, architecture: str, lengths: Mapping[str, int]) -> None:
    for feature, length in lengths.items():
        if length > config.max_length:
            raise ConfigError(
                f"Sequence length {length} for feature {feature!r} is longer than the model allows "
                f"(max_length={config.max_length}). Lower train.task_feature_lengths['{feature}'] or raise the "
                f"preset's max_length (e.g. --gin_param='MODEL_CONFIG = @{architecture}_preset()' with a larger "
                f"max_length override).")


def check_vocabulary(task_name: str, config) -> None:
    provider = seqio.get_mixture_or_task(task_name)
    for feature_name, feature in provider.output_features.items():
        size = feature.vocabulary.vocab_size
        if size > config.vocab_size:
            raise ConfigError(
                f"Task {task_name!r} feature {feature_name!r} has a vocabulary of {size} tokens but the model's "
                f"vocab_size is {config.vocab_size}: set vocab_size >= {size} in the model preset (gin macro "
                "VOCAB_SIZE or the preset's vocab_size).")


def setup(model_config, architecture: str, objective: str, task_feature_lengths: Mapping[str, int], mesh, *,
          task: Optional[str] = None, peft: Optional[str] = None, peft_options: Any = None,
          rules=None, distill=None) -> RunSetup:
    """The module (with its task head and PEFT wrapper) and objective of a run. `task` gives a fine-tuning
    architecture its head options (`init.head_options`); `peft_options` the PEFT method's hyper-parameters
    (default: the method's defaults); `distill` (a `compression.distill.DistillRun`) makes it a TinyBERT run:
    the model is the teacher/student pair and the objective the stage's distillation loss."""
    objective_ = objectives_lib.get_objective(objective)
    if objective_.architecture != architecture:
        raise ConfigError(
            f"Objective {objective!r} trains {objective_.architecture!r} models, but the model gin file builds "
            f"an {architecture!r} model (MODEL_ARCH). Pick a matching model gin file or objective.")
    check_lengths(model_config, architecture, task_feature_lengths)
    options = init_lib.head_options(architecture, objective, task)
    module = init_lib.build_module(architecture, model_config, options, peft, peft_options)
    run = RunSetup(module, objective_, model_config, mesh, dict(task_feature_lengths), architecture, options, peft,
                   tuple(rules) if rules is not None else sharding.LOGICAL_AXIS_RULES)
    return run if distill is None else _distillation_run(run, distill)


def _distillation_run(student: RunSetup, settings) -> RunSetup:
    """The TinyBERT pair of `student`'s model and the teacher of `settings` (`compression.distill.DistillRun`)."""
    from plmjax.compression import distill
    settings.check()
    if student.peft:
        raise ConfigError("train.distill and train.peft cannot be combined: distil the student first, then tune it.")
    general = settings.stage == "general" and settings.method == "tinybert"
    expected = ("encoder", "mlm") if general else ("encoder_classifier", student.objective.name)
    if (student.architecture, student.objective.name) != expected or (
            not general and expected[1] not in ("classification", "regression")):
        wanted = ("an encoder on MLM batches (MODEL_ARCH = 'encoder', OBJECTIVE = 'mlm')" if general else
                  "a classification or regression task (gin_configs/objectives/classification.gin or regression.gin)")
        raise ConfigError(f"distill.stage={settings.stage!r} distils {wanted}, not MODEL_ARCH={student.architecture!r} "
                          f"with OBJECTIVE={student.objective.name!r}.")
    check_lengths(settings.teacher_config, student.architecture, student.task_feature_lengths)
    teacher = init_lib.build_module(student.architecture, settings.teacher_config, student.head_options, None)
    if settings.quantize:  # TernaryBERT / BinaryBERT: the student's every apply quantization-aware
        from plmjax.compression import quantize
        student = dataclasses.replace(student, module=quantize.quantized_model(
            student.module, settings.quantize, settings.activation_bits, settings.clip))
    if settings.method == "dynabert":
        from plmjax.compression import dynabert_train
        options = dynabert_train.AdaptiveOptions(tuple(settings.width_mults), tuple(settings.depth_mults),
                                                 settings.lambda1, settings.lambda2)
        module = dynabert_train.adaptive_model(teacher, student.module, options)
        objective = dynabert_train.objective(options, student.objective.name)
    else:
        module = distill.distillation_model(teacher, student.module, settings.options)
        objective = distill.objective(settings.options, "classification" if general else student.objective.name)
    return dataclasses.replace(student, module=module, objective=objective, distill=settings, student=student)


def is_finetune_run(run: RunSetup) -> bool:
    """A fine-tuning architecture, or a prompt-based objective on a plain model (PET on the MLM head)."""
    return init_lib.is_finetune(run.architecture) or run.objective.name == "pet"
