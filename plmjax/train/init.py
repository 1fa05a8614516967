"""How a fine-tuning run builds its model and first parameters (docs/interfaces.md, "Fine-tuning"):

* `head_options(architecture, objective, task)`: `num_labels` / `num_choices` of a fine-tuning architecture, from
  the task's `plmjax.data.finetune.get_task_info`;
* `build_module(...)`: `build_model` with them, wrapped by `plmjax.peft.wrap` when the run tunes an adapter;
* `init_from_checkpoint(...)` (`train.init_checkpoint`): the parameters of a converted or pre-trained checkpoint
  replace the matching subtree of the freshly initialized ones (`params['bert']` of a fine-tuning architecture,
  under `params['base']` with PEFT, the whole tree when the architectures match); everything else keeps its fresh
  initialization, and the run prints which subtrees came from where. The arrays are read from the checkpoint
  straight into the run's shardings (each process reads only the shards it holds); a checkpoint of the other
  layer layout (`scan_layers`) is converted with `plmjax.models.layout`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from plmjax import models
from plmjax.models import layout
from plmjax.models import params as params_lib
from plmjax.models.finetune import FINETUNE_ARCHITECTURES
from plmjax.train import saved_model

# The TaskInfo kinds each fine-tuning architecture can learn.
_KINDS = {'encoder_classifier': ('classification', 'regression'), 'encoder_span': ('span_extraction',),
          'encoder_multiple_choice': ('multiple_choice',), 'encoder_tagger': ('tagging',)}


_LAYER_KEY = re.compile(r'^layers_\d+$')  # one layer of an unrolled stack (plmjax.models.layout)


class InitCheckpointError(ValueError):
    """`train.init_checkpoint` does not fit the model the run builds."""


def is_finetune(architecture: str) -> bool:
    return architecture in FINETUNE_ARCHITECTURES


def head_options(architecture: str, objective: str, task: Optional[str]) -> dict[str, int]:
    """The head options of a fine-tuning architecture for `task` ({} for every other architecture)."""
    if not is_finetune(architecture):
        return {}
    from plmjax.data.finetune import get_task_info  # data never imports train: imported here, at run time
    info = get_task_info(task)
    if info.kind not in _KINDS[architecture]:
        raise ValueError(f"Task {task!r} is a {info.kind!r} task, which MODEL_ARCH={architecture!r} cannot learn; "
                         f"use the objective gin file gin_configs/objectives/{info.kind}.gin.")
    if objective in _KINDS[architecture] and objective != info.kind:
        raise ValueError(f"Task {task!r} is a {info.kind!r} task but train.objective={objective!r}; use "
                         f"gin_configs/objectives/{info.kind}.gin.")
    if architecture == 'encoder_multiple_choice':
        return {'num_choices': info.num_choices}
    if architecture == 'encoder_span':
        return {}
    return {'num_labels': info.num_labels}


def build_module(architecture: str, model_config, options: dict[str, int], peft: Optional[str],
                 peft_options: Any = None) -> nn.Module:
    """The run's network: `build_model` with the head options, wrapped by the PEFT method with its options
    (`peft_options`: an options dataclass, or a function of the method name that returns one)."""
    module = models.build_model(architecture, model_config, **options)
    if peft:
        from plmjax import peft as peft_lib
        module = peft_lib.wrap(module, peft, peft_options(peft) if callable(peft_options) else peft_options)
    return module


# ------------------------------------------------------------------------------ init from a checkpoint


def _target_and_source(source_arch: str, source_params: dict, architecture: str, where: str):
    """(path of the subtree to replace, relative to the run's model params; path of the checkpoint's subtree)."""
    if source_arch == architecture:
        return (), ()
    if is_finetune(architecture):
        if source_arch == 'encoder':
            return ('bert',), ()
        if 'bert' in source_params:  # another encoder wrapper: NSP/SOP, SpanBERT, another fine-tuning head
            return ('bert',), ('bert',)
    raise InitCheckpointError(
        f"train.init_checkpoint={where!r} holds a {source_arch!r} model, which cannot initialize a "
        f"{architecture!r} model: use a checkpoint of an encoder (or of the same architecture).")


def _subtree(tree: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        tree = tree[key]
    return tree


def _collapse(tree: dict, selected: set, prefix: tuple = ()) -> list[str]:
    """The largest subtrees of `tree` whose leaves are all in `selected` (flat paths), '/'-joined."""
    leaves = set(traverse_util.flatten_dict(tree).keys()) if isinstance(tree, dict) else {()}
    full = {prefix + leaf for leaf in leaves}
    if full <= selected:
        return ['/'.join(prefix) or '(all)']
    if not full & selected or not isinstance(tree, dict):
        return []
    return [name for key in tree for name in _collapse(tree[key], selected, prefix + (key,))]


def _scanned(config) -> bool:
    return bool(getattr(config, 'scan_layers', False))


def _layout_converter(converted, model_config):
    """`layout.scan_params` / `unscan_params` when the checkpoint's layer layout is not the run's, else None."""
    if _scanned(converted.config) == _scanned(model_config):
        return None
    return layout.scan_params if _scanned(model_config) else layout.unscan_params


def _in_run_layout(converted, model_config):
    """The checkpoint (params, config) in the run's layer layout (scanned or unrolled)."""
    convert = _layout_converter(converted, model_config)
    if convert is None:
        return converted
    return converted._replace(params=convert(converted.params),
                              config=dataclasses.replace(converted.config, scan_layers=_scanned(model_config)))


def _mapping(fresh: dict, converted, architecture: str, model_config, peft: Optional[str], where: str,
             under: tuple = ()):
    """(target path, source path, {flat path: fresh leaf}, {flat path: checkpoint leaf}, report) for putting the
    checkpoint's parameters (arrays or shape/dtype structs) into `fresh`, the checkpoint converted to the run's
    layer layout; raises on any mismatch."""
    converted = _in_run_layout(converted, model_config)
    relative, source_path = _target_and_source(converted.architecture, converted.params, architecture, where)
    source = _subtree(converted.params, source_path)
    target_path = tuple(under) + (('base',) if peft else ()) + relative
    target = _subtree(fresh, target_path)
    flat_target, flat_source = traverse_util.flatten_dict(target), traverse_util.flatten_dict(source)
    differences = params_lib.config_differences(converted.config, model_config)
    hint = (f" The checkpoint's model config differs in {differences} (checkpoint, run): build the run's "
            "MODEL_CONFIG from the checkpoint's config.gin.") if differences else ''
    for path, leaf in flat_target.items():
        if path in flat_source and tuple(np.shape(flat_source[path])) != tuple(leaf.shape):
            name = '/'.join(target_path + path)
            raise InitCheckpointError(
                f"train.init_checkpoint={where!r}: parameter {name} has shape {tuple(np.shape(flat_source[path]))} "
                f"in the checkpoint but {tuple(leaf.shape)} in the model.{hint}")
    if differences:
        raise InitCheckpointError(f"train.init_checkpoint={where!r} does not match the run's model.{hint}")
    loaded = {target_path + path for path in flat_target if path in flat_source}
    report = {'target': '/'.join(target_path) or '(all)', 'source': '/'.join(source_path) or '(all)',
              'loaded': _collapse(fresh, loaded),
              'initialized': _collapse(fresh, {path for path in traverse_util.flatten_dict(fresh)  # within `under`
                                               if path[:len(under)] == tuple(under)} - loaded),
              'unused': _collapse(source, set(flat_source) - set(flat_target))}
    return target_path, source_path, flat_target, flat_source, report


def _replace_subtree(fresh: dict, target_path: tuple, flat_target: dict, replacements: dict) -> dict:
    """Copies of `fresh` and of the target subtree's ancestors, with the leaves of `replacements` in place."""
    params = traverse_util.unflatten_dict({path: replacements.get(path, leaf) for path, leaf in flat_target.items()})
    for depth in range(len(target_path), 0, -1):
        parent = dict(_subtree(fresh, target_path[:depth - 1]))
        parent[target_path[depth - 1]] = params
        params = parent
    return params


def merge_checkpoint_params(fresh: dict, converted, architecture: str, model_config, *, peft: Optional[str] = None,
                            where: str = '') -> tuple[dict, dict[str, list[str]]]:
    """`fresh` (the run's parameter tree) with the checkpoint's parameters in place of the matching subtree.

    Returns (params, report) where report = {'target': path of the replaced subtree, 'source': the checkpoint's
    subtree read into it, 'loaded': subtrees read from the checkpoint, 'initialized': subtrees kept fresh (both
    as paths in `fresh`), 'unused': checkpoint subtrees with no place}; '(all)' names a whole tree.
    Loaded leaves are numpy arrays in the fresh leaf's dtype; the other leaves are `fresh`'s own objects.
    """
    target_path, _, flat_target, flat_source, report = _mapping(fresh, converted, architecture, model_config, peft,
                                                                where)
    loaded = {path: np.asarray(flat_source[path]).astype(leaf.dtype)
              for path, leaf in flat_target.items() if path in flat_source}
    return _replace_subtree(fresh, target_path, flat_target, loaded), report


def _run_counterpart(path: tuple, run_scanned: bool) -> tuple:
    """The run-layout path holding a checkpoint leaf of the other layout (the stack, or layer 0 of it)."""
    if run_scanned:
        return tuple(layout.LAYERS if _LAYER_KEY.match(key) else key for key in path)
    return tuple('layers_0' if key == layout.LAYERS else key for key in path)


def _read_sharding(run_sharding, run_scanned: bool):
    """The sharding to read a checkpoint leaf of the other layout with: one layer of a scanned run's stacked leaf
    drops the leading axis; a scanned checkpoint's stack read for an unrolled run keeps that axis unsharded."""
    spec = tuple(run_sharding.spec)
    spec = spec[1:] if run_scanned else (None,) + spec
    return jax.sharding.NamedSharding(run_sharding.mesh, jax.sharding.PartitionSpec(*spec))


def init_from_checkpoint(state, shardings, tx, path: str, *, architecture: str, model_config,
                         peft: Optional[str] = None, under: tuple = (), log=print):
    """`state` with its parameters initialized from the checkpoint at `path` and a fresh optimizer state.

    Only the parameters the run uses are read, each straight into its sharding in the run (Orbax partial
    restore): no process holds the whole model in host memory. A checkpoint of the other layer layout is read
    layer by layer and stacked (or a stack read and split) on the devices.
    under: the path of the model's subtree in the run's parameters (TinyBERT distillation: ('teacher',) and
    ('student',), `plmjax.compression.distill`); architecture and model_config are that model's.
    """
    saved = saved_model.read_saved_model(path)
    target_path, source_path, flat_target, flat_source, report = _mapping(
        state.params, saved, architecture, model_config, peft, path, under)
    convert = _layout_converter(saved, model_config)
    target_shardings = traverse_util.flatten_dict(_subtree(shardings.params, target_path))
    wanted = {}  # the checkpoint leaves to read (in its layout), each with the sharding to read it into
    for leaf_path, leaf in traverse_util.flatten_dict(_subtree(saved.params, source_path)).items():
        run_path = leaf_path if convert is None else _run_counterpart(leaf_path, _scanned(model_config))
        if run_path in flat_target and run_path in flat_source:
            read_sharding = target_shardings[run_path]
            if run_path != leaf_path:
                read_sharding = _read_sharding(read_sharding, _scanned(model_config))
            wanted[source_path + leaf_path] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=read_sharding)
    restored = _subtree(saved_model.restore_params(saved, traverse_util.unflatten_dict(wanted)), source_path)
    restored = traverse_util.flatten_dict(convert(restored) if convert is not None else restored)
    loaded = {p: jax.device_put(restored[p].astype(flat_target[p].dtype), target_shardings[p])
              for p in flat_target if p in flat_source}
    params = _replace_subtree(state.params, target_path, flat_target, loaded)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    family = saved.metadata.get('hf_family')
    origin = f"{family} " if family else ''
    log(f"Initialized from {path} ({origin}{saved.architecture!r} checkpoint; its {report['source']} into the "
        f"model's {report['target']}):\n"
        f"  loaded: {', '.join(report['loaded']) or '-'}\n"
        f"  freshly initialized: {', '.join(report['initialized']) or '-'}"
        + (f"\n  not used: {', '.join(report['unused'])}" if report['unused'] else ''))
    return state.replace(params=params, opt_state=opt_state)
