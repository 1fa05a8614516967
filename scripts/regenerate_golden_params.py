"""Rewrites the golden parameter trees of tests/testdata/models: one JSON file per preset of plmjax.models.PRESETS
holding every parameter's path, shape and logical axis names (checkpoint compatibility: converters, Orbax
restores and the sharding rules depend on them). Run it after a deliberate change of the parameter tree and
review the diff:

    python scripts/regenerate_golden_params.py [PRESET ...]
    python scripts/regenerate_golden_params.py --scanned [PRESET ...]   # <preset>_scanned_params.json

`--scanned` writes the trees of the presets with `scan_layers=True` (one `layers` subtree per stack, every leaf
with a leading [num_layers] axis named 'layers'), by default for one preset per family (SCANNED_PRESETS).
"""
import dataclasses
import argparse
import json
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from plmjax import models  # noqa: E402
from plmjax.convert import common  # noqa: E402

SCANNED_PRESETS = ('bert_base', 'gpt2_small', 't5_small', 'bart_base')  # BERT, GPT-2, T5, BART
GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'testdata', 'models')


def golden_path(preset: str, scanned: bool = False) -> str:
    return os.path.join(GOLDEN_DIR, f'{preset}{"_scanned" if scanned else ""}_params.json')


def golden_text(preset: str, scanned: bool = False) -> str:
    """One parameter a line, sorted, so that diffs stay readable."""
    config = dataclasses.replace(models.PRESETS[preset](), scan_layers=scanned)
    spec = common.parameter_spec(common.architecture_of(config), config)
    lines = [f'  {json.dumps(path)}: {json.dumps(spec[path], sort_keys=True)}' for path in sorted(spec)]
    return '{\n' + ',\n'.join(lines) + '\n}\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('presets', nargs='*', help=f'default: all of {sorted(models.PRESETS)} (--scanned: '
                        f'{list(SCANNED_PRESETS)})')
    parser.add_argument('--scanned', action='store_true', help='the scanned layout (scan_layers=True)')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.presets) - set(models.PRESETS))
    if unknown:
        print(f'regenerate_golden_params: error: unknown presets {unknown}; choose from {sorted(models.PRESETS)}.',
              file=sys.stderr)
        return 2
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    for preset in args.presets or (SCANNED_PRESETS if args.scanned else sorted(models.PRESETS)):
        path = golden_path(preset, args.scanned)
        text = golden_text(preset, args.scanned)
        old = open(path).read() if os.path.exists(path) else None
        with open(path, 'w') as f:
            f.write(text)
        print(f'{"unchanged" if old == text else "written  "} {os.path.relpath(path)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
