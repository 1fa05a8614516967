"""`plmjax bench`: the matmul ceiling, the training steps of BERT-base / GPT-2 small / T5-small, greedy and
beam-search decoding (GPT-2 small, T5-small) and Perturbed Masking impact matrices, for plmjax and the PyTorch reference, each configuration in a
fresh process; a Markdown table on the terminal and a JSON record.

    plmjax bench [--sizes full|tiny] [--only matmul,bert,gpt2,t5,decode,parse,checkpoints] [--repeats 3]
                 [--out results.json] [--checkpoints teacher=DIR,student=DIR] [--infer_shape 32,64]
                 [--decode_models gpt2,t5]
                 [--no_torch] [--torch_variants eager_f32,eager_bf16_autocast,compile]
                 [--plmjax_variants xla_f32,xla_bf16_matmul]

Until cli.py wires it, run it as `python -m plmjax.bench [flags]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from plmjax.bench import configs, report, runner


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser('bench', help='measure training and decoding speed against the PyTorch reference')
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--sizes', choices=['full', 'tiny'], default='full',
                   help='full: BERT-base, GPT-2 small, T5-small at the issue\'s shapes; tiny: 2-layer, 64-wide '
                        'versions for smoke tests')
    p.add_argument('--only', default=','.join(runner.GROUPS),
                   help=f'comma-separated subset of {",".join(runner.GROUPS)}')
    p.add_argument('--repeats', type=int, default=3, help='timed repeats per configuration (median, min, max)')
    p.add_argument('--out', default='results.json', help='where the JSON record goes')
    p.add_argument('--no_torch', action='store_true', help='measure plmjax only (no PyTorch reference)')
    p.add_argument('--torch_variants', default=','.join(runner.TORCH_VARIANTS),
                   help=f'comma-separated subset of {",".join(runner.TORCH_VARIANTS)}')
    p.add_argument('--plmjax_variants', default=','.join(runner.PLMJAX_VARIANTS),
                   help=f'comma-separated subset of {",".join(runner.PLMJAX_VARIANTS)} (xla_bf16_matmul: '
                        'matmul_dtype=bfloat16, every product on bf16 operands with float32 accumulation)')
    p.add_argument('--decode_models', default=','.join(configs.DECODES),
                   help=f'the models of the decode group: a comma-separated subset of {",".join(configs.DECODES)}')
    p.add_argument('--checkpoints', default='', help='group checkpoints: name=DIR,name=DIR,... saved models (a '
                   'teacher first, then its compressed students) whose forward pass is timed side by side')
    p.add_argument('--infer_shape', default='32,64', help='group checkpoints: batch,length of the timed forward pass')
    p.add_argument('--traceback', action='store_true', help='show the full traceback of an error')


def _split(value: str, allowed, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(',') if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise ValueError(f'{flag} {value!r}: choose a comma-separated subset of {",".join(allowed)}.')
    return items


def run(args) -> dict:
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the parent only reads shapes; the workers measure the CPU
    if args.repeats < 1:
        raise ValueError(f'--repeats must be >= 1, got {args.repeats}.')
    only = _split(args.only, runner.GROUPS, '--only')
    variants = _split(args.torch_variants, runner.TORCH_VARIANTS, '--torch_variants')
    ours = _split(getattr(args, 'plmjax_variants', ','.join(runner.PLMJAX_VARIANTS)), runner.PLMJAX_VARIANTS,
                  '--plmjax_variants')
    decode_models = _split(getattr(args, 'decode_models', ','.join(configs.DECODES)), tuple(configs.DECODES),
                           '--decode_models')
    checkpoints = dict(item.split('=', 1) for item in getattr(args, 'checkpoints', '').split(',') if '=' in item)
    if getattr(args, 'checkpoints', '') and not checkpoints:
        raise ValueError(f'--checkpoints {args.checkpoints!r}: give name=DIR pairs, e.g. teacher=runs/minilm_sst2.')
    for name, path in checkpoints.items():
        if not os.path.isdir(path):
            raise FileNotFoundError(f'--checkpoints {name}={path}: no such directory.')
    batch, length = (int(x) for x in getattr(args, 'infer_shape', '32,64').split(','))
    spec_list = runner.specs(args.sizes, args.repeats, only, torch=not args.no_torch, torch_variants=variants,
                             plmjax_variants=ours, decode_models=decode_models, checkpoints=checkpoints,
                             infer_shape=(batch, length))
    counts = {m: runner.model_counts(m, args.sizes) for m in configs.MODELS if m in only}
    with tempfile.TemporaryDirectory(prefix='plmjax_bench_') as weights_root:
        runner.write_decode_weights(spec_list, weights_root)
        results = runner.run_all(spec_list, args.sizes)
    record = report.build(results, args.sizes, args.repeats, counts)
    print(report.markdown(record), file=sys.stdout)
    with open(args.out, 'w') as f:
        json.dump(record, f, indent=2)
    print(f'JSON record: {args.out}', file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='plmjax bench', description=__doc__.split('\n')[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        if args.traceback:
            raise
        print(f'plmjax bench: error: {error}', file=sys.stderr)
        return 2
    return 0
