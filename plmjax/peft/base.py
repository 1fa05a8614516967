"""What every parameter-efficient method shares: the wrapper module, the parameter split and the trainable mask.

A method wraps any plmjax module (`EncoderModel`, the fine-tuning models, `DecoderModel`, `EncoderDecoderModel`)
without forking it. `PeftModel` holds the wrapped module as its submodule 'base' and runs it under a flax method
interceptor (`nn.intercept_methods`) that each method defines: LoRA adds s·(x·A)·B to targeted projections,
adapters add a bottleneck after attention and MLP sublayers, prompt tuning prepends soft tokens inside each
stack, prefix tuning gives every attention extra keys and values. Parameters are

    {'base': <the wrapped module's own parameters>, '<method>': <the new ones, nested like the modules they modify>}

The base is frozen: its parameters enter the forward pass through `jax.lax.stop_gradient` (so no weight gradients
are computed for them), except the task head of a fine-tuning architecture (every entry of params['base'] beside
the pre-trained encoder 'bert', e.g. 'classifier'), which is new and trains with the method's parameters, as in
the PEFT literature. `trainable_mask` marks exactly these parameters.

Initialization: interceptors only record the shapes of the new parameters while the base initializes; the
parameters are created afterwards (each from its own rng stream) and the init pass returns the base's outputs.

Scanned stacks (`TransformerConfig.scan_layers`): an interceptor inside the `nn.scan` sees one layer's module
(path `.../layers/...`, no layer index). A new parameter recorded there gets a leading [num_layers] axis (logical
'layers'), so the method's tree is `layout.scan_params` of its unrolled tree; at apply time those parameters enter
the base's own tree (renamed `<method>:<name>`, beside the module's parameters) so that the scan slices them per
layer like the base's, and the interceptor reads its layer's slice from the intercepted module's variables.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import optax

from plmjax.models import layout

BASE = 'base'
BACKBONE = 'bert'  # the pre-trained encoder inside a fine-tuning architecture (plmjax/models/finetune.py)


class ParamSpec(NamedTuple):
    """A new parameter: its shape, dtype, initializer (key, shape, dtype) -> array, and logical axis names."""
    shape: tuple[int, ...]
    dtype: Any
    init: Callable[..., jax.Array]
    axes: tuple[str | None, ...]


class _ParamTree(nn.Module):
    """Creates the parameters of a nested {name: ParamSpec | dict} tree, each named like its dict key."""
    specs: Any

    @nn.compact
    def __call__(self) -> None:
        for name, spec in self.specs.items():
            if isinstance(spec, ParamSpec):
                self.param(name, nn.with_logical_partitioning(spec.init, spec.axes), spec.shape, spec.dtype)
            else:
                _ParamTree(spec, name=name)()


def _nested_get(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


class Context(NamedTuple):
    """What an interceptor needs besides flax's InterceptorContext: the intercepted module's path relative to
    the base, and access to the method's parameters."""
    path: tuple[str, ...]
    param: Callable[[tuple[str, ...], str, ParamSpec], jax.Array | None]


class PeftModel(nn.Module):
    """Wraps `base`; subclasses set `method` and implement `intercept`. Same call signature and outputs as `base`
    (also its `encode`/`decode` for an EncoderDecoderModel)."""
    base: nn.Module
    options: Any  # the method's hyper-parameters (a frozen dataclass)
    method = ''

    @property
    def config(self):
        return self.base.config

    @nn.compact
    def __call__(self, *args, **kwargs):
        return self._run('__call__', args, kwargs)

    def encode(self, *args, **kwargs):
        return self._run('encode', args, kwargs)

    def decode(self, *args, **kwargs):
        return self._run('decode', args, kwargs)

    @nn.nowrap
    def intercept(self, next_fun, args, kwargs, context, peft: Context):
        """One intercepted method call of a module inside the base (context: flax's InterceptorContext)."""
        raise NotImplementedError

    def _run(self, method_name: str, args, kwargs):
        initializing = self.is_initializing() and self.method not in self.variables.get('params', {})
        specs: dict = {}
        values = None if initializing else self._stored_params()
        base_path = tuple(self.path) + ('base',)

        def param(path, name, spec, module=None, module_path=()):
            """The parameter `name` of the module at `path` (relative to the base); None while initializing.
            Inside a scanned stack: the intercepted `module`'s layer of it."""
            if initializing:
                node = specs
                for key in path:
                    node = node.setdefault(key, {})
                node[name] = spec
                return None
            try:
                if layout.LAYERS not in path:
                    return _nested_get(values, path)[name]
                if path[:len(module_path)] != module_path:
                    raise ValueError(f'{self.method} reads {"/".join(path)!r} from inside the scanned layer module '
                                     f'{"/".join(module_path)!r}: only its own subtree is sliced per layer.')
                return _nested_get(module.variables['params'], path[len(module_path):])[self._layer_key(name)]
            except (KeyError, TypeError):
                raise ValueError(f'The {self.method} parameters have no {"/".join(path + (name,))!r}: they were '
                                 f'created for another model or another {self.method} configuration.') from None

        def interceptor(next_fun, i_args, i_kwargs, context):
            path = context.module.path
            if context.method_name == 'setup' or path[:len(base_path)] != base_path:
                return next_fun(*i_args, **i_kwargs)
            relative = path[len(base_path):]
            bound = functools.partial(param, module=context.module, module_path=relative)
            return self.intercept(next_fun, i_args, i_kwargs, context, Context(relative, bound))

        def run_base(module, *a, **k):
            return getattr(module, method_name)(*a, **k)

        trans_in = _freeze if self.is_initializing() else (
            lambda variables: {'params': _merge(_freeze(variables)['params'], self._layer_params(values))})
        frozen_base = nn.map_variables(run_base, 'params', trans_in_fn=trans_in, init=self.is_initializing(),
                                       mutable=self.is_initializing())
        with nn.intercept_methods(interceptor):
            outputs = frozen_base(self.base, *args, **kwargs)
        if initializing:
            base_params = nn.meta.unbox(self.variables['params'][BASE])
            _ParamTree(_stack_scanned(specs, base_params, ()), name=self.method)()
        return outputs

    @nn.nowrap
    def _layer_key(self, name: str) -> str:
        """The name of the method's parameter `name` inside the base's tree of a scanned layer."""
        return f'{self.method}:{name}'

    @nn.nowrap
    def _layer_params(self, values):
        """The method's parameters inside scanned stacks (paths through `layers`), leaves renamed by `_layer_key`,
        to be merged into the base's tree; {} for unrolled stacks."""
        def collect(node, scanned):
            out = {}
            for key, value in node.items():
                inside = scanned or key == layout.LAYERS
                if isinstance(value, Mapping):
                    sub = collect(value, inside)
                    if sub:
                        out[key] = sub
                elif inside:
                    out[self._layer_key(key)] = value
            return out
        return collect(values, False)

    def _stored_params(self):
        stored = self.variables.get('params', {})
        if self.method not in stored:
            raise ValueError(f'The parameters have no {self.method!r} entry: initialize the wrapped model with '
                             f'`init` (params = {{"base": ..., "{self.method}": ...}}).')
        return nn.meta.unbox(stored[self.method])


def _merge(tree: dict, extra: dict) -> dict:
    """`tree` with the entries of `extra` added (nested dicts merged; extra's leaf names are new)."""
    out = dict(tree)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def _stacked_init(init: Callable[..., jax.Array], depth: int) -> Callable[..., jax.Array]:
    """`init` of one layer's parameter, drawn for each of `depth` layers (shape [depth, ...])."""
    def stacked(key, shape, dtype=None):
        keys = jax.random.split(key, depth)
        return jax.vmap(lambda k: init(k, tuple(shape[1:]), dtype))(keys)
    return stacked


def _stack_scanned(specs: dict, base_params, path: tuple[str, ...]) -> dict:
    """The recorded specs with a leading [num_layers] axis ('layers') on those inside a scanned stack; the depth
    is the leading dimension of the base's parameters under that `layers`."""
    out = {}
    for name, spec in specs.items():
        if not isinstance(spec, ParamSpec):
            out[name] = _stack_scanned(spec, base_params, path + (name,))
            continue
        if layout.LAYERS in path:
            stack = path[:path.index(layout.LAYERS) + 1]
            depth = jax.tree.leaves(_nested_get(base_params, stack))[0].shape[0]
            spec = ParamSpec((depth,) + tuple(spec.shape), spec.dtype, _stacked_init(spec.init, depth),
                             (layout.LAYERS,) + tuple(spec.axes))
        out[name] = spec
    return out


def _freeze(variables):
    """stop_gradient on the base's parameters ({'params': ...}), except the task head of a fine-tuning
    architecture."""
    def freeze(params):
        return {key: value if _is_head(params, key) else jax.tree.map(jax.lax.stop_gradient, value)
                for key, value in params.items()}
    return {collection: freeze(tree) for collection, tree in variables.items()}


def _is_head(base_params, key: str) -> bool:
    return BACKBONE in base_params and key != BACKBONE


def method_of(params) -> str:
    """The method name of a PEFT parameter tree {'base': ..., '<method>': ...}."""
    others = [key for key in params if key != BASE] if hasattr(params, 'keys') else []
    if BASE not in params or len(others) != 1:
        raise ValueError(f'Expected the parameters of a PEFT-wrapped model, {{"base": ..., "<method>": ...}}, got '
                         f'top-level keys {sorted(params) if hasattr(params, "keys") else type(params).__name__}: '
                         'wrap the module with plmjax.peft.wrap(module, method) before init.')
    return others[0]


def trainable_mask(params) -> Any:
    """A pytree of bools shaped like `params` (boxed or not): True on params[<method>] and on the task head of a
    fine-tuning architecture (params['base'] entries beside 'bert'), False on every frozen base parameter."""
    method = method_of(params)
    base = params[BASE]
    mask = {BASE: {key: jax.tree.map(lambda _, head=_is_head(base, key): head, value) for key, value in base.items()},
            method: jax.tree.map(lambda _: True, params[method])}
    return mask


def adapter_params(params) -> dict:
    """The trainable subtree: {'<method>': ...} plus {'base': {<head>: ...}} for a fine-tuning architecture."""
    method = method_of(params)
    heads = {key: value for key, value in params[BASE].items() if _is_head(params[BASE], key)}
    return {method: params[method], **({BASE: heads} if heads else {})}


def with_adapter(params, adapter: dict) -> dict:
    """`params` with the trainable subtree `adapter` (from `adapter_params` or `load_adapter`) put in place."""
    method = method_of(params)
    if set(adapter) - {method, BASE}:
        raise ValueError(f'The adapter holds {sorted(adapter)}, but these parameters are a {method!r} model.')
    base = {**params[BASE], **adapter.get(BASE, {})}
    return {BASE: base, method: adapter[method]}


def optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` on the trainable parameters, `optax.set_to_zero` on the frozen ones (they stay bit-identical)."""
    labels = lambda p: jax.tree.map(lambda trainable: 'trainable' if trainable else 'frozen',  # noqa: E731
                                    trainable_mask(p))
    return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)
