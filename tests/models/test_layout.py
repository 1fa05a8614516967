"""layout.scan_params / unscan_params: the unrolled <-> scanned parameter layouts."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import core
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from plmjax.models import layout
from plmjax.train.state import TrainState


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y) and np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_scan_stacks_layers_on_a_leading_axis_and_keeps_other_keys():
    tree = {'encoder': {'embedder': {'w': np.ones(3)},
                        'layers_0': {'mlp': {'kernel': np.zeros((2, 3))}, 'norm': {'scale': np.full(3, 0.)}},
                        'layers_1': {'mlp': {'kernel': np.ones((2, 3))}, 'norm': {'scale': np.full(3, 1.)}}}}
    scanned = layout.scan_params(tree)
    assert sorted(scanned['encoder']) == ['embedder', 'layers']
    assert scanned['encoder']['layers']['mlp']['kernel'].shape == (2, 2, 3)
    np.testing.assert_array_equal(scanned['encoder']['layers']['norm']['scale'], [[0.] * 3, [1.] * 3])
    assert layout.is_scanned(scanned) and not layout.is_scanned(tree)
    _assert_same(layout.unscan_params(scanned), tree)


def test_non_consecutive_layer_keys_are_left_alone():
    tree = {'layers_0': {'w': np.ones(2)}, 'layers_2': {'w': np.ones(2)}}
    _assert_same(layout.scan_params(tree), tree)


def test_partitioned_boxes_and_shape_structs():
    box = lambda v: nn.Partitioned(v, ('embed', 'mlp'))  # noqa: E731
    tree = core.FrozenDict({'layers_0': {'k': box(jnp.zeros((2, 3)))}, 'layers_1': {'k': box(jnp.ones((2, 3)))}})
    scanned = layout.scan_params(tree)
    assert isinstance(scanned, core.FrozenDict)
    assert scanned['layers']['k'].names == ('layers', 'embed', 'mlp')
    assert scanned['layers']['k'].value.shape == (2, 2, 3)
    back = layout.unscan_params(scanned)
    assert back['layers_1']['k'].names == ('embed', 'mlp')
    np.testing.assert_array_equal(back['layers_1']['k'].value, np.ones((2, 3)))

    shapes = {'layers_0': {'k': jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)},
              'layers_1': {'k': jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)}}
    stacked = layout.scan_params(shapes)['layers']['k']
    assert stacked.shape == (2, 2, 3) and stacked.dtype == jnp.bfloat16
    assert layout.unscan_params(layout.scan_params(shapes))['layers_0']['k'].shape == (2, 3)


def test_a_whole_train_state_with_adam_and_masked_moments_converts():
    params = {'embedder': {'w': jnp.ones(4)},
              'layers_0': {'w': jnp.full((2, 4), 1.), 'b': jnp.zeros(4)},
              'layers_1': {'w': jnp.full((2, 4), 2.), 'b': jnp.ones(4)}}
    mask = jax.tree.map(lambda x: x.ndim == 2, params)
    tx = optax.chain(optax.masked(optax.adam(1e-3), mask), optax.add_decayed_weights(0.1))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    scanned = layout.scan_params(state)
    assert scanned.params['layers']['w'].shape == (2, 2, 4)
    mu = scanned.opt_state[0].inner_state[0].mu
    assert mu['layers']['w'].shape == (2, 2, 4) and isinstance(mu['layers']['b'], optax.MaskedNode)
    _assert_same(layout.unscan_params(scanned), state)


def test_a_dict_with_both_layouts_is_an_error():
    with pytest.raises(ValueError, match='both'):
        layout.scan_params({'layers': {'w': np.ones((1, 2))}, 'layers_0': {'w': np.ones(2)}})


_leaf_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def _trees(draw, depth=0, as_jax=None):
    """Random nested trees, some dicts holding consecutive layers_i of one random per-layer structure (one array
    kind, numpy or jax, per tree, and one dtype per leaf position, as in a real parameter tree)."""
    as_jax = draw(st.booleans()) if as_jax is None else as_jax
    spec = st.tuples(_leaf_shapes, st.sampled_from([np.float32, np.int32]))

    def leaf(shape_dtype, seed):
        shape, dtype = shape_dtype
        array = np.random.default_rng(seed).normal(size=shape).astype(dtype)
        return jnp.asarray(array) if as_jax else array

    def layer_structure(d):
        keys = draw(st.lists(st.sampled_from(['kernel', 'bias', 'scale', 'sub']), min_size=1, max_size=3,
                             unique=True))
        return {k: (layer_structure(d + 1) if k == 'sub' and d < 2 else draw(spec)) for k in keys}

    def build(structure, seed):
        return {k: build(v, seed + i) if isinstance(v, dict) else leaf(v, seed + i)
                for i, (k, v) in enumerate(structure.items())}

    tree = {}
    if draw(st.booleans()):
        structure = layer_structure(0)
        for i in range(draw(st.integers(1, 4))):
            tree[f'layers_{i}'] = build(structure, 10 * i)
    for name in draw(st.lists(st.sampled_from(['embedder', 'final_norm', 'encoder', 'decoder']), max_size=2,
                              unique=True)):
        tree[name] = (draw(_trees(depth + 1, as_jax)) if depth < 2 and draw(st.booleans())
                      else leaf(draw(spec), 7))
    return tree


@settings(max_examples=60, deadline=None)
@given(tree=_trees(), wrap=st.sampled_from(['dict', 'frozen', 'tuple', 'adam']))
def test_unscan_inverts_scan(tree, wrap):
    if wrap == 'frozen':
        tree = core.FrozenDict(tree)
    elif wrap == 'tuple':
        tree = (tree, [tree])
    elif wrap == 'adam':
        tree = optax.ScaleByAdamState(count=np.zeros((), np.int32), mu=tree, nu=tree)
    scanned = layout.scan_params(tree)
    _assert_same(layout.unscan_params(scanned), tree)
    assert not layout.is_scanned(layout.unscan_params(scanned))
