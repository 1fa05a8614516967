"""Hugging Face directories in the forms transformers writes them: safetensors in bfloat16, sharded safetensors,
and PyTorch `pytorch_model.bin` (which stores tied tensors twice) all read to the same parameters."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from plmjax import convert  # noqa: E402
from plmjax.convert import common, parity  # noqa: E402


@pytest.fixture(scope='module')
def reference():
    return parity.tiny_hf_model('t5')  # tied output layer: the .bin holds lm_head.weight as a copy of shared


def test_sharded_and_pytorch_bin_checkpoints_read_the_same(reference, tmp_path):
    reference.save_pretrained(tmp_path / 'single')
    reference.save_pretrained(tmp_path / 'sharded', max_shard_size='50KB')
    torch.save(reference.state_dict(), tmp_path / 'pytorch_model.bin')
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'pytorch_model.bin').rename(tmp_path / 'bin' / 'pytorch_model.bin')
    (tmp_path / 'bin' / 'config.json').write_text((tmp_path / 'single' / 'config.json').read_text())
    assert (tmp_path / 'sharded' / 'model.safetensors.index.json').is_file()
    single = convert.load_hf(str(tmp_path / 'single'))
    for form in ('sharded', 'bin'):
        other = convert.load_hf(str(tmp_path / form))
        assert other.config == single.config and other.unused == []
        flat, other_flat = common.flatten(single.params), common.flatten(other.params)
        assert all(np.array_equal(flat[p], other_flat[p]) for p in flat), form


def test_bfloat16_checkpoints_read_exactly(tmp_path):
    model = parity.tiny_hf_model('t5').to(torch.bfloat16)
    model.save_pretrained(tmp_path / 'bf16')
    converted = convert.load_hf(str(tmp_path / 'bf16'))
    assert converted.config.param_dtype == 'float32'
    shared = model.shared.weight.detach().float().numpy()  # bfloat16 values, exactly representable in float32
    np.testing.assert_array_equal(converted.params['token_embedder']['embedding'], shared)


def test_a_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / 'config.json').write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match='holds no weights'):
        convert.load_hf(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='has no config.json'):
        convert.load_hf(str(tmp_path / 'nowhere'))
