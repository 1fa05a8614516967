"""Every family against its transformers PyTorch reference, through real checkpoint directories.

A small random transformers model (every float tensor perturbed, so that a swapped norm or a missing bias shows)
is saved with `save_pretrained`, read by `plmjax.convert.load_hf`, and both run one batch with padding in
float32: last hidden states agree within 1e-5 absolute, logits within 1e-5 of their largest magnitude, and for
decoders plmjax's cached incremental decoding (a 4-token prompt, then one token a step) matches the reference's
full forward pass as closely. Then HF -> plmjax -> HF: the exported directory loads with `from_pretrained` and
computes what the original did within 1e-6. `python scripts/hf_parity_report.py` prints the differences.
"""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from plmjax import convert  # noqa: E402
from plmjax.convert import parity  # noqa: E402

HIDDEN_ATOL = 1e-5  # absolute, hidden states
LOGITS_RTOL = 1e-5  # relative to the largest |logit|
ROUND_TRIP_ATOL = 1e-6
FAMILY = {'t5_v1_1': 't5'}  # the Hugging Face family each tiny reference is read as
UNUSED = {'bert': ['cls.seq_relationship.bias', 'cls.seq_relationship.weight']}  # BERT's NSP head: no place


def check_differences(diffs: dict, architecture: str) -> None:
    expected = {'hidden_states', 'logits'}
    if architecture in ('decoder', 'encoder_decoder'):
        expected.add('cached_logits')
    if architecture == 'encoder_decoder':
        expected.add('encoder_hidden_states')
    assert expected <= set(diffs), diffs
    for name, value in diffs.items():
        assert value <= (LOGITS_RTOL if name.endswith('logits') else HIDDEN_ATOL), (name, diffs)


# The ELECTRA discriminator is checked with its generator in test_electra_generator_and_discriminator_pair.
@pytest.mark.parametrize('name', [name for name in parity.TINY_MODELS if name != 'electra_discriminator'])
def test_matches_transformers_and_round_trips(name, tmp_path):
    reference = parity.tiny_hf_model(name)
    reference.save_pretrained(tmp_path / 'hf')
    converted = convert.load_hf(str(tmp_path / 'hf'))
    assert converted.family == FAMILY.get(name, name)
    assert converted.unused == UNUSED.get(name, [])
    assert converted.initialized == []
    check_differences(parity.compare(reference, converted), converted.architecture)

    convert.save_hf(str(tmp_path / 'out'), converted.config, converted.params, family=converted.family,
                    architecture=converted.architecture)
    reloaded = type(reference).from_pretrained(tmp_path / 'out').eval()
    batch = parity.sample_batch(reference.config.to_dict())
    before, after = parity.hf_outputs(reference, batch), parity.hf_outputs(reloaded, batch)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=ROUND_TRIP_ATOL, rtol=0, err_msg=key)


@pytest.mark.parametrize('name', ['bert', 'gpt2', 't5', 'bart'])
def test_scanned_layout_matches_transformers_and_round_trips(name, tmp_path):
    """`load_hf(..., scan_layers=True)`: the scanned tree (the unrolled one through layout.scan_params) runs the
    nn.scan stack and matches the reference at the same tolerances, cached decoding included; `save_hf` takes the
    scanned tree back to the same Hugging Face tensors."""
    from plmjax.models import layout
    reference = parity.tiny_hf_model(name)
    reference.save_pretrained(tmp_path / 'hf')
    converted = convert.load_hf(str(tmp_path / 'hf'), scan_layers=True)
    unrolled = convert.load_hf(str(tmp_path / 'hf'))
    assert converted.config.scan_layers and not unrolled.config.scan_layers
    assert layout.is_scanned(converted.params) and not layout.is_scanned(unrolled.params)
    expected = convert.common.flatten(layout.scan_params(unrolled.params))
    assert convert.common.flatten(converted.params).keys() == expected.keys()
    for path, value in convert.common.flatten(converted.params).items():
        assert np.array_equal(value, expected[path]), path
    check_differences(parity.compare(reference, converted), converted.architecture)

    convert.save_hf(str(tmp_path / 'out'), converted.config, converted.params, family=converted.family,
                    architecture=converted.architecture)
    _, exported = convert.read_hf_dir(str(tmp_path / 'out'))
    _, original = convert.to_hf(unrolled.config, unrolled.params, family=unrolled.family,
                                architecture=unrolled.architecture)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert np.array_equal(exported[key], value), key


def test_electra_generator_and_discriminator_pair(tmp_path):
    """An ELECTRA discriminator directory with its generator in `generator/` is one plmjax ElectraModel: the
    generator's MLM logits on the masked input and the discriminator's replaced-token logits on the original
    tokens equal the two transformers models'; the pair is written back the same way."""
    import jax
    import jax.numpy as jnp
    from plmjax import models
    discriminator = parity.tiny_hf_model('electra_discriminator')
    quarter = dict(hidden_size=parity.WIDTH // 4, num_attention_heads=parity.HEADS // 4,
                   intermediate_size=parity.MLP // 4)  # ElectraModel's generator: generator_size=0.25
    config = transformers.ElectraConfig(**{**discriminator.config.to_dict(), **quarter})
    generator = parity.perturb(transformers.ElectraForMaskedLM(config), seed=1)
    with torch.no_grad():  # ElectraModel shares one token table
        generator.electra.embeddings.word_embeddings.weight.copy_(
            discriminator.electra.embeddings.word_embeddings.weight)
    discriminator.save_pretrained(tmp_path / 'hf')
    generator.save_pretrained(tmp_path / 'hf' / 'generator')

    converted = convert.load_hf(str(tmp_path / 'hf'))
    assert (converted.architecture, converted.initialized) == ('electra', [])
    batch = parity.sample_batch(discriminator.config.to_dict())
    masked = batch.ids.copy()
    masked[:, 3] = 5  # a "[MASK]" at position 3: the generator reads it, the discriminator the original tokens
    model = models.build_model('electra', converted.config)
    ours = jax.jit(lambda p, m, i, mask: model.apply({'params': p}, m, original_ids=i, input_mask=mask))(
        converted.params, jnp.asarray(masked), jnp.asarray(batch.ids), jnp.asarray(batch.mask))
    with torch.no_grad():
        generator_logits = generator(torch.tensor(masked), attention_mask=torch.tensor(batch.mask)).logits.numpy()
        rtd_logits = discriminator(torch.tensor(batch.ids), attention_mask=torch.tensor(batch.mask)).logits.numpy()
    real = batch.mask.astype(bool)
    for got, want in ((ours['logits'], generator_logits), (ours['rtd_logits'], rtd_logits)):
        assert np.abs(np.asarray(got)[real] - want[real]).max() <= LOGITS_RTOL * np.abs(want[real]).max()

    convert.save_hf(str(tmp_path / 'out'), converted.config, converted.params, family=converted.family,
                    architecture='electra')
    again = convert.load_hf(str(tmp_path / 'out'))
    for path, value in convert.common.flatten(converted.params).items():
        assert np.array_equal(convert.common.flatten(again.params)[path], value), path


@pytest.mark.slow
def test_nezha_matches_transformers4_and_round_trips(tmp_path):
    """NEZHA's reference is transformers 4.57.6's NezhaForMaskedLM (gone from transformers 5), installed once
    with `pip install --no-deps --target` under the plmjax cache and run in a child process."""
    batch = parity.sample_batch({'vocab_size': parity.VOCAB, 'pad_token_id': 0})
    reference = parity.nezha_reference('build', str(tmp_path / 'hf'), batch, str(tmp_path))
    converted = convert.load_hf(str(tmp_path / 'hf'))
    assert (converted.family, converted.config.position, converted.config.nezha_max_relative_position) == (
        'nezha', 'nezha_relative', 5)
    assert converted.unused == converted.initialized == []
    check_differences(parity.differences(parity.plmjax_outputs(converted, batch), reference, batch, 'encoder'),
                      'encoder')
    convert.save_hf(str(tmp_path / 'out'), converted.config, converted.params, family='nezha')
    reloaded = parity.nezha_reference('load', str(tmp_path / 'out'), batch, str(tmp_path))
    for key in reference:
        np.testing.assert_allclose(reloaded[key], reference[key], atol=ROUND_TRIP_ATOL, rtol=0, err_msg=key)
