"""`plmjax convert --from hf` and `--to hf`: a Hugging Face directory becomes a plmjax checkpoint with its gin
model file and tokenizer, and comes back as a directory transformers loads; user mistakes end in one line."""
import json

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from plmjax import cli, convert  # noqa: E402
from plmjax.convert import parity  # noqa: E402


def run(capsys, *argv):
    code = cli.main(['convert', *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err):
    lines = [line for line in err.strip().splitlines() if line.startswith('plmjax convert: error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def test_from_hf_then_to_hf(capsys, tmp_path):
    reference = parity.tiny_hf_model('gpt2')
    reference.save_pretrained(tmp_path / 'hf')
    (tmp_path / 'hf' / 'vocab.json').write_text(json.dumps({'a': 0}))  # a tokenizer file travels along

    code, out, err = run(capsys, '--from', 'hf', '--model_dir', tmp_path / 'hf', '--out', tmp_path / 'plmjax',
                         '--verify')
    assert code == 0, err
    assert 'family' in out and 'gpt2' in out and 'max_differences' in out
    differences = dict(part.split() for part in out.split('max_differences')[1].strip().split(', '))
    assert max(float(v) for v in differences.values()) < 1e-5
    assert (tmp_path / 'plmjax' / 'tokenizer' / 'vocab.json').is_file()
    gin_file = (tmp_path / 'plmjax' / 'config.gin').read_text()
    assert "MODEL_ARCH = 'decoder'" in gin_file and 'MODEL_CONFIG = @tiny_decoder()' in gin_file

    code, out, err = run(capsys, '--to', 'hf', '--model_dir', tmp_path / 'plmjax', '--out', tmp_path / 'back')
    assert code == 0, err
    assert (tmp_path / 'back' / 'vocab.json').is_file()
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'back').eval()
    batch = parity.sample_batch(reference.config.to_dict())
    before, after = parity.hf_outputs(reference, batch), parity.hf_outputs(reloaded, batch)
    np.testing.assert_array_equal(after['logits'], before['logits'])


def test_unsupported_architecture_is_one_line_naming_the_field(capsys, tmp_path):
    reference = parity.tiny_hf_model('bert')
    reference.save_pretrained(tmp_path / 'hf')
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    (tmp_path / 'hf' / 'config.json').write_text(json.dumps({**config, 'position_embedding_type': 'relative_key'}))
    code, _, err = run(capsys, '--from', 'hf', '--model_dir', tmp_path / 'hf', '--out', tmp_path / 'out')
    assert code == 2
    line = error_line(err)
    assert 'UnsupportedArchitectureError' in line and "position_embedding_type='relative_key'" in line
    assert not (tmp_path / 'out').exists()


def test_unsupported_config_on_export_is_one_line_naming_the_field(capsys, tmp_path):
    from plmjax import models
    from plmjax.convert import common
    config = models.tiny_decoder(query_layer=True, num_decoder_layers=3)  # PanGu-α: no Hugging Face class
    params = {path: np.zeros(leaf.shape, leaf.dtype)
              for path, leaf in common.flatten(common.abstract_params('decoder', config)).items()}
    convert.save_checkpoint(str(tmp_path / 'pangu'), 'decoder', config, common.unflatten(params))
    code, _, err = run(capsys, '--to', 'hf', '--model_dir', tmp_path / 'pangu', '--out', tmp_path / 'hf')
    assert code == 2
    assert 'query_layer=True' in error_line(err)


@pytest.mark.parametrize('direction', ['--from', '--to'])
def test_missing_directory(capsys, tmp_path, direction):
    code, _, err = run(capsys, direction, 'hf', '--model_dir', tmp_path / 'nothing', '--out', tmp_path / 'out')
    assert code == 2
    assert str(tmp_path / 'nothing') in error_line(err)


def test_layout_scanned_then_unrolled(capsys, tmp_path):
    """`plmjax convert --layout scanned|unrolled --model_dir DIR --out DIR`: the round trip returns the checkpoint's
    parameters bit for bit."""
    from plmjax import cli
    from plmjax.convert import common
    from plmjax.models import layout
    from plmjax import models
    config = models.tiny_decoder(vocab_size=99, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=37, max_length=64)
    rng = np.random.RandomState(0)
    params = common.unflatten({path: rng.normal(size=leaf.shape).astype(leaf.dtype)
                               for path, leaf in common.flatten(common.abstract_params('decoder', config)).items()})
    convert.save_checkpoint(str(tmp_path / 'model'), 'decoder', config, params)

    def layout_command(name, source, out):
        assert cli.main(['convert', f'--layout={name}', f'--model_dir={source}', f'--out={out}']) == 0
        return capsys.readouterr().out

    out = layout_command('scanned', tmp_path / 'model', tmp_path / 'scanned')
    assert 'layout' in out and 'scanned' in out
    scanned = convert.load_checkpoint(str(tmp_path / 'scanned'))
    assert scanned.config.scan_layers and layout.is_scanned(scanned.params)
    layout_command('unrolled', tmp_path / 'scanned', tmp_path / 'back')
    back = convert.load_checkpoint(str(tmp_path / 'back'))
    assert not back.config.scan_layers
    flat, back_flat = common.flatten(params), common.flatten(back.params)
    assert flat.keys() == back_flat.keys() and all(np.array_equal(flat[p], back_flat[p]) for p in flat)
