"""Full-size presets, checked without memory (`jax.eval_shape` on plmjax's side, torch's meta device on the
other): parameter counts equal the published ones, and each preset's Hugging Face export has exactly the tensors,
with exactly the shapes, of the transformers model built from the exported config.json (`to_hf` itself refuses
to leave a plmjax parameter out)."""
import jax
import pytest

from plmjax import convert, models
from plmjax.convert import common

# Published sizes, in millions (BERT: Devlin et al.; GPT-2: 124M as OpenAI's release; T5: Raffel et al.; BART).
PUBLISHED = {'bert_base': 110, 'gpt2_small': 124, 't5_small': 60, 'bart_base': 139}
NSP = {'cls.seq_relationship.weight', 'cls.seq_relationship.bias'}
# preset: (transformers class written, tensors only that class has, tensors only plmjax has)
HF_CLASSES = {
    'bert_base': ('BertForPreTraining', NSP, set()),
    'bert_large': ('BertForPreTraining', NSP, set()),
    # No RoBERTa class has both a pooler and the MLM head; RobertaForMaskedLM skips the pooler when loading.
    'roberta_base': ('RobertaForMaskedLM', set(), {'roberta.pooler.dense.weight', 'roberta.pooler.dense.bias'}),
    'electra_small': ('ElectraForMaskedLM', set(), set()),
    'gpt2_small': ('GPT2LMHeadModel', set(), set()),
    'gpt2_xl': ('GPT2LMHeadModel', set(), set()),
    't5_small': ('T5ForConditionalGeneration', set(), set()),
    't5_base': ('T5ForConditionalGeneration', set(), set()),
    't5_v1_1_small': ('T5ForConditionalGeneration', set(), set()),
    'bart_base': ('BartForConditionalGeneration', set(), set()),
}


@pytest.mark.parametrize('preset, millions', sorted(PUBLISHED.items()))
def test_parameter_counts_equal_the_published_ones(preset, millions):
    config = models.PRESETS[preset]()
    count = models.count_params(common.abstract_params(common.architecture_of(config), config))
    assert abs(count / 1e6 - millions) < 1, count


def exported_shapes(preset, hf_class):
    """(config.json, {key: shape}) of the preset's Hugging Face export, traced, never allocated."""
    config = models.PRESETS[preset]()
    abstract = common.abstract_params(common.architecture_of(config), config)
    written = {}

    def export(params):
        written['config'], state = convert.to_hf(config, params, hf_class=hf_class)
        return state

    state = jax.eval_shape(export, abstract)
    return written['config'], {key: tuple(value.shape) for key, value in state.items()}


@pytest.mark.parametrize('preset', sorted(HF_CLASSES))
def test_export_has_the_tensors_of_the_transformers_model(preset):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    hf_class, only_hf, only_plmjax = HF_CLASSES[preset]
    hf_config, exported = exported_shapes(preset, hf_class)
    assert only_plmjax <= set(exported)
    shapes = {k: v for k, v in exported.items() if k not in only_plmjax}
    fields = {k: v for k, v in hf_config.items() if k not in ('model_type', 'architectures', 'dtype')}
    with torch.device('meta'):
        model = getattr(transformers, hf_class)(transformers.AutoConfig.for_model(hf_config['model_type'], **fields))
    hf_shapes = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    family = convert.hf.family_of(hf_config, hf_shapes)
    tied_or_buffers = common.ignored(hf_shapes, family.ignored)
    assert {k: hf_shapes.get(k) for k in shapes} == shapes
    assert set(hf_shapes) - set(shapes) - tied_or_buffers == only_hf
