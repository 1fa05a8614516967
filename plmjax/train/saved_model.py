"""A saved model as data: the architecture, the model config and the parameters (numpy) of any plmjax checkpoint,
the ones `plmjax train` writes and the ones `plmjax convert` writes (their metadata records the model config).

`train.init_checkpoint`, `plmjax convert --to hf` and the prompting helpers read checkpoints through this;
`save_model` writes a standalone model (`plmjax convert`'s outputs, a distillation run's student):

    <out>/checkpoints/0/state/     {'params': ...}
    <out>/checkpoints/0/metadata/  config: {'model_config': {...}, 'architecture': ..., 'head_options': ..., ...}
    <out>/config.gin               MODEL_ARCH and MODEL_CONFIG (the closest preset plus overrides)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from flax import traverse_util

from plmjax import models
from plmjax.models import params as params_lib
from plmjax.models.config import TransformerConfig
from plmjax.train import checkpoint as checkpoint_lib



class SavedModel(NamedTuple):
    architecture: str
    config: TransformerConfig
    params: Any  # the unboxed parameter tree: numpy arrays (`load_saved_model`) or shapes (`read_saved_model`)
    metadata: dict  # the checkpoint's `config` metadata (hf_family, hf_class, head_options, peft, ...)
    checkpoint: str = ''  # the checkpoints directory it was read from
    step: Optional[int] = None  # and its step


def read_model_config(metadata: dict, where: str) -> tuple[str, TransformerConfig]:
    """(architecture, config) from a checkpoint's metadata."""
    saved = (metadata.get('config') or {}).get('model_config')
    if not isinstance(saved, dict):
        raise ValueError(f'Checkpoint {where} does not record its model config; use a checkpoint written by '
                         '`plmjax train` or `plmjax convert`.')
    known = {f.name for f in dataclasses.fields(TransformerConfig)}
    saved = dict(saved)
    if 'remat' in saved and 'remat' not in known:  # older checkpoints: `remat=True` meant remat_policy='full'
        if saved.pop('remat') and saved.get('remat_policy', 'none') == 'none':
            saved['remat_policy'] = 'full'
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f'Checkpoint {where} has model config fields {unknown} this plmjax does not know: it was '
                         'written by another version of plmjax.')
    config = TransformerConfig(**saved)
    return metadata['config'].get('architecture') or params_lib.architecture_of(config), config


def _open(path: str, step: Optional[int]):
    """(Checkpointer, step, metadata, architecture, config) of a model dir, checkpoints dir or step dir."""
    base = os.path.basename(os.path.abspath(path))
    if step is None and base.isdigit():
        step = int(base)
    checkpointer = checkpoint_lib.Checkpointer(checkpoint_lib.checkpoint_root(path))
    try:
        metadata = checkpointer.read_metadata(step)
        arch, config = read_model_config(metadata, checkpointer.directory)
        if metadata['config'].get('peft'):
            raise ValueError(f'Checkpoint {checkpointer.directory} is a PEFT run ({metadata["config"]["peft"]}): its '
                             'base model is the run\'s init_checkpoint and its own parameters are in <run>/adapter '
                             '(plmjax.train.adapter.load_adapter); load those instead.')
    except Exception:
        checkpointer.close()
        raise
    return checkpointer, metadata['step'], metadata, arch, config


def read_saved_model(path: str, step: Optional[int] = None) -> SavedModel:
    """The model of a checkpoint without its arrays: `params` holds a `jax.ShapeDtypeStruct` per saved parameter
    (`restore_params` reads them)."""
    checkpointer, step, metadata, arch, config = _open(path, step)
    checkpointer.close()
    params = traverse_util.unflatten_dict({
        tuple(name.split('/')[1:]): jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
        for name, (shape, dtype) in metadata['fingerprint'].items() if name.startswith('params/')})
    return SavedModel(arch, config, params, metadata['config'], checkpointer.directory, step)


def restore_params(saved: SavedModel, params: Any) -> Any:
    """Reads some of `saved`'s parameters: `params` is a subtree of `saved.params` whose `jax.ShapeDtypeStruct`s
    carry the shardings to read them into (each process reads only its shards)."""
    with checkpoint_lib.Checkpointer(saved.checkpoint) as checkpointer:
        restored, _ = checkpointer.restore(saved.step, abstract_state={'params': params}, partial=True)
    return restored['params']


def load_saved_model(path: str, step: Optional[int] = None) -> SavedModel:
    """The model of a checkpoint (a model dir, its checkpoints dir or one step's dir), at its latest step or the
    step a step directory names."""
    checkpointer, step, metadata, arch, config = _open(path, step)
    try:
        abstract = params_lib.abstract_params(arch, config, **(metadata['config'].get('head_options') or {}))
        if (metadata['config'].get('quantize') or {}).get('method') == 'split_binary':  # BinaryBERT's twins
            from plmjax.compression import quantize
            abstract = quantize.with_split_twins(abstract)
        restored, _ = checkpointer.restore(step, abstract_state={'params': abstract}, partial=True)
    finally:
        checkpointer.close()
    return SavedModel(arch, config, jax.tree.map(np.asarray, restored['params']), metadata['config'],
                      checkpointer.directory, step)


def base_preset(config: TransformerConfig) -> str:
    """The preset of the same architecture that needs the fewest overrides to give `config`."""
    arch = params_lib.architecture_of(config)
    candidates = [name for name, fn in models.PRESETS.items() if params_lib.architecture_of(fn()) == arch]
    return min(candidates, key=lambda name: len(preset_overrides(config, name)))


def preset_overrides(config: TransformerConfig, preset: str) -> dict:
    """The fields to override in `preset` to get `config` (run fields except name included)."""
    base = dataclasses.asdict(models.PRESETS[preset]())
    return {k: v for k, v in dataclasses.asdict(config).items() if k != 'name' and base[k] != v}


def gin_model_file(arch: str, config: TransformerConfig, header: str = '') -> str:
    """A gin model file binding MODEL_ARCH and MODEL_CONFIG = the closest preset with overrides."""
    preset = base_preset(config)
    lines = [f'# {line}' if line else '#' for line in header.splitlines()]
    lines += [f'MODEL_ARCH = {arch!r}', f'MODEL_CONFIG = @{preset}()']
    overrides = preset_overrides(config, preset)
    lines += [f'{preset}.{field} = {value!r}' for field, value in sorted(overrides.items())]
    return '\n'.join(lines) + '\n'


def save_model(out_dir: str, arch: str, config: TransformerConfig, params, *, metadata: Optional[dict] = None,
               header: str = '', replace: bool = False) -> str:
    """Writes `params` as step 0 of `<out_dir>/checkpoints` (metadata: the model config, architecture and
    `metadata`) and `<out_dir>/config.gin` (its first lines `header`); returns the step's directory. Every
    process calls it (Orbax writes each array once). replace: `out_dir` is the caller's own output (a run's
    `student`, written again when the run is resumed after its end): the model there is replaced by a new step,
    and deleted only once the new one is complete, so a kill at any point leaves one whole model."""
    config = dataclasses.replace(config, name=base_preset(config))
    metadata = {'model_config': dataclasses.asdict(config), 'architecture': arch, **(metadata or {})}
    with checkpoint_lib.Checkpointer(os.path.join(out_dir, 'checkpoints'), max_to_keep=1 if replace else None,
                                     async_save=False, owns_directory=replace) as checkpointer:
        latest = checkpointer.latest_step() if replace else None
        step = 0 if latest is None else latest + 1
        checkpointer.save(step, {'params': params}, data_position=0, config=metadata, force=True)
    if jax.process_index() == 0:
        path = os.path.join(out_dir, 'config.gin')
        with open(path + '.tmp', 'w') as f:
            f.write(gin_model_file(arch, config, header))
        os.replace(path + '.tmp', path)
    return os.path.join(checkpointer.directory, str(step))
