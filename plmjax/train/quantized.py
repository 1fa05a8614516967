"""Evaluating a quantized student as it was trained: from its checkpoint (the latent full-precision weights,
quantized at every apply) or from its packed low-bit file (`<student>/packed.npz`, `compression.quantize`'s
`save_packed`), unpacked into the fake-quantized weights and run with the same activation quantization.

`plmjax eval --checkpoint runs/ternary_sst2/student/packed.npz` reads the packed file; the model's settings
(the quantization method and activation bits) come from the checkpoint metadata of the saved model beside it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from plmjax.train.setup import ConfigError, RunSetup

PACKED_SUFFIX = ".npz"


def is_packed(checkpoint: str) -> bool:
    """A packed low-bit file rather than a checkpoint directory."""
    return checkpoint.endswith(PACKED_SUFFIX)


def model_dir_of(checkpoint: str) -> str:
    """The saved model a checkpoint argument names: a packed file's own directory, else the argument itself."""
    return os.path.dirname(os.path.abspath(checkpoint)) if is_packed(checkpoint) else checkpoint


def as_saved(run: RunSetup, saved: Mapping[str, Any], checkpoint: str) -> RunSetup:
    """A quantized student (its metadata's `quantize`: TernaryBERT / BinaryBERT, a post-training baseline) is
    evaluated as it was trained: the latent weights quantized at every apply, the activations too. From a packed
    file, the weights arrive quantized already: only the activations are."""
    quantized = saved.get("quantize")
    if not quantized:
        if is_packed(checkpoint):
            raise ConfigError(f"{checkpoint} is a packed file, but the saved model beside it "
                              f"({model_dir_of(checkpoint)}) is not a quantized one (its checkpoint metadata has no "
                              f"'quantize'). Evaluate the checkpoint directory instead.")
        return run
    from plmjax.compression import quantize
    if jax.process_index() == 0:
        source = "its packed weights" if is_packed(checkpoint) else "quantized, as it was trained"
        print(f"{checkpoint}: a {quantized['method']} checkpoint (activations "
              f"{quantized.get('activation_bits') or 'float'}-bit): evaluated {source}.")
    if is_packed(checkpoint):
        module = quantize.quantized_model(run.module, None, quantized.get("activation_bits"),
                                          quantized.get("clip", quantize.CLIP))
    else:
        module = quantize.as_saved(run.module, saved)
    return dataclasses.replace(run, module=module)


def load_packed_params(path: str, saved: Mapping[str, Any], abstract_params, param_shardings):
    """The fake-quantized parameters of the packed file `path`, checked against the model's parameter tree and
    placed on the devices as `param_shardings` says."""
    from plmjax.compression import packing
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No packed file at {path}: a quantized run writes <model_dir>/student/packed.npz.")
    method, params = packing.load_packed(path)
    expected = (saved.get("quantize") or {}).get("method")
    if method != expected:
        raise ConfigError(f"{path} packs {method!r} weights, but its saved model was trained with {expected!r}.")
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_params, sep="/").items()}
    have = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    if want != have:
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        raise ConfigError(f"{path} does not match the model of the gin files: missing {missing[:5]}, unexpected "
                          f"{extra[:5]}, other shapes {shapes[:5]}. Evaluate it with its own config.gin.")
    params = traverse_util.unflatten_dict({tuple(k.split("/")): np.asarray(v, np.float32)
                                           for k, v in traverse_util.flatten_dict(params, sep="/").items()})
    return jax.device_put(params, param_shardings)
