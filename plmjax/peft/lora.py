"""LoRA (Hu et al., 2021): a frozen kernel W [in..., out...] of a targeted projection becomes W + (alpha/r)·A·B,
A [in..., r] (uniform, as kaiming_uniform(a=sqrt(5)) in the reference code), B [r, out...] zero-initialized, so the
wrapped model starts exactly as the base.

At apply time the low-rank term is added to the projection's output, y = x·W + b + (alpha/r)·(x·A)·B, which equals
the merged kernel's x·(W + (alpha/r)·A·B) + b without materializing A·B; `merge_lora` folds the update into the
base kernels for deployment (the plain module then computes the LoRA model). Targets are modules by name: the
attention projections 'query', 'key', 'value', 'out' and the MLP's 'wi', 'wi_0', 'wi_1', 'wo' (any `Projection`
(every dense layer of the models) or flax `nn.Dense` whose name is listed).
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from plmjax.layers.dense import Projection
from plmjax.models import layout
from plmjax.peft.base import PeftModel, ParamSpec, method_of


@dataclasses.dataclass(frozen=True)
class LoraOptions:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ('query', 'value')  # the paper's choice for attention

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f'lora.rank must be a positive integer, got {self.rank!r}.')
        if isinstance(self.targets, str) or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty tuple of module names such as ('query', 'value'), "
                             f'got {self.targets!r}.')

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _a_init(num_input_axes: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the product of the kernel's input axes."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(math.prod(shape[:num_input_axes]))
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _axis_names(variable, ndim: int) -> tuple:
    return tuple(variable.names) if isinstance(variable, nn.Partitioned) else (None,) * ndim


class LoraModel(PeftModel):
    method = 'lora'

    @nn.nowrap
    def intercept(self, next_fun, args, kwargs, context, peft):
        module = context.module
        targeted = isinstance(module, (Projection, nn.Dense)) and module.name in self.options.targets
        y = next_fun(*args, **kwargs)
        if context.method_name != '__call__' or not targeted:
            return y
        boxed = module.get_variable('params', 'kernel')
        kernel = nn.meta.unbox(boxed)
        names = _axis_names(boxed, kernel.ndim)
        num_in = getattr(module, 'num_input_axes', 1)
        rank = self.options.rank
        a = peft.param(peft.path, 'lora_a', ParamSpec(kernel.shape[:num_in] + (rank,), kernel.dtype, _a_init(num_in),
                                                      names[:num_in] + (None,)))
        b = peft.param(peft.path, 'lora_b', ParamSpec((rank,) + kernel.shape[num_in:], kernel.dtype,
                                                      nn.initializers.zeros_init(), (None,) + names[num_in:]))
        if a is None:  # initializing: B = 0, the output is the base's
            return y
        x, a, b = nn.dtypes.promote_dtype(args[0], a, b, dtype=module.dtype)
        delta = jnp.tensordot(jnp.tensordot(x, a, num_in), b, 1)  # [..., in...] -> [..., r] -> [..., out...]
        return y + (self.options.scale * delta).astype(y.dtype)


def merge_lora(params, options: LoraOptions) -> dict:
    """The base parameters with every LoRA update folded in: kernel <- kernel + (alpha/r)·A·B (a scanned model's
    per layer: the result is in the layout of `params`)."""
    if method_of(params) != 'lora':
        raise ValueError(f'merge_lora needs LoRA parameters, got a {method_of(params)!r} model.')
    params = nn.meta.unbox(params)
    if layout.is_scanned(params):
        return layout.scan_params(merge_lora(layout.unscan_params(params), options))

    def merge(base, lora):
        if 'lora_a' in lora:
            delta = jnp.tensordot(lora['lora_a'], lora['lora_b'], 1)  # [in..., r] x [r, out...] -> [in..., out...]
            return {**base, 'kernel': base['kernel'] + (options.scale * delta).astype(base['kernel'].dtype)}
        return {**base, **{key: merge(base[key], value) for key, value in lora.items()}}

    return merge(params['base'], params['lora'])
