"""Houlsby adapters (Houlsby et al., 2019): a bottleneck h + up(act(down(h))) on the output of every attention
sublayer (self- and cross-attention, after its output projection) and of every MLP, before the residual connection
and layer norm. down [emb, bottleneck] is N(0, init_std), up [bottleneck, emb] and both biases are zero, so each
adapter starts as the identity and the wrapped model exactly as the base.

`sublayers=('mlp',)` gives the Pfeiffer placement (one adapter per layer, after the MLP). Differences from the
paper: the adapter reads the sublayer output before the residual dropout (identical in evaluation), and the layer
norms stay frozen (the paper also trains them).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from plmjax.layers import mlp
from plmjax.layers.attention import MultiHeadAttention
from plmjax.peft.base import PeftModel, ParamSpec

SUBLAYERS = {'attention': MultiHeadAttention, 'mlp': mlp.Mlp}


@dataclasses.dataclass(frozen=True)
class AdapterOptions:
    bottleneck: int = 64
    activation: str = 'gelu'
    init_std: float = 1e-2  # of the down-projection; the up-projection is zero
    sublayers: tuple[str, ...] = ('attention', 'mlp')

    def __post_init__(self):
        if isinstance(self.bottleneck, bool) or not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f'adapter.bottleneck must be a positive integer, got {self.bottleneck!r}.')
        mlp.get_activation(self.activation)
        unknown = set(self.sublayers) - set(SUBLAYERS) if not isinstance(self.sublayers, str) else {self.sublayers}
        if unknown or not self.sublayers:
            raise ValueError(f'adapter.sublayers must be a non-empty tuple of {tuple(SUBLAYERS)}, '
                             f'got {self.sublayers!r}.')


class AdapterModel(PeftModel):
    method = 'adapter'

    @nn.nowrap
    def intercept(self, next_fun, args, kwargs, context, peft):
        h = next_fun(*args, **kwargs)
        kinds = tuple(SUBLAYERS[name] for name in self.options.sublayers)
        if context.method_name != '__call__' or not isinstance(context.module, kinds):
            return h
        emb, size, dtype = h.shape[-1], self.options.bottleneck, context.module.param_dtype
        spec = lambda shape, init, axes: ParamSpec(shape, dtype, init, axes)  # noqa: E731
        zeros = nn.initializers.zeros_init()
        down, up = peft.path + ('down',), peft.path + ('up',)  # {'down': {'kernel', 'bias'}, 'up': {...}}
        down_kernel = peft.param(down, 'kernel', spec((emb, size), nn.initializers.normal(self.options.init_std),
                                                      ('embed', None)))
        down_bias = peft.param(down, 'bias', spec((size,), zeros, (None,)))
        up_kernel = peft.param(up, 'kernel', spec((size, emb), zeros, (None, 'embed')))
        up_bias = peft.param(up, 'bias', spec((emb,), zeros, ('embed',)))
        if down_kernel is None:  # initializing: the adapter is the identity
            return h
        x, down_kernel, down_bias, up_kernel, up_bias = nn.dtypes.promote_dtype(
            h, down_kernel, down_bias, up_kernel, up_bias, dtype=context.module.dtype)
        bottleneck = mlp.get_activation(self.options.activation)(jnp.dot(x, down_kernel) + down_bias)  # [..., size]
        return h + (jnp.dot(bottleneck, up_kernel) + up_bias).astype(h.dtype)
