"""plmjax -> Hugging Face -> plmjax returns every parameter bit for bit, for every family and its variants
(tied and untied outputs, shared layers, factorized embeddings, gated MLPs); the family is found from the config
alone; converted checkpoints round-trip through Orbax and their gin model file rebuilds the same config; and a
checkpoint or config one side cannot represent fails with an error naming the field."""
import dataclasses

import gin
import numpy as np
import pytest

from plmjax import convert, models
from plmjax.convert import common
from plmjax.train import checkpoint as checkpoint_lib

SMALL = dict(vocab_size=99, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=37, max_length=64)
# name: (plmjax architecture, config, the Hugging Face family it is written as, family asked for)
CASES = {
    'bert': ('encoder', models.tiny_encoder(**SMALL), 'bert', None),
    'bert_untied': ('encoder', models.tiny_encoder(**SMALL, tie_embeddings=False, pooler=False), 'bert', None),
    'roberta': ('encoder', models.roberta_base(**SMALL, num_encoder_layers=2), 'roberta', None),
    'electra': ('encoder', models.electra_small(**SMALL, embedding_size=16, num_encoder_layers=2), 'electra', None),
    'albert': ('encoder', models.tiny_encoder(**SMALL, embedding_size=16, shared_layers=True, num_encoder_layers=3,
                                              activation='gelu_new'), 'albert', None),
    'nezha': ('encoder', models.nezha_base(**SMALL, num_encoder_layers=2, nezha_max_relative_position=8), 'nezha',
              None),
    'gpt2': ('decoder', models.tiny_decoder(**SMALL), 'gpt2', None),
    'gpt2_untied': ('decoder', models.tiny_decoder(**SMALL, tie_embeddings=False), 'gpt2', None),
    't5': ('encoder_decoder', models.t5_small(**SMALL, num_encoder_layers=2, num_decoder_layers=3), 't5', None),
    't5_v1_1': ('encoder_decoder', models.tiny_encoder_decoder(**SMALL), 't5', None),
    't5_tied_unscaled': ('encoder_decoder', models.tiny_encoder_decoder(**SMALL, tie_embeddings=True), 't5', None),
    'mt5': ('encoder_decoder', models.tiny_encoder_decoder(**SMALL), 'mt5', 'mt5'),
    'bart': ('encoder_decoder', models.bart_base(**SMALL, num_encoder_layers=2, num_decoder_layers=3), 'bart', None),
    'bart_untied': ('encoder_decoder', models.bart_base(**SMALL, num_encoder_layers=1, num_decoder_layers=1,
                                                        tie_embeddings=False, scale_embeddings=True), 'bart', None),
}


def assert_identical(params, other):
    flat, other_flat = common.flatten(params), common.flatten(other)
    assert flat.keys() == other_flat.keys()
    for path, value in flat.items():
        assert other_flat[path].dtype == value.dtype and np.array_equal(other_flat[path], value), path


def random_params(arch, config, seed=0):
    """Every parameter of the model's tree drawn at random (norm scales and biases too)."""
    rng = np.random.RandomState(seed)
    return common.unflatten({path: rng.normal(0, 1, leaf.shape).astype(leaf.dtype)
                             for path, leaf in common.flatten(common.abstract_params(arch, config)).items()})


@pytest.mark.parametrize('name', list(CASES))
def test_plmjax_to_hf_to_plmjax_is_bit_identical(name):
    arch, config, family, asked = CASES[name]
    params = random_params(arch, config)
    hf_config, state = convert.to_hf(config, params, family=asked)
    assert hf_config['model_type'] == family
    back = convert.from_hf(hf_config, state)
    assert (back.architecture, back.family, back.initialized, back.unused) == (arch, family, [], [])
    assert common.config_differences(back.config, config) == {}
    assert_identical(params, back.params)


def test_electra_model_round_trips_through_a_directory_pair(tmp_path):
    """ElectraModel: the discriminator in <dir>, its generator in <dir>/generator."""
    config = models.electra_small(**SMALL, embedding_size=16, num_encoder_layers=2)
    params = random_params('electra', config)
    family = convert.save_hf(str(tmp_path), config, params, architecture='electra')
    assert family == 'electra_discriminator'
    assert (tmp_path / 'generator' / 'config.json').is_file()
    back = convert.load_hf(str(tmp_path))
    assert (back.architecture, back.initialized, back.unused) == ('electra', [], [])
    assert_identical(params, back.params)


def test_checkpoint_and_gin_file_round_trip(tmp_path):
    arch, config, family, _ = CASES['albert']
    params = random_params(arch, config)
    convert.save_checkpoint(str(tmp_path), arch, config, params, hf_family=family, hf_class='AlbertModel',
                            source='test')
    restored = convert.load_checkpoint(str(tmp_path))
    assert (restored.architecture, restored.family, restored.hf_class) == (arch, family, 'AlbertModel')
    assert restored.config == dataclasses.replace(config, name=restored.config.name)
    assert_identical(params, restored.params)
    assert_identical(params, convert.load_checkpoint(str(tmp_path / 'checkpoints' / '0')).params)

    gin.clear_config()
    try:
        @gin.configurable('probe')
        def probe(arch=gin.REQUIRED, config=gin.REQUIRED):
            return arch, config
        gin.parse_config_files_and_bindings([str(tmp_path / 'config.gin')],
                                            ['probe.arch = %MODEL_ARCH', 'probe.config = %MODEL_CONFIG'])
        assert probe() == (arch, restored.config)
    finally:
        gin.clear_config()


def test_reads_checkpoints_written_by_training(tmp_path):
    """A `plmjax train` checkpoint (a TrainState with optimizer moments) exports its parameters."""
    arch, config, _, _ = CASES['gpt2']
    params = random_params(arch, config)
    state = {'step': np.int32(7), 'params': params, 'opt_state': [{'mu': params}], 'rng': np.zeros(2, np.uint32)}
    with checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'), async_save=False) as checkpointer:
        checkpointer.save(7, state, data_position=3, config={'model_config': dataclasses.asdict(config)})
    restored = convert.load_checkpoint(str(tmp_path))
    assert (restored.architecture, restored.family) == ('decoder', None)
    assert_identical(params, restored.params)
    hf_config, _ = convert.to_hf(restored.config, restored.params)
    assert hf_config['model_type'] == 'gpt2'


# ------------------------------------------------------------------------------------------ what cannot be

def hf_dicts(name):
    arch, config, _, asked = CASES[name]
    return convert.to_hf(config, random_params(arch, config), family=asked)


@pytest.mark.parametrize('name, field, value, message', [
    ('bert', 'position_embedding_type', 'relative_key', 'position_embedding_type'),
    ('bert', 'hidden_act', 'gelu_fast', 'hidden_act'),
    ('gpt2', 'scale_attn_by_inverse_layer_idx', True, 'scale_attn_by_inverse_layer_idx'),
    ('gpt2', 'add_cross_attention', True, 'add_cross_attention'),
    ('albert', 'num_hidden_groups', 2, 'num_hidden_groups'),
    ('t5', 'feed_forward_proj', 'gated-mish', 'feed_forward_proj'),
    ('bart', 'decoder_attention_heads', 2, 'encoder_attention_heads=4 but decoder_attention_heads=2'),
    ('bart', 'normalize_before', True, 'normalize_before'),
    ('roberta', 'model_type', 'llama', "model_type 'llama'"),
])
def test_unrepresentable_checkpoints_name_the_field(name, field, value, message):
    hf_config, state = hf_dicts(name)
    with pytest.raises(convert.UnsupportedArchitectureError, match=message):
        convert.from_hf({**hf_config, field: value}, state)


def test_weights_of_another_config_are_a_clear_error():
    hf_config, state = hf_dicts('bert')
    with pytest.raises(ValueError, match=r'encoder/layers_0/mlp/wi/kernel has shape \(32, 37\) in the checkpoint '
                                         r'but the config.json describes \(32, 40\)'):
        convert.from_hf({**hf_config, 'intermediate_size': 40}, state)
    del state['bert.encoder.layer.1.output.dense.weight']
    with pytest.raises(ValueError, match=r'lacks the tensors of \[.encoder/layers_1/mlp/wo/kernel.\]'):
        convert.from_hf(hf_config, state)


@pytest.mark.parametrize('config, arch, message', [
    (models.tiny_decoder(query_layer=True, num_decoder_layers=3), 'decoder', 'query_layer=True'),
    (models.tiny_decoder(position='rotary'), 'decoder', "position='rotary'"),
    (models.tiny_encoder(pre_norm=True), 'encoder', 'pre_norm=True'),
    (models.tiny_encoder_decoder(norm='layernorm'), 'encoder_decoder', "norm='layernorm'"),
])
def test_unrepresentable_configs_name_the_field(config, arch, message):
    with pytest.raises(convert.UnsupportedArchitectureError, match=message):
        convert.to_hf(config, random_params(arch, config))


def test_a_family_of_another_architecture_is_refused():
    config = models.tiny_encoder(**SMALL)
    with pytest.raises(convert.UnsupportedArchitectureError,
                       match="No Hugging Face family gpt2 converts plmjax 'encoder'"):
        convert.to_hf(config, random_params('encoder', config), family='gpt2')


# ------------------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize('name', ['bert', 't5'])
def test_checkpoint_converts_between_layouts_and_back_exactly(name, tmp_path):
    """unrolled -> scanned -> unrolled through `convert_layout`: the scanned checkpoint holds layout.scan_params of
    the parameters under a config with scan_layers=True (its config.gin says so; restoring it builds the scanned
    model's tree, which tests/models/test_scan_layers.py runs against the unrolled one); converted back, every
    parameter and the config are the original's, bit for bit."""
    from plmjax.models import layout
    arch, config, family, _ = CASES[name]
    params = random_params(arch, config)
    convert.save_checkpoint(str(tmp_path / 'unrolled'), arch, config, params, hf_family=family, source='test')
    (tmp_path / 'unrolled' / 'tokenizer').mkdir()
    (tmp_path / 'unrolled' / 'tokenizer' / 'vocab.txt').write_text('[PAD]\n')

    scanned = convert.convert_layout(str(tmp_path / 'unrolled'), str(tmp_path / 'scanned'), scan_layers=True)
    restored = convert.load_checkpoint(str(tmp_path / 'scanned'))
    assert restored.config.scan_layers and restored.family == family
    assert_identical(layout.scan_params(params), restored.params)
    assert_identical(scanned.params, restored.params)
    assert 'scan_layers = True' in (tmp_path / 'scanned' / 'config.gin').read_text()
    assert (tmp_path / 'scanned' / 'tokenizer' / 'vocab.txt').is_file()

    convert.convert_layout(str(tmp_path / 'scanned'), str(tmp_path / 'back'), scan_layers=False)
    back = convert.load_checkpoint(str(tmp_path / 'back'))
    assert back.config == dataclasses.replace(config, name=back.config.name)
    assert_identical(params, back.params)
    assert 'scan_layers' not in (tmp_path / 'back' / 'config.gin').read_text()


def test_layout_conversion_keeps_the_head_options_of_a_fine_tuned_checkpoint(tmp_path):
    from plmjax.models import layout
    config = models.tiny_encoder(**SMALL)
    abstract = common.abstract_params('encoder_classifier', config, num_labels=3)
    params = common.unflatten({path: np.full(leaf.shape, 0.5, leaf.dtype)
                               for path, leaf in common.flatten(abstract).items()})
    metadata = {'model_config': dataclasses.asdict(config), 'architecture': 'encoder_classifier',
                'head_options': {'num_labels': 3}}
    with checkpoint_lib.Checkpointer(str(tmp_path / 'run' / 'checkpoints'), async_save=False) as checkpointer:
        checkpointer.save(5, {'params': params, 'step': np.int32(5)}, data_position=0, config=metadata)
    convert.convert_layout(str(tmp_path / 'run'), str(tmp_path / 'scanned'), scan_layers=True)
    restored = convert.load_checkpoint(str(tmp_path / 'scanned'))
    assert restored.architecture == 'encoder_classifier' and restored.config.scan_layers
    assert_identical(layout.scan_params(params), restored.params)
