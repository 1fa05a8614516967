"""Prints, per family, the largest differences between plmjax and the transformers PyTorch reference (float32,
small random models read from `save_pretrained` directories, as tests/convert/test_hf_parity.py checks them):
hidden states (absolute), logits (relative to their largest magnitude), cached decoding against the full forward
pass, and the HF -> plmjax -> HF round trip.

    python scripts/hf_parity_report.py [--nezha]   # --nezha: also NEZHA (installs transformers 4.57.6 once)
"""
import argparse
import os
import sys
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')

import numpy as np  # noqa: E402

from plmjax import convert  # noqa: E402
from plmjax.convert import parity  # noqa: E402

COLUMNS = ('encoder_hidden_states', 'hidden_states', 'logits', 'cached_logits', 'round_trip')


def family_row(name: str, workdir: str) -> dict[str, float]:
    reference = parity.tiny_hf_model(name)
    reference.save_pretrained(os.path.join(workdir, name))
    converted = convert.load_hf(os.path.join(workdir, name))
    row = parity.compare(reference, converted)
    out = os.path.join(workdir, f'{name}_out')
    convert.save_hf(out, converted.config, converted.params, family=converted.family,
                    architecture=converted.architecture)
    batch = parity.sample_batch(reference.config.to_dict())
    before = parity.hf_outputs(reference, batch)
    after = parity.hf_outputs(type(reference).from_pretrained(out).eval(), batch)
    row['round_trip'] = max(float(np.abs(after[k] - before[k]).max()) for k in before)
    return row


def nezha_row(workdir: str) -> dict[str, float]:
    batch = parity.sample_batch({'vocab_size': parity.VOCAB, 'pad_token_id': 0})
    reference = parity.nezha_reference('build', os.path.join(workdir, 'nezha'), batch, workdir)
    converted = convert.load_hf(os.path.join(workdir, 'nezha'))
    row = parity.differences(parity.plmjax_outputs(converted, batch), reference, batch, 'encoder')
    convert.save_hf(os.path.join(workdir, 'nezha_out'), converted.config, converted.params, family='nezha')
    again = parity.nezha_reference('load', os.path.join(workdir, 'nezha_out'), batch, workdir)
    row['round_trip'] = max(float(np.abs(again[k] - reference[k]).max()) for k in reference)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--nezha', action='store_true', help='include NEZHA (transformers 4.57.6 in a child process)')
    args = parser.parse_args(argv)
    import transformers
    transformers.utils.logging.disable_progress_bar()
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in parity.TINY_MODELS:
            rows[name] = family_row(name, workdir)
        if args.nezha:
            rows['nezha'] = nezha_row(workdir)
    print(f'{"family":<22}' + ''.join(f'{c:>23}' for c in COLUMNS))
    for name, row in rows.items():
        print(f'{name:<22}' + ''.join(f'{row[c]:>23.2e}' if c in row else f'{"-":>23}' for c in COLUMNS))
    print('hidden states: max |difference|; logits: max |difference| / max |logit|; round_trip: max |difference| of '
          'every output after HF -> plmjax -> HF.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
