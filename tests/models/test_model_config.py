"""Presets, gin files, build_model, parameter counts of the full-size presets and logical axis names."""
import glob
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plmjax import models  # noqa: E402

GIN_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'gin_configs', 'models')
AXIS_NAMES = {'batch', 'length', 'embed', 'heads', 'kv', 'mlp', 'vocab', 'expert', 'layers', None}


def _arch(config):
    if not config.num_decoder_layers:
        return 'encoder'
    return 'decoder' if not config.num_encoder_layers else 'encoder_decoder'


def _abstract_params(config):
    ids = jnp.ones((1, 8), jnp.int32)
    args = (ids, ids) if _arch(config) == 'encoder_decoder' else (ids,)
    return jax.eval_shape(models.build_model(_arch(config), config).init, jax.random.key(0), *args)['params']


# Parameter counts of the Hugging Face PyTorch models (model.num_parameters(), tied weights counted once).
HF_BERT_BASE_MODEL = 109_482_240  # BertModel incl. pooler
HF_BERT_LARGE_MODEL = 335_141_888
HF_GPT2 = 124_439_808  # GPT2LMHeadModel (tied head)
HF_GPT2_XL = 1_557_611_200
HF_T5_SMALL = 60_506_624  # T5ForConditionalGeneration (tied head)
HF_T5_BASE = 222_903_552
HF_T5_V1_1_SMALL = 76_961_152  # untied head
HF_BART_BASE = 139_420_416  # BartModel; final_logits_bias is a buffer there


def _mlm_head(e, vocab):
    return e * e + e + 2 * e + vocab  # transform dense, its LayerNorm, output bias (decoder weight tied)


def _pangu(vocab, h, layers, length=1024):
    """Closed form: token table, position and query-position tables, per layer 4h^2+4h (attention) +
    8h^2+5h (MLP) + 4h (two LayerNorms), and ln_f."""
    return vocab * h + 2 * length * h + layers * (12 * h * h + 13 * h) + 2 * h


@pytest.mark.parametrize('preset, expected', [
    (models.bert_base, HF_BERT_BASE_MODEL + _mlm_head(768, 30522)),  # ~110M
    (models.bert_large, HF_BERT_LARGE_MODEL + _mlm_head(1024, 30522)),
    (models.gpt2_small, HF_GPT2),
    (models.gpt2_xl, HF_GPT2_XL),
    (models.t5_small, HF_T5_SMALL),
    (models.t5_base, HF_T5_BASE),
    (models.t5_v1_1_small, HF_T5_V1_1_SMALL),
    (models.bart_base, HF_BART_BASE + 50265),  # + final_logits_bias as a parameter
    (models.pangu_alpha_350m, _pangu(40000, 1024, 24)),
    (models.pangu_alpha_2_6b, _pangu(40000, 2560, 32)),
    (models.pangu_alpha_13b, _pangu(40000, 5120, 40)),
])
def test_full_size_parameter_counts(preset, expected):
    assert models.count_params(_abstract_params(preset())) == expected


def test_hf_counts_above_are_what_transformers_builds():
    """The golden counts are checked against transformers itself (on the meta device: no memory, no time)."""
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    with torch.device('meta'):
        built = {
            HF_BERT_BASE_MODEL: transformers.BertModel(transformers.BertConfig()),
            HF_GPT2: transformers.GPT2LMHeadModel(transformers.GPT2Config()),
            HF_T5_SMALL: transformers.T5ForConditionalGeneration(transformers.T5Config()),
            HF_BART_BASE: transformers.BartModel(transformers.BartConfig(
                d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
        }
    for expected, model in built.items():
        assert model.num_parameters() == expected, type(model).__name__


@pytest.mark.parametrize('config', [
    models.tiny_encoder(),
    models.tiny_encoder(embedding_size=32, position='nezha_relative', tie_embeddings=False),
    models.tiny_decoder(query_layer=True, lm_head_bias=True),
    models.tiny_decoder(position='rotary', gated_mlp=True, tie_embeddings=False),
    models.tiny_encoder_decoder(),
    models.tiny_encoder_decoder(position='learned', position_offset=2, tie_embeddings=True, lm_head_bias=True),
], ids=lambda c: c.position)
def test_every_parameter_has_logical_axis_names(config):
    boxed = _abstract_params(config)
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f'{where} has no logical axis names'
        assert len(leaf.names) == len(leaf.value.shape), where
        assert set(leaf.names) <= AXIS_NAMES, f'{where}: {leaf.names}'
        assert len([n for n in leaf.names if n]) == len({n for n in leaf.names if n}), f'{where} repeats an axis'


def test_presets_take_overrides_and_validate():
    config = models.bert_base(max_length=1024, dropout_rate=0.0)
    assert (config.max_length, config.dropout_rate, config.name) == (1024, 0.0, 'bert_base')
    with pytest.raises(ValueError, match=r"TransformerConfig.activation='swish' is not one of"):
        models.tiny_encoder(activation='swish')
    with pytest.raises(ValueError, match='position'):
        models.tiny_encoder(position='alibi')
    with pytest.raises(ValueError, match='query_layer=True needs num_decoder_layers'):
        models.tiny_encoder(query_layer=True)
    with pytest.raises(TypeError):
        models.tiny_encoder(hidden_size=64)  # not a field


def test_build_model_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"Unknown model architecture MODEL_ARCH='seq2seq'.*'encoder_decoder'"):
        models.build_model('seq2seq', models.t5_small())
    with pytest.raises(ValueError, match=r"needs num_encoder_layers >= 1.*'gpt2_small'"):
        models.build_model('encoder_decoder', models.gpt2_small())
    with pytest.raises(TypeError, match='MODEL_CONFIG must be a TransformerConfig'):
        models.build_model('encoder', {'emb_dim': 8})


GIN_FILES = sorted(glob.glob(os.path.join(GIN_DIR, '*.gin')))


@gin.configurable
def _models_gin_probe(arch=gin.REQUIRED, config=gin.REQUIRED):
    return arch, config


@pytest.mark.parametrize('path', GIN_FILES, ids=os.path.basename)
def test_gin_file_binds_a_buildable_model(path):
    gin.clear_config()
    try:
        gin.parse_config_file(path)
        gin.parse_config(['_models_gin_probe.arch = %MODEL_ARCH', '_models_gin_probe.config = %MODEL_CONFIG'])
        arch, config = _models_gin_probe()
    finally:
        gin.clear_config()
    # a file is named after its preset, or is a preset plus overrides (e.g. minilm_l6.gin: `bert_base.emb_dim = 384`)
    overrides = f'{config.name}.' in open(path).read()
    assert config.name == os.path.basename(path)[:-4] or config.name.startswith('tiny_') or overrides
    assert isinstance(models.build_model(arch, config), models.ARCHITECTURES[arch])
    assert _arch(config) == arch


def test_gin_files_cover_every_preset_and_overrides_work():
    names = set()
    for path in GIN_FILES:
        with open(path) as f:
            names |= {line.split('@')[1].split('(')[0] for line in f if line.startswith('MODEL_CONFIG')}
    assert names == set(models.PRESETS)
    gin.clear_config()
    try:
        gin.parse_config_file(os.path.join(GIN_DIR, 'bert_base.gin'))
        gin.parse_config(['bert_base.max_length = 1024', '_models_gin_probe.arch = %MODEL_ARCH',
                          '_models_gin_probe.config = %MODEL_CONFIG'])
        _, config = _models_gin_probe()
    finally:
        gin.clear_config()
    assert config.max_length == 1024


def test_count_params_counts_concrete_and_abstract_trees():
    params = {'a': {'kernel': np.zeros((3, 4))}, 'b': jax.ShapeDtypeStruct((5,), jnp.float32)}
    assert models.count_params(params) == 17
