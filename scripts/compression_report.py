"""The compression results table (docs/compression.md): a teacher and its students on a task's split, each with the
official metric, retention, parameters, size on disk (checkpoint and packed file) and forward examples/s at batch 32
x 64 tokens timed side by side (`plmjax.evaluation.compression_report`):

    python scripts/compression_report.py --task glue_sst2_tsv teacher=runs/minilm_sst2 \\
        tinybert3=runs/tinybert3_stage2/student ternary=runs/ternary_sst2/student [--int8] [--out table.json]

--int8 adds the teacher's int8 post-training baselines (weight-only, and weights + 8-bit activations), written
under runs/ptq_int8_* first.
"""
import argparse
import json
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import plmjax.tasks  # noqa: E402,F401  (registers the tasks)
from plmjax.evaluation import compression_report  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('models', nargs='+', help='name=DIR, the teacher first')
    parser.add_argument('--task', required=True)
    parser.add_argument('--split', default='validation')
    parser.add_argument('--sequence_length', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--int8', action='store_true', help="add the teacher's int8 post-training baselines")
    parser.add_argument('--out', default=None, help='write the rows as JSON here')
    args = parser.parse_args()
    checkpoints = dict(item.split('=', 1) for item in args.models)
    if args.int8:
        teacher = next(iter(checkpoints.values()))
        for name, bits in (('int8 weights (PTQ)', None), ('int8 weights + activations (PTQ)', 8)):
            out = f'runs/ptq_int8_{"w" if bits is None else "wa"}'
            compression_report.post_training_quantize(teacher, out, 'int8', bits)
            checkpoints[name] = out
    rows = compression_report.report(checkpoints, args.task, args.split, sequence_length=args.sequence_length,
                                     repeats=args.repeats)
    print(compression_report.markdown(rows))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
