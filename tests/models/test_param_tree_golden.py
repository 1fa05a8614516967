"""Golden parameter trees (names, shapes, logical axes) of the tiny presets, as flaxformer keeps them.

Converters, checkpoint surgery and sharding rules depend on these paths; a change here is a change of the
checkpoint format and must be deliberate: regenerate with PLMJAX_REGENERATE_GOLDEN=1 and review the diff.
"""
import json
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), '..', 'testdata', 'models')
PRESETS = {'tiny_encoder': 'encoder', 'tiny_decoder': 'decoder', 'tiny_encoder_decoder': 'encoder_decoder'}


def _param_tree(preset, arch):
    ids = jnp.ones((1, 8), jnp.int32)
    args = (ids, ids) if arch == 'encoder_decoder' else (ids,)
    model = models.build_model(arch, models.PRESETS[preset]())
    boxed = jax.eval_shape(model.init, jax.random.key(0), *args)['params']
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {'/'.join(k.key for k in path): {'shape': list(leaf.value.shape), 'axes': list(leaf.names)}
            for path, leaf in leaves}


@pytest.mark.parametrize('preset', list(PRESETS))
def test_parameter_tree_matches_golden(preset):
    tree = _param_tree(preset, PRESETS[preset])
    path = os.path.join(GOLDEN_DIR, f'{preset}_params.json')
    if os.environ.get('PLMJAX_REGENERATE_GOLDEN'):
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        lines = [f'  {json.dumps(name)}: {json.dumps(tree[name], sort_keys=True)}' for name in sorted(tree)]
        with open(path, 'w') as f:
            f.write('{\n' + ',\n'.join(lines) + '\n}\n')  # one parameter a line: diffs stay readable
    with open(path) as f:
        assert tree == json.load(f)
