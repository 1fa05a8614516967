"""A saved model as data: the architecture, the model config and the parameters (numpy) of any plmjax checkpoint,
the ones `plmjax train` writes and the ones `plmjax convert` writes (their metadata records the model config).

`train.init_checkpoint`, `plmjax convert --to hf` and the prompting helpers read checkpoints through this.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from plmjax.models import params as params_lib
from plmjax.models.config import TransformerConfig
from plmjax.train import checkpoint as checkpoint_lib



class SavedModel(NamedTuple):
    architecture: str
    config: TransformerConfig
    params: Any  # the unboxed parameter tree, numpy arrays
    metadata: dict  # the checkpoint's `config` metadata (hf_family, hf_class, head_options, peft, ...)


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


def load_saved_model(path: str, step: Optional[int] = None) -> SavedModel:
    """The model of a checkpoint (a model dir, its checkpoints dir or one step's dir), at its latest step or the
    step a step directory names."""
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
                             '(plmjax.peft.load_adapter); load those instead.')
        abstract = params_lib.abstract_params(arch, config, **(metadata['config'].get('head_options') or {}))
        restored, _ = checkpointer.restore(step, abstract_state={'params': abstract}, partial=True)
    finally:
        checkpointer.close()
    return SavedModel(arch, config, jax.tree.map(np.asarray, restored['params']), metadata['config'])
