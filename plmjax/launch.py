"""The gin entry points of `plmjax train|eval` (t5x's train.py / eval.py) and the one place that parses gin.

Only the edges are configurable (t5x's rule): the run functions `train` and `evaluate` (plmjax.train.loop), the
mesh (`create_mesh`), the optimizer builder (`make_optimizer`), the sharding rules table (`logical_axis_rules`),
the PEFT methods' options (`lora`, `adapter`, `prompt_tuning`, `prefix_tuning`), TinyBERT distillation
(`distill`), bert2BERT's two-stage pre-training (`two_stage`), TinyBERT's data augmentation (`augment.*`: K, p,
N, seed), in-context evaluation (`in_context_evaluate`), and `plmjax infer`'s settings (`infer.*`); model presets
are registered by plmjax.models.config and tasks by plmjax.tasks.
This module sits above the trainer and evaluation, so it is where a fine-tuning run gets its official scoring.

Flags: `--gin_file=F` (repeatable), `--gin_param='NAME = VALUE'` (repeatable), and t5x's `--gin.NAME=VALUE`.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import re
import tokenize
from typing import Any, Sequence

import gin

from plmjax import evaluation, peft, sharding
from plmjax.compression import augment, distill, two_stage
from plmjax.evaluation import infer
from plmjax.prompting import in_context
from plmjax.train import loop, optim

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

create_mesh = gin.external_configurable(sharding.create_mesh, "create_mesh")
make_optimizer = gin.external_configurable(optim.make_optimizer, "make_optimizer")
logical_axis_rules = gin.external_configurable(sharding.logical_axis_rules, "logical_axis_rules")
# method -> its options dataclass as a gin configurable named like the method (`lora.rank = 8`)
PEFT_OPTIONS = {method: gin.external_configurable(options, method, module="plmjax.peft")
                for method, (_, options) in peft.METHODS.items()}
# A TinyBERT run: `train.distill = @distill()`, `distill.teacher_config`, `distill.stage`, ... (gin_configs/compression/)
distill_settings = gin.external_configurable(distill.DistillRun, "distill")
# bert2BERT's two-stage pre-training: `train.two_stage = @two_stage()`, `two_stage.block_layers`, `.stage1_steps`
two_stage_settings = gin.external_configurable(two_stage.TwoStage, "two_stage")
augment_options = gin.external_configurable(augment.Options, "augment")  # plmjax augment: `augment.copies` (N), ...
infer_settings = gin.external_configurable(infer.settings, "infer")  # plmjax infer's settings: `infer.strategy`
in_context_evaluate = gin.external_configurable(in_context.evaluate, "in_context_evaluate",
                                                denylist=["checkpoint_or_params"])

# Arguments the entry points pass themselves (not settings of a run).
_WIRED = ["finetune_evaluator", "operative_config", "peft_options"]
_train = gin.external_configurable(loop.train, "train", denylist=["model_dir", *_WIRED])
_evaluate = gin.external_configurable(loop.evaluate, "evaluate", denylist=["checkpoint", "out_dir", *_WIRED])


def _peft_options(method: str):
    return PEFT_OPTIONS[method]() if method in PEFT_OPTIONS else None


def train(model_dir: str, **settings) -> dict[str, float]:
    """`plmjax train`: `loop.train` with the gin bindings of `train.*` (explicit `settings` win)."""
    return _train(model_dir, finetune_evaluator=evaluation.evaluate_params, operative_config=gin.operative_config_str,
                  peft_options=_peft_options, **settings)


def evaluate(checkpoint: str, out_dir: str | None = None, finetune_evaluator=None, **settings) -> dict[str, float]:
    """`plmjax eval`: `loop.evaluate` with the gin bindings of `evaluate.*` (explicit `settings` win); a fine-tuning
    checkpoint is scored by `finetune_evaluator` (default `plmjax.evaluation.evaluate_params`)."""
    return _evaluate(checkpoint, out_dir, finetune_evaluator=finetune_evaluator or evaluation.evaluate_params,
                     peft_options=_peft_options, **settings)


# ------------------------------------------------------------------------------------------------ parsing

_DOTTED_FLAG = re.compile(r"^--gin\.([A-Za-z_][\w./]*)=(.*)$", re.DOTALL)


def add_gin_flags(parser, required: bool = True) -> None:
    """--gin_file and --gin_param on an argparse (sub)parser; `split_gin_flags` takes the `--gin.NAME=VALUE` ones."""
    parser.add_argument("--gin_file", action="append", default=[], required=required, help="gin file (repeatable)")
    parser.add_argument("--gin_param", action="append", default=[],
                        help="gin binding 'NAME = VALUE' (repeatable); t5x's --gin.NAME=VALUE works too")


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(argv without the `--gin.NAME=VALUE` flags, those flags as gin bindings 'NAME = VALUE')."""
    rest, bindings = [], []
    for arg in argv:
        match = _DOTTED_FLAG.match(arg)
        if match:
            bindings.append(f"{match.group(1)} = {match.group(2)}")
        elif arg.startswith("--gin.") and "=" not in arg:
            raise ValueError(f"{arg!r}: write t5x-style bindings as --gin.NAME=VALUE, e.g. --gin.train.num_steps=100.")
        else:
            rest.append(arg)
    return rest, bindings


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str], clear: bool = False) -> None:
    """Registers every configurable (tasks, presets, the entry points above) and parses the files and bindings;
    files are found relative to the working directory or the repository root. clear: forget earlier bindings
    first (one process, several runs: a notebook)."""
    if clear:
        gin.clear_config()
    for path in (os.getcwd(), REPO_ROOT):
        gin.add_config_file_search_path(path)
    for path in gin_files:
        if not os.path.exists(path) and not os.path.exists(os.path.join(REPO_ROOT, path)):
            raise FileNotFoundError(f"gin file {path!r} not found (looked in {os.getcwd()} and {REPO_ROOT}): "
                                    "check --gin_file.")
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # TensorFlow reads data; accelerators belong to JAX
    import plmjax.tasks  # noqa: F401  registers the seqio tasks named in gin files
    quiet = _QuietSearchMisses()  # gin logs an ERROR for each search path a file is not in, even when found later
    logging.getLogger().addFilter(quiet)
    macros = _check_bindings(gin_params)
    try:
        for path in gin_files:  # gin.parse_config_files_and_bindings, one file at a time to name a bad one
            try:
                gin.parse_config_file(path)
            except (SyntaxError, tokenize.TokenError) as error:
                raise ValueError(_syntax_message(error, f"gin file {path} (or a file it includes)")) from None
        gin.parse_config(list(gin_params))
    finally:
        logging.getLogger().removeFilter(quiet)
    _check_macros_used(macros)


class _QuietSearchMisses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found:")


def run_settings(gin_files: Sequence[str], gin_params: Sequence[str], mesh_axes: Sequence[str]) -> dict[str, Any]:
    """The run settings `plmjax train` would read from these gin files (the mesh as create_mesh's bindings), for
    `plmjax plan`."""
    gin.clear_config()
    parse_gin(gin_files, gin_params)
    bindings = gin.get_bindings("train", resolve_references=False)

    def setting(key: str, macro: str | None, default=dataclasses.MISSING):
        if key in bindings:
            return copy.deepcopy(bindings[key])  # deepcopy evaluates gin references (@preset(), %MACRO)
        if macro is not None:
            try:
                return copy.deepcopy(gin.query_parameter(f"%{macro}"))
            except ValueError:
                pass
        if default is dataclasses.MISSING:
            raise ValueError(f"The gin files bind neither train.{key} nor {macro}: include a model file "
                             "(gin_configs/models/), an objective file (gin_configs/objectives/) and a run file "
                             "(gin_configs/runs/pretrain.gin), or an experiment that includes them.")
        return default

    return {
        "model_config": setting("model_config", "MODEL_CONFIG"),
        "task": setting("task", "TASK", None),
        "architecture": setting("architecture", "MODEL_ARCH"),
        "objective": setting("objective", "OBJECTIVE"),
        "task_feature_lengths": setting("task_feature_lengths", "TASK_FEATURE_LENGTHS"),
        "batch_size": setting("batch_size", "BATCH_SIZE", 32),
        "grad_accum_steps": setting("grad_accum_steps", None, 1),
        "optimizer": setting("optimizer", None, None),
        "rules": setting("logical_axis_rules", None, None),
        "mesh_shape": {**dict.fromkeys(mesh_axes, 1), "data": -1, **gin.get_bindings("create_mesh")},
    }


def _syntax_message(error: Exception, what: str) -> str:
    """what: the gin file or the --gin_param binding; a SyntaxError names the exact file and line."""
    if isinstance(error, SyntaxError):
        if error.filename and error.filename != "<string>":
            what = f"gin file {error.filename}, line {error.lineno} ({(error.text or '').strip()!r})"
        problem = error.msg
    else:  # tokenize.TokenError
        problem = f"{error.args[0]}: an unclosed bracket or quote"
    return (f"{what}: gin syntax error ({problem}). Fix it: bindings read NAME = VALUE or "
            "configurable.parameter = VALUE, with Python literals as values")


def _check_bindings(gin_params: Sequence[str]) -> dict[str, str]:
    """Parses each --gin_param alone, so a syntax error names that binding; returns the macros they bind
    ({name: binding})."""
    from gin import config_parser  # pylint: disable=import-outside-toplevel

    class Delegate(config_parser.ParserDelegate):  # syntax only: references are not looked up here
        def configurable_reference(self, scoped_name, evaluate):
            return scoped_name

        def macro(self, name):
            return name

    macros = {}
    for binding in gin_params:
        try:
            statements = list(config_parser.ConfigParser(binding, Delegate()))
        except (SyntaxError, tokenize.TokenError) as error:
            raise ValueError(_syntax_message(error, f"--gin_param {binding!r}")) from None
        for statement in statements:
            if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
                macros[statement.selector] = binding
    return macros


def _macro_references(value, found: set[str]) -> set[str]:
    if isinstance(value, gin.config.ConfigurableReference):
        if value.configurable.wrapped is gin.config.macro:
            found.add("/".join(value.scopes))
    elif isinstance(value, dict):
        for item in value.values():
            _macro_references(item, found)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _macro_references(item, found)
    return found


def _check_macros_used(macros: dict[str, str]) -> None:
    """A --gin_param that binds a macro no gin file refers to (NUM_STEP for NUM_STEPS) would change nothing and
    let the run go on with the file's value: one error naming it and the macros that exist."""
    if not macros:
        return
    from plmjax.tasks import finetune  # pylint: disable=import-outside-toplevel
    used = set(finetune.DATA_DIR_MACROS)
    for bindings in gin.config._CONFIG.values():  # pylint: disable=protected-access  (gin has no public walk)
        _macro_references(bindings, used)
    for name, binding in macros.items():
        if name not in used:
            close = difflib.get_close_matches(name, sorted(used), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(f"--gin_param {binding!r} binds the macro {name}, which no gin file uses (%{name}): "
                             f"{hint}The files use {', '.join(sorted(used))}.")
