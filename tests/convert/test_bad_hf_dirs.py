"""A broken Hugging Face directory handed to `plmjax convert` (issue 18): a truncated or garbled weights file, a
garbled / non-UTF-8 / non-object config.json, a missing or mistyped config field, a shard the index names but the
folder lacks. Each ends in one line naming the file and the fix (exit status 2), never a raw traceback."""
import json
import shutil

import gin
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from plmjax import cli  # noqa: E402
from plmjax.convert import parity  # noqa: E402
from tests import reliability  # noqa: E402


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf')
    parity.tiny_hf_model('bert').save_pretrained(root / 'single')
    parity.tiny_hf_model('bert').save_pretrained(root / 'sharded', max_shard_size='20KB')
    return root


def _edit_config(path, change):
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


BREAKS = {
    'truncated weights': ('single', lambda d: d.joinpath('model.safetensors').write_bytes(
        d.joinpath('model.safetensors').read_bytes()[:5000]), 'model.safetensors is not a readable safetensors file'),
    'garbage weights': ('single', lambda d: d.joinpath('model.safetensors').write_bytes(b'garbage'),
                        'model.safetensors is not a readable safetensors file'),
    'garbled config': ('single', lambda d: d.joinpath('config.json').write_text('{"model_type": "bert", \n'),
                       'config.json, line 2: malformed JSON'),
    'non-UTF-8 config': ('single', lambda d: d.joinpath('config.json').write_bytes(b'\xff\xfe{}'),
                         'config.json, line 1: not UTF-8 text'),
    'config not an object': ('single', lambda d: d.joinpath('config.json').write_text('[1, 2]'),
                             'config.json: a JSON list, not an object'),
    'missing field': ('single', lambda d: _edit_config(d / 'config.json', lambda c: c.pop('num_attention_heads')),
                      "config.json lacks the field 'num_attention_heads'"),
    'mistyped field': ('single', lambda d: _edit_config(d / 'config.json',
                                                        lambda c: c.update(num_attention_heads='2')),
                       'config.json has a value of the wrong type'),
    'missing shard': ('sharded', lambda d: next(d.glob('model-0000*.safetensors')).unlink(),
                      'does not exist: the download is incomplete'),
    'garbled index': ('sharded', lambda d: d.joinpath('model.safetensors.index.json').write_text('{"weight_map": 3}'),
                      'model.safetensors.index.json: not a safetensors index'),
}


@pytest.mark.parametrize('name', BREAKS)
@reliability.fault_case('bad input file (hand-made)', lambda name, **_: f'Hugging Face dir: {name}')
def test_broken_hf_directory_gives_one_line(good, tmp_path, capsys, name):
    form, breaks, expected = BREAKS[name]
    model_dir = tmp_path / form
    shutil.copytree(good / form, model_dir)
    breaks(model_dir)
    gin.clear_config()
    code = cli.main(['convert', '--from', 'hf', '--model_dir', str(model_dir), '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('plmjax convert: error:')]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert expected in lines[0], lines[0]
    assert not (tmp_path / 'out').exists()  # nothing half-written
