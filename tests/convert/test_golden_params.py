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
