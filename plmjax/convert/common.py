"""What every Hugging Face converter shares: the tensor map as a list of exact, invertible `Rule`s, applied in
both directions, and the config checks that make a conversion total or a clear error.

A family module (`bert.py`, `gpt2.py`, ...) describes one Hugging Face architecture as a `Family`: how its
`config.json` maps onto a `TransformerConfig` (and back), and which plmjax parameter comes from which Hugging Face
tensor. Every tensor transform is a transpose, a reshape, a split or a concatenation, so a round trip
plmjax -> Hugging Face -> plmjax returns every parameter bit for bit.

Paths: plmjax parameters are named by '/'-joined paths of the (unboxed) parameter tree
(`encoder/layers_0/self_attention/query/kernel`); Hugging Face tensors by their state-dict keys.
"""
import dataclasses
import re
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from plmjax import models
from plmjax.models.config import TransformerConfig
# Which network a config describes, and its parameter tree (re-exported: the converters' rules build on them).
from plmjax.models.params import abstract_params, architecture_of, config_differences, effective_fields  # noqa: F401
from plmjax.train.saved_model import base_preset, preset_overrides  # noqa: F401  (re-exported)

Array = np.ndarray


class UnsupportedArchitectureError(ValueError):
    """A checkpoint (or config) uses an architecture feature that the other side cannot represent."""


class Rule(NamedTuple):
    """plmjax parameters `params` <-> Hugging Face tensors `hf`, through two exact inverse functions."""
    params: tuple[str, ...]
    hf: tuple[str, ...]
    to_params: Callable[..., tuple]  # (*hf tensors) -> tuple of plmjax arrays
    to_hf: Callable[..., tuple]  # (*plmjax arrays) -> tuple of hf tensors


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face architecture (a `model_type`) and how it maps onto plmjax."""
    name: str  # the Hugging Face model_type written on export ('bert', 'mt5', ...)
    architecture: str  # plmjax architecture: 'encoder' | 'decoder' | 'encoder_decoder'
    hf_class: str  # the `architectures` entry written on export (the class that holds every plmjax parameter)
    prefix: str  # Hugging Face's base_model_prefix ('bert'); base-model checkpoints store keys without it
    config_from_hf: Callable[[Mapping, frozenset], TransformerConfig]  # (config.json, state-dict keys) -> config
    config_to_hf: Callable[[TransformerConfig], dict]
    rules: Callable[[TransformerConfig], list[Rule]]
    ignored: tuple[str, ...] = ()  # regexes of Hugging Face keys that carry nothing (buffers, tied copies)
    model_types: tuple[str, ...] = ()  # config.json model_type values read by this family (default: name)
    # (config.json, state dict) -> state dict, before anything is read: drops tied copies stored twice
    prepare: Optional[Callable[[Mapping, dict], dict]] = None
    marker: Optional[str] = None  # a key that picks this family among those reading the same model_type
    optional: tuple[str, ...] = ('mlm_head/', 'lm_head/')  # plmjax parameters a checkpoint may lack (heads)

    def reads(self, model_type: str) -> bool:
        return model_type in (self.model_types or (self.name,))

    @property
    def model_type(self) -> str:
        """The model_type written on export."""
        return (self.model_types or (self.name,))[0]


# ------------------------------------------------------------------------------------ tensor transforms


def _identity(*xs):
    return xs


def same(param: str, hf: str) -> Rule:
    return Rule((param,), (hf,), _identity, _identity)


def embedding(param_prefix: str, hf: str) -> Rule:
    return same(f'{param_prefix}/embedding', hf)


def norm(param_prefix: str, hf_prefix: str, bias: bool = True) -> list[Rule]:
    rules = [same(f'{param_prefix}/scale', f'{hf_prefix}.weight')]
    if bias:
        rules.append(same(f'{param_prefix}/bias', f'{hf_prefix}.bias'))
    return rules


def dense(param_prefix: str, hf_prefix: str, bias: bool = True) -> list[Rule]:
    """torch.nn.Linear weight [out, in] <-> flax Dense kernel [in, out]."""
    transpose = lambda w: (w.T,)  # noqa: E731
    rules = [Rule((f'{param_prefix}/kernel',), (f'{hf_prefix}.weight',), transpose, transpose)]
    if bias:
        rules.append(same(f'{param_prefix}/bias', f'{hf_prefix}.bias'))
    return rules


def conv1d(param_prefix: str, hf_prefix: str) -> list[Rule]:
    """GPT-2's Conv1D stores its weight as [in, out] already."""
    return [same(f'{param_prefix}/kernel', f'{hf_prefix}.weight'), same(f'{param_prefix}/bias', f'{hf_prefix}.bias')]


def attention(param_prefix: str, hf_prefixes: Sequence[str], config: TransformerConfig,
              bias: bool = True) -> list[Rule]:
    """Four torch Linears (query, key, value, output) <-> plmjax MultiHeadAttention.

    q/k/v: weight [heads * kv, emb] <-> kernel [emb, heads, kv], bias [heads * kv] <-> [heads, kv];
    output: weight [emb, heads * kv] <-> kernel [heads, kv, emb].
    """
    heads, kv = config.num_heads, config.head_dim
    rules = []
    for name, hf in zip(('query', 'key', 'value'), hf_prefixes[:3]):
        rules.append(Rule((f'{param_prefix}/{name}/kernel',), (f'{hf}.weight',),
                          lambda w: (w.T.reshape(w.shape[1], heads, kv),),  # [emb, heads, kv]
                          lambda k: (k.reshape(k.shape[0], heads * kv).T,)))
        if bias:
            rules.append(Rule((f'{param_prefix}/{name}/bias',), (f'{hf}.bias',),
                              lambda b: (b.reshape(heads, kv),), lambda b: (b.reshape(heads * kv),)))
    out = hf_prefixes[3]
    rules.append(Rule((f'{param_prefix}/out/kernel',), (f'{out}.weight',),
                      lambda w: (w.T.reshape(heads, kv, w.shape[0]),),  # [heads, kv, emb]
                      lambda k: (k.reshape(heads * kv, k.shape[-1]).T,)))
    if bias:
        rules.append(same(f'{param_prefix}/out/bias', f'{out}.bias'))
    return rules


def concatenate(arrays: Sequence, axis: int):
    """np.concatenate, or jnp's when tracing (`jax.eval_shape` of a conversion)."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.concatenate(arrays, axis=axis)
    return jnp.concatenate(arrays, axis=axis)


# ------------------------------------------------------------------------------------- applying the rules


def flatten(params) -> dict[str, Array]:
    return traverse_util.flatten_dict(nn.meta.unbox(params), sep='/')


def unflatten(flat: Mapping[str, Array]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep='/')


def apply_to_params(rules: Sequence[Rule], state: Mapping[str, Array]) -> tuple[dict[str, Array], set[str]]:
    """Hugging Face tensors -> flat plmjax params (for the rules whose tensors are all present) and the keys
    used. A rule with only some of its tensors present is a malformed checkpoint."""
    flat, used = {}, set()
    for rule in rules:
        present = [key in state for key in rule.hf]
        if not any(present):
            continue
        if not all(present):
            missing = [key for key, ok in zip(rule.hf, present) if not ok]
            raise ValueError(f'The checkpoint has {[k for k in rule.hf if k in state]} but not {missing}: it is '
                             'incomplete or not of the architecture its config.json declares.')
        values = rule.to_params(*(state[key] for key in rule.hf))
        flat.update(zip(rule.params, values))
        used.update(rule.hf)
    return flat, used


def apply_to_hf(rules: Sequence[Rule], flat: Mapping[str, Array]) -> dict[str, Array]:
    """Flat plmjax params -> Hugging Face tensors; every parameter must be covered by exactly one rule."""
    state, used = {}, set()
    for rule in rules:
        if not all(p in flat for p in rule.params):
            continue
        state.update(zip(rule.hf, rule.to_hf(*(flat[p] for p in rule.params))))
        used.update(rule.params)
    unmapped = sorted(set(flat) - used)
    if unmapped:
        raise UnsupportedArchitectureError(
            f'No Hugging Face tensor holds the plmjax parameters {unmapped[:5]}'
            f'{" ..." if len(unmapped) > 5 else ""}: the model has parts this Hugging Face architecture lacks.')
    return state


def ignored(keys, patterns: Sequence[str]) -> set[str]:
    return {key for key in keys if any(re.search(p, key) for p in patterns)}


# ----------------------------------------------------------------------------------------- configs


def require(hf_config: Mapping, field: str, allowed, family: str, default=None):
    """hf_config[field] (or default), or an UnsupportedArchitectureError naming the field and what plmjax has."""
    value = hf_config.get(field, default)
    ok = value in allowed if isinstance(allowed, (tuple, list, set, frozenset)) else allowed(value)
    if not ok:
        choices = f' (plmjax represents {sorted(allowed, key=str)})' if isinstance(allowed, (tuple, list)) else ''
        raise UnsupportedArchitectureError(
            f'The {family} checkpoint has {field}={value!r}, which plmjax cannot represent{choices}. '
            f'Convert a checkpoint without it, or add the feature to plmjax.models first.')
    return value


# Hugging Face's activation names (ACT2FN) that mean one of plmjax's activations.
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_new': 'gelu_new', 'gelu_pytorch_tanh': 'gelu_new', 'gelu_fast': None,
                  'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}


def activation_from_hf(hf_config: Mapping, field: str, family: str) -> str:
    supported = tuple(k for k, v in HF_ACTIVATIONS.items() if v)
    return HF_ACTIVATIONS[require(hf_config, field, supported, family)]


# ------------------------------------------------------------------------------------------ parameter trees


def parameter_spec(arch: str, config: TransformerConfig) -> dict[str, dict]:
    """{path: {'shape': [...], 'axes': [...]}} of every parameter: the golden trees of tests/testdata."""
    boxed = abstract_params(arch, config, boxed=True)
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {'/'.join(k.key for k in path): {'shape': list(leaf.value.shape), 'axes': list(leaf.names)}
            for path, leaf in leaves}


def init_params(arch: str, config: TransformerConfig, seed: int = 0) -> dict:
    """Freshly initialized (unboxed) parameters, for heads a checkpoint does not hold."""
    ids = jnp.ones((1, 8), jnp.int32)
    args = (ids, ids) if arch == 'encoder_decoder' else (ids,)
    model = models.build_model(arch, config)
    return nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), *args)['params'])
