"""LoRA and Houlsby adapters: identity at init on every family, hand-computed forward passes, merging."""
import jax
import numpy as np
import pytest
import scipy.special
from flax import linen as nn

from plmjax import peft
from plmjax.layers import mlp
from plmjax.layers.dense import Projection
from tests.peft.helpers import assert_outputs_equal, init_params, model_and_inputs, randomize

ARCHS = ('encoder', 'encoder_classifier', 'decoder', 'encoder_decoder')


@pytest.mark.parametrize('method', ['lora', 'adapter'])
@pytest.mark.parametrize('arch', ARCHS)
def test_identity_at_init(arch, method):
    """B = 0 (LoRA), up-projection = 0 (adapters): the wrapped model computes exactly the base model."""
    module, args, kwargs = model_and_inputs(arch)
    every_projection = {'targets': ('query', 'key', 'value', 'out', 'wi', 'wo')} if method == 'lora' else {}
    wrapped = peft.wrap(module, method, **every_projection)
    params = init_params(wrapped, args, kwargs)
    assert set(params) == {'base', method}
    assert jax.tree.structure(params['base']) == jax.tree.structure(init_params(module, args, kwargs))
    assert_outputs_equal(wrapped.apply({'params': params}, *args, **kwargs),
                         module.apply({'params': params['base']}, *args, **kwargs))


def test_identity_with_remat_and_encoder_decoder_methods():
    """Rematerialized layers (nn.remat) and EncoderDecoderModel's encode/decode go through the wrapper too."""
    module, args, kwargs = model_and_inputs('encoder_decoder', remat_policy='full')
    wrapped = peft.wrap(module, 'lora', rank=2)
    params = init_params(wrapped, args, kwargs)
    params = {**params, 'lora': randomize(params['lora'])}
    merged = peft.merge_lora(params, peft.options('lora', rank=2))
    encoded = wrapped.apply({'params': params}, args[0], method=wrapped.encode)
    np.testing.assert_allclose(encoded, module.apply({'params': merged}, args[0], method=module.encode), atol=1e-5)
    decoded = wrapped.apply({'params': params}, encoded, args[1], encoder_mask=args[0] != 0, method=wrapped.decode)
    reference = module.apply({'params': merged}, encoded, args[1], encoder_mask=args[0] != 0, method=module.decode)
    assert_outputs_equal(decoded, reference, atol=1e-5)


class _TwoProjections(nn.Module):
    """A Dense 'query' [emb -> 5] and a Projection 'out' over two input axes [3, 4] -> [6]."""

    @nn.compact
    def __call__(self, x):  # x [batch, 12]
        q = nn.Dense(5, name='query')(x)
        out = Projection(features=(6,), kernel_axes=('heads', 'kv', 'embed'), num_input_axes=2, name='out')(
            x.reshape(x.shape[0], 3, 4))
        return {'q': q, 'out': out}


def test_lora_forward_equals_hand_computation():
    """y = x·(W + (alpha/r)·A·B) + b for a Dense and a two-input-axis Projection, in numpy."""
    module = _TwoProjections()
    x = jax.random.normal(jax.random.key(0), (3, 12))
    wrapped = peft.wrap(module, 'lora', rank=2, alpha=3.0, targets=('query', 'out'))
    params = init_params(wrapped, (x,), {})
    params = {**params, 'lora': randomize(params['lora'], scale=0.5)}
    outputs = wrapped.apply({'params': params}, x)
    p = jax.tree.map(np.asarray, params)
    scale, xn = 3.0 / 2, np.asarray(x, np.float64)
    q = p['lora']['query']
    expected_q = xn @ (p['base']['query']['kernel'] + scale * q['lora_a'] @ q['lora_b']) + p['base']['query']['bias']
    o = p['lora']['out']  # lora_a [3, 4, 2], lora_b [2, 6]
    assert o['lora_a'].shape == (3, 4, 2) and o['lora_b'].shape == (2, 6)
    kernel = p['base']['out']['kernel'].reshape(12, 6) + scale * o['lora_a'].reshape(12, 2) @ o['lora_b']
    expected_out = xn @ kernel + p['base']['out']['bias']
    np.testing.assert_allclose(outputs['q'], expected_q, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs['out'], expected_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', ['encoder_classifier', 'decoder'])
def test_lora_merged_model_equals_wrapped(arch):
    """merge_lora folds W + s·A·B (checked in numpy) into the base; the plain model then equals the wrapped one."""
    module, args, kwargs = model_and_inputs(arch)
    options = peft.options('lora', rank=4, alpha=8.0, targets=('query', 'value', 'wo'))
    wrapped = peft.wrap(module, 'lora', rank=4, alpha=8.0, targets=('query', 'value', 'wo'))
    params = init_params(wrapped, args, kwargs)
    params = {**params, 'lora': randomize(params['lora'])}
    merged = peft.merge_lora(params, options)
    stack = 'bert' if arch == 'encoder_classifier' else None
    layer = ((stack,) if stack else ()) + ('encoder' if arch != 'decoder' else 'decoder', 'layers_1')

    def at(tree, *path):
        for key in path:
            tree = tree[key]
        return np.asarray(tree)

    a, b = at(params['lora'], *layer, 'mlp', 'wo', 'lora_a'), at(params['lora'], *layer, 'mlp', 'wo', 'lora_b')
    np.testing.assert_allclose(at(merged, *layer, 'mlp', 'wo', 'kernel'),
                               at(params['base'], *layer, 'mlp', 'wo', 'kernel') + 2.0 * a @ b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(at(merged, *layer, 'mlp', 'wi', 'kernel'),
                                  at(params['base'], *layer, 'mlp', 'wi', 'kernel'))
    assert_outputs_equal(wrapped.apply({'params': params}, *args, **kwargs),
                         module.apply({'params': merged}, *args, **kwargs), atol=1e-5)


def test_adapter_forward_equals_hand_computation():
    """An adapter on an MLP sublayer: h + up(gelu(down(h))) with h = MLP(x), in numpy."""
    module = mlp.Mlp(mlp_dim=16, activation='relu')
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    wrapped = peft.wrap(module, 'adapter', bottleneck=3)
    params = init_params(wrapped, (x,), {})
    params = {**params, 'adapter': randomize(params['adapter'], scale=0.5)}
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    xn, base = np.asarray(x, np.float64), p['base']
    h = np.maximum(xn @ base['wi']['kernel'] + base['wi']['bias'], 0) @ base['wo']['kernel'] + base['wo']['bias']
    adapter = p['adapter']
    z = h @ adapter['down']['kernel'] + adapter['down']['bias']
    gelu = 0.5 * z * (1 + scipy.special.erf(z / np.sqrt(2)))
    expected = h + gelu @ adapter['up']['kernel'] + adapter['up']['bias']
    np.testing.assert_allclose(wrapped.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-5)


def test_adapter_placement_and_sizes():
    """Houlsby: one bottleneck after every attention and every MLP; Pfeiffer placement: after the MLP only."""
    module, args, kwargs = model_and_inputs('encoder_decoder')
    houlsby = init_params(peft.wrap(module, 'adapter', bottleneck=8), args, kwargs)['adapter']
    # encoder: 2 layers x (self-attention, mlp); decoder: 2 layers x (self-, cross-attention, mlp)
    assert len(jax.tree.leaves(houlsby)) == 4 * (2 * 2 + 2 * 3)
    decoder_layer = houlsby['decoder']['layers_0']
    assert set(decoder_layer) == {'self_attention', 'cross_attention', 'mlp'}
    assert decoder_layer['mlp']['down']['kernel'].shape == (64, 8)
    assert not np.any(decoder_layer['mlp']['up']['kernel'])  # zero-initialized: the identity
    pfeiffer = init_params(peft.wrap(module, 'adapter', sublayers=('mlp',)), args, kwargs)['adapter']
    assert set(pfeiffer['decoder']['layers_1']) == {'mlp'}


def test_option_errors():
    module, _, _ = model_and_inputs('encoder')
    with pytest.raises(ValueError, match='Unknown PEFT method'):
        peft.wrap(module, 'bitfit')
    with pytest.raises(ValueError, match='lora.rank must be a positive integer'):
        peft.wrap(module, 'lora', rank=0)
    with pytest.raises(ValueError, match='adapter.sublayers'):
        peft.wrap(module, 'adapter', sublayers=('ffn',))
    with pytest.raises(ValueError, match='already wrapped'):
        peft.wrap(peft.wrap(module, 'lora'), 'adapter')


def test_gin_binds_hyperparameters():
    """The methods' options are gin configurables named like them, registered by plmjax.launch (gin's edge)."""
    import gin
    from plmjax import launch
    with gin.unlock_config():
        gin.parse_config(['lora.rank = 3', "lora.targets = ('query',)", 'prompt_tuning.length = 4'])
    try:
        bound = launch.PEFT_OPTIONS['lora']()
        assert bound == peft.LoraOptions(rank=3, targets=('query',))
        assert peft.options('lora', bound, rank=5).rank == 5  # keyword arguments win over gin
        module, args, kwargs = model_and_inputs('encoder')
        lora = init_params(peft.wrap(module, 'lora', bound), args, kwargs)['lora']
        assert set(lora['encoder']['layers_0']['self_attention']) == {'query'}
        assert lora['encoder']['layers_0']['self_attention']['query']['lora_a'].shape == (64, 3)
        prompt = init_params(peft.wrap(module, 'prompt_tuning', launch.PEFT_OPTIONS['prompt_tuning']()), args,
                             kwargs)['prompt_tuning']
        assert prompt['encoder']['prompt'].shape == (4, 64)
    finally:
        gin.clear_config()
    assert launch.PEFT_OPTIONS['lora']().rank == 8 and peft.options('lora').rank == 8


@pytest.mark.parametrize('method', ['lora', 'adapter'])
@pytest.mark.parametrize('arch', ['encoder_classifier', 'decoder', 'encoder_decoder'])
def test_scanned_model_equals_unrolled(arch, method):
    """On a scanned base (nn.scan over the layers) the method's parameters carry the layers axis: the wrapped
    scanned model with layout.scan_params of the unrolled parameters computes the unrolled model's outputs, and its
    gradients are the unrolled gradients scanned."""
    from plmjax.models import layout
    from tests.peft.helpers import FLOAT64, assert_close_to_scale, assert_scanned_init_matches, scanned_twin
    with jax.enable_x64(True):  # float64: the same numbers to ~1e-14 (float32: its last bits)
        options = {'targets': ('query', 'value', 'wo'), 'rank': 2} if method == 'lora' else {'bottleneck': 8}
        module, args, kwargs = model_and_inputs(arch, **FLOAT64)
        wrapped = peft.wrap(module, method, **options)
        params = init_params(wrapped, args, kwargs)
        params = {**params, method: randomize(params[method], scale=0.3)}
        twin, scanned, _, _ = scanned_twin(arch, params, method, FLOAT64, **options)
        assert layout.is_scanned(scanned[method])
        assert_scanned_init_matches(twin, args, kwargs, scanned, method)
        outputs = wrapped.apply({'params': params}, *args, **kwargs)
        base = module.apply({'params': params['base']}, *args, **kwargs)
        assert np.abs(np.asarray(outputs['logits']) - np.asarray(base['logits'])).max() > 1e-3  # the method acts
        assert_close_to_scale(twin.apply({'params': scanned}, *args, **kwargs), outputs, rtol=1e-12)

        def loss(model):
            return lambda p: jax.numpy.sum(model.apply({'params': p}, *args, **kwargs)['logits'] ** 2)
        grads = layout.scan_params(jax.grad(loss(wrapped))(params)[method])
        assert_close_to_scale(jax.grad(loss(twin))(scanned)[method], grads, rtol=1e-12)


def test_merge_lora_on_a_scanned_model():
    """merge_lora of scanned parameters is the unrolled merge, scanned; the plain scanned model then equals the
    wrapped one."""
    from plmjax.models import layout
    from tests.peft.helpers import assert_close_to_scale, scanned_twin
    options = dict(rank=4, alpha=8.0, targets=('query', 'value', 'wo'))
    module, args, kwargs = model_and_inputs('decoder')
    params = init_params(peft.wrap(module, 'lora', **options), args, kwargs)
    params = {**params, 'lora': randomize(params['lora'])}
    twin, scanned, _, _ = scanned_twin('decoder', params, 'lora', **options)
    merged = peft.merge_lora(scanned, peft.options('lora', **options))
    expected = layout.scan_params(peft.merge_lora(params, peft.options('lora', **options)))
    assert jax.tree.structure(merged) == jax.tree.structure(expected)
    for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(merged)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    plain, _, _ = model_and_inputs('decoder', scan_layers=True)
    assert_close_to_scale(plain.apply({'params': merged}, *args, **kwargs),
                          twin.apply({'params': scanned}, *args, **kwargs), rtol=1e-5)
