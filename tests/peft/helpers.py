"""Tiny models and inputs shared by the PEFT tests (d_model 64, 2 layers, length <= 16)."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

from plmjax.models import build_model, tiny_decoder, tiny_encoder, tiny_encoder_decoder  # noqa: E402


def token_ids(batch=2, length=12, seed=0, pad_from=9):
    """[batch, length] ids in 5..99; the last row is padded (id 0) from `pad_from` on."""
    ids = np.random.RandomState(seed).randint(5, 100, (batch, length)).astype(np.int32)
    ids[-1, pad_from:] = 0
    return jnp.asarray(ids)


def model_and_inputs(arch: str, **config_overrides):
    """(module, positional inputs, keyword inputs) of a tiny model of `arch` (dropout off)."""
    no_dropout = dict(dropout_rate=0.0, attention_dropout_rate=0.0, **config_overrides)
    ids = token_ids()
    if arch in ('encoder', 'encoder_classifier'):
        types = jnp.zeros_like(ids).at[:, 5:].set(1)
        heads = {'num_labels': 3} if arch == 'encoder_classifier' else {}
        return build_model(arch, tiny_encoder(**no_dropout), **heads), (ids,), {'token_type_ids': types}
    if arch == 'decoder':
        return build_model(arch, tiny_decoder(**no_dropout)), (ids,), {}
    if arch == 'encoder_decoder':
        return build_model(arch, tiny_encoder_decoder(**no_dropout)), (ids, token_ids(length=7, seed=1)), {}
    raise ValueError(arch)


def init_params(module, args, kwargs, seed=0):
    return nn.meta.unbox(module.init(jax.random.key(seed), *args, **kwargs)['params'])


def randomize(tree, seed=1, scale=0.1):
    """Every leaf replaced by N(0, scale) noise of its shape (new parameters away from their init)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def assert_outputs_equal(a: dict, b: dict, atol=1e-6):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=0, atol=atol, err_msg=key)


def relative_error(a, b) -> float:
    """||a - b|| / ||b||, summed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def assert_close_to_scale(a, b, rtol=1e-6):
    """Every output (or leaf) of `a` within relative error rtol of `b`'s (`relative_error`): a scanned and an
    unrolled stack sum in other orders, so float32 results differ in their last bits (in float64: ~1e-14)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert np.shape(x) == np.shape(y), path
        assert relative_error(x, y) <= rtol, (jax.tree_util.keystr(path), relative_error(x, y))


FLOAT64 = dict(dtype='float64', param_dtype='float64')  # under jax.enable_x64: scanned == unrolled to ~1e-14


def scanned_twin(arch: str, params, method: str, config: dict | None = None, **options):
    """(wrapped scanned model of `arch`, its parameters = layout.scan_params(params), positional and keyword
    inputs): the model of `model_and_inputs(arch, **config)` with scan_layers=True, wrapped with `method`."""
    from plmjax import peft
    from plmjax.models import layout
    module, args, kwargs = model_and_inputs(arch, scan_layers=True, **(config or {}))
    return peft.wrap(module, method, **options), layout.scan_params(params), args, kwargs


def assert_scanned_init_matches(wrapped, args, kwargs, scanned_params, method: str):
    """The scanned model's own init makes the method's tree of `scanned_params` (shapes, and logical axis names
    with 'layers' first inside the stacks)."""
    boxed = wrapped.init(jax.random.key(0), *args, **kwargs)['params'][method]
    flat = {'/'.join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))}
    expected = {'/'.join(k.key for k in path): leaf for path, leaf in
                jax.tree_util.tree_leaves_with_path(scanned_params[method])}
    assert flat.keys() == expected.keys()
    for path, leaf in flat.items():
        assert leaf.value.shape == expected[path].shape, path
        assert (leaf.names[0] == 'layers') == ('/layers/' in f'/{path}'), (path, leaf.names)
