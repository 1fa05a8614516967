"""Prefix tuning (Li & Liang, 2021): every attention (self- and cross-attention, in every stack) gets n trainable
key and value vectors per head, put before its keys and values; every query may attend to them, the model is frozen.

The prefixes enter through `MultiHeadAttention`'s `extra_kv` argument (plmjax/layers/attention.py), after the
key/value projections, rotary positions and the decoding cache, with no relative-position bias, so cached decoding
works unchanged. Parameters, per attention module path: 'key' and 'value' [n, heads, kv], N(0, 1) as the
reference implementation's embedding table.

`reparameterize=True` is the paper's MLP reparameterization for stable training: a shared 'embedding' [n, emb] and
'hidden' dense layer (tanh), and per attention a 'key' and 'value' dense layer from the hidden width to
[heads, kv] (the paper's single MLP with one wide output, split by layer). `fold_reparameterization` computes the
prefixes once after training and returns the small direct-form parameters.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from plmjax.layers.attention import MultiHeadAttention
from plmjax.models import layout
from plmjax.peft.base import ParamSpec, PeftModel, method_of


@dataclasses.dataclass(frozen=True)
class PrefixTuningOptions:
    length: int = 10  # n, prefix vectors per attention
    reparameterize: bool = False
    hidden_size: int = 512  # of the reparameterization MLP

    def __post_init__(self):
        for field in ('length', 'hidden_size'):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'prefix_tuning.{field} must be a positive integer, got {value!r}.')


def _dense(x, layer):
    """x [..., in] with layer {'kernel': [in, out...], 'bias': [out...]} -> [..., out...]."""
    return jnp.tensordot(x, layer['kernel'], 1) + layer['bias']


def _prefix(shared, layer, name):
    """[n, heads, kv] keys or values of one attention from the reparameterization MLP."""
    return _dense(jnp.tanh(_dense(shared['embedding'], shared['hidden'])), layer[name])


class PrefixTuningModel(PeftModel):
    method = 'prefix_tuning'

    @nn.nowrap
    def intercept(self, next_fun, args, kwargs, context, peft):
        attention = context.module
        if context.method_name != '__call__' or not isinstance(attention, MultiHeadAttention):
            return next_fun(*args, **kwargs)
        opts, dtype = self.options, attention.param_dtype
        shape, axes = (opts.length, attention.num_heads, attention.head_dim), (None, 'heads', 'kv')
        if opts.reparameterize:
            emb, hidden = args[0].shape[-1], opts.hidden_size
            normal, zeros = nn.initializers.normal(0.02), nn.initializers.zeros_init()
            shared = {'embedding': peft.param((), 'embedding', ParamSpec((opts.length, emb), dtype,
                                                                         nn.initializers.normal(1.0), (None, 'embed'))),
                      'hidden': {'kernel': peft.param(('hidden',), 'kernel', ParamSpec((emb, hidden), dtype, normal,
                                                                                       ('embed', 'mlp'))),
                                 'bias': peft.param(('hidden',), 'bias', ParamSpec((hidden,), dtype, zeros, ('mlp',)))}}
            layer = {name: {'kernel': peft.param(peft.path + (name,), 'kernel',
                                                 ParamSpec((hidden,) + shape[1:], dtype, normal, ('mlp',) + axes[1:])),
                            'bias': peft.param(peft.path + (name,), 'bias',
                                               ParamSpec(shape[1:], dtype, zeros, axes[1:]))}
                     for name in ('key', 'value')}
            if shared['embedding'] is None:  # initializing
                return next_fun(*args, **kwargs)
            keys, values = _prefix(shared, layer, 'key'), _prefix(shared, layer, 'value')
        else:
            keys, values = (peft.param(peft.path, name, ParamSpec(shape, dtype, nn.initializers.normal(1.0), axes))
                            for name in ('key', 'value'))
            if keys is None:  # initializing
                return next_fun(*args, **kwargs)
        return next_fun(*args, **{**kwargs, 'extra_kv': (keys[None], values[None])})  # [1, n, heads, kv]


def fold_reparameterization(params) -> dict:
    """Prefix-tuning parameters trained with `reparameterize=True` -> the direct form ('key', 'value' [n, heads,
    kv] per attention), for a model wrapped with `reparameterize=False` (in the layout of `params`: a scanned
    model's prefixes stacked per layer)."""
    if method_of(params) != 'prefix_tuning':
        raise ValueError(f'fold_reparameterization needs prefix-tuning parameters, got {method_of(params)!r}.')
    params = nn.meta.unbox(params)
    if layout.is_scanned(params):
        return layout.scan_params(fold_reparameterization(layout.unscan_params(params)))
    tree = params['prefix_tuning']
    if 'embedding' not in tree:
        raise ValueError('These prefix-tuning parameters are already in the direct form (no reparameterization).')
    shared = {'embedding': tree['embedding'], 'hidden': tree['hidden']}

    def fold(node):
        if 'key' in node and 'kernel' in node['key']:
            return {name: _prefix(shared, node, name) for name in ('key', 'value')}
        return {key: fold(value) for key, value in node.items()}

    direct = fold({key: value for key, value in tree.items() if key not in shared})
    return {**params, 'prefix_tuning': direct}
