"""Golden parameter trees: for every preset, tests/testdata/models/<preset>_params.json holds each parameter's
path, shape and logical axis names. Checkpoints, converters and sharding rules depend on them, so a change must
be deliberate: regenerate with `python scripts/regenerate_golden_params.py` and review the diff."""
import json
import pathlib

import pytest

from plmjax import models
from plmjax.convert import common

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent.parent / 'testdata' / 'models'


@pytest.mark.parametrize('preset', sorted(models.PRESETS))
def test_parameter_tree_matches_golden(preset):
    config = models.PRESETS[preset]()
    spec = common.parameter_spec(common.architecture_of(config), config)
    path = GOLDEN_DIR / f'{preset}_params.json'
    assert path.is_file(), f'{path} is missing: run `python scripts/regenerate_golden_params.py {preset}`.'
    golden = json.loads(path.read_text())
    changed = sorted(p for p in set(spec) | set(golden) if spec.get(p) != golden.get(p))
    assert not changed, (f'The parameter tree of {preset} changed at {changed[:5]} (checkpoints written before no '
                         'longer restore). If intended, run `python scripts/regenerate_golden_params.py` and commit '
                         'the diff.')


SCANNED = sorted(path.name[:-len('_scanned_params.json')] for path in GOLDEN_DIR.glob('*_scanned_params.json'))


def test_a_scanned_golden_tree_for_every_family():
    assert {'bert_base', 'gpt2_small', 't5_small', 'bart_base'} <= set(SCANNED), SCANNED


@pytest.mark.parametrize('preset', SCANNED)
def test_scanned_parameter_tree_matches_golden(preset):
    """scan_layers=True: each stack's `layers` holds the unrolled layer's parameters with a leading [num_layers]
    axis named 'layers' (regenerate with `python scripts/regenerate_golden_params.py --scanned`)."""
    import dataclasses
    config = dataclasses.replace(models.PRESETS[preset](), scan_layers=True)
    spec = common.parameter_spec(common.architecture_of(config), config)
    golden = json.loads((GOLDEN_DIR / f'{preset}_scanned_params.json').read_text())
    changed = sorted(p for p in set(spec) | set(golden) if spec.get(p) != golden.get(p))
    assert not changed, (f'The scanned parameter tree of {preset} changed at {changed[:5]}. If intended, run '
                         f'`python scripts/regenerate_golden_params.py --scanned {preset}` and commit the diff.')
    unrolled = json.loads((GOLDEN_DIR / f'{preset}_params.json').read_text())  # the same layers, stacked
    layers = {p: v for p, v in unrolled.items() if '/layers_' in p}
    assert layers and all('/layers/' in p or '/layers_' not in p for p in golden)
    for path, entry in layers.items():
        stack, rest = path.split('/layers_', 1)
        index, rest = rest.split('/', 1)
        stacked = golden[f'{stack}/layers/{rest}']
        depth = config.num_decoder_layers if stack.endswith('decoder') else config.num_encoder_layers
        assert int(index) < depth == stacked['shape'][0]
        assert stacked == {'axes': ['layers'] + entry['axes'], 'shape': [depth] + entry['shape']}, path
