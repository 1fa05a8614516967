"""Turns the workers' raw results into the benchmark record (JSON) and its Markdown table.

Every rate is the median over repeats, with min and max. Derived figures: model FLOP/s = FLOPs per step
(`configs.FORMULA`) * steps/s; MFU = model FLOP/s / the best measured XLA float32 matmul FLOP/s (the issue's
definition, for every row), and 'MFU of own precision' = model FLOP/s / the best matmul FLOP/s of the products
that row computes (`OWN_CEILING`: bf16 x bf16 -> f32 for plmjax's bf16 matmuls, torch's bf16 matmul for
autocast); each training
row's speed relative to PyTorch eager float32 of the same model; each decoding row's relative to `transformers`'
generate at the same batch size; memory as peak RSS and as peak RSS minus the RSS right after the imports.
"""
from __future__ import annotations

import os
import platform

from plmjax.bench import configs, timing


def _machine() -> dict:
    import jax
    info = {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
            'cpus': os.cpu_count(), 'python': platform.python_version(), 'jax': jax.__version__}
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu_model'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    try:
        import torch
        import transformers
        info.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    return info


# The matmul ceiling of each training variant's products.
OWN_CEILING = {'xla_f32': 'xla_float32', 'xla_bf16_matmul': 'xla_bfloat16_to_float32', 'eager_f32': 'torch_float32',
               'compile': 'torch_float32', 'eager_bf16_autocast': 'torch_bfloat16'}


def _ratio(a, b):
    return a / b if a and b else None


def build(results: list[tuple[dict, dict]], size: str, repeats: int, counts: dict[str, configs.ModelCounts]) -> dict:
    record = {'machine': _machine(), 'size': size, 'repeats': repeats, 'formula': configs.FORMULA,
              'ceiling': {}, 'train': [], 'decode': [], 'errors': [], 'targets': {}}
    for spec, result in results:
        if 'error' in result:
            record['errors'].append({**{k: spec.get(k) for k in ('kind', 'model', 'framework', 'variant',
                                                                 'batch_sizes')}, 'error': result['error']})
            continue
        memory = {'peak_rss_mb': result['peak_rss_mb'], 'import_rss_mb': result['import_rss_mb'],
                  'working_rss_mb': result['peak_rss_mb'] - result['import_rss_mb']}
        if spec['kind'] == 'matmul':
            backend = 'xla' if spec['framework'] == 'plmjax' else 'torch'
            for dtype, rates in result['flops_per_s'].items():
                record['ceiling'][f'{backend}_{dtype}'] = {**timing.summary(rates), 'n': spec['n']}
        elif spec['kind'] == 'train':
            c = counts[spec['model']]
            row = {'model': spec['model'], 'framework': spec['framework'], 'variant': spec['variant'],
                   'tokens_per_s': timing.summary(result['tokens_per_s']), 'tokens_per_step': c.tokens_per_step,
                   'flops_per_step': c.flops_per_step, 'compile_s': result.get('compile_s'), 'loss': result['loss'],
                   **memory}
            row['model_flops_per_s'] = row['tokens_per_s']['median'] / c.tokens_per_step * c.flops_per_step
            record['train'].append(row)
        else:
            for batch_size, measured in result['by_batch'].items():
                record['decode'].append({'batch_size': int(batch_size), 'framework': spec['framework'],
                                         'variant': spec['variant'],
                                         'tokens_per_s': timing.summary(measured['tokens_per_s']),
                                         'compile_s': measured.get('compile_s'),
                                         'prepare_s': measured.get('prepare_s'), **memory})
    ceiling = record['ceiling'].get('xla_float32', {}).get('max')
    record['counts'] = {model: c.as_dict() for model, c in counts.items()}
    for row in record['train']:
        row['mfu'] = _ratio(row['model_flops_per_s'], ceiling)
        row['mfu_own'] = _ratio(row['model_flops_per_s'],
                                record['ceiling'].get(OWN_CEILING.get(row['variant']), {}).get('max'))
        base = _find(record['train'], model=row['model'], framework='torch', variant='eager_f32')
        row['vs_torch_eager_f32'] = _ratio(row['tokens_per_s']['median'], base and base['tokens_per_s']['median'])
    for row in record['decode']:
        base = _find(record['decode'], batch_size=row['batch_size'], framework='torch')
        row['vs_transformers_generate'] = _ratio(row['tokens_per_s']['median'],
                                                 base and base['tokens_per_s']['median'])
    record['targets'] = _targets(record)
    return record


def _find(rows, **fields):
    return next((r for r in rows if all(r.get(k) == v for k, v in fields.items())), None)


def _targets(record: dict) -> dict:
    """The issue's targets, each a ratio from this run (None when a side was not measured)."""
    targets = {}
    for ours in [r for r in record['train'] if r['framework'] == 'plmjax']:
        model = ours['model']
        torch_rows = [r for r in record['train'] if r['model'] == model and r['framework'] == 'torch']
        entry = {'mfu': ours['mfu']}
        if torch_rows:
            fastest = max(torch_rows, key=lambda r: r['tokens_per_s']['median'])
            eager = _find(torch_rows, variant='eager_f32')
            entry.update(vs_torch_eager_f32=ours['vs_torch_eager_f32'], fastest_torch_variant=fastest['variant'],
                         vs_fastest_torch=_ratio(ours['tokens_per_s']['median'], fastest['tokens_per_s']['median']))
            if eager:
                entry['peak_rss_vs_torch_eager_f32'] = _ratio(ours['peak_rss_mb'], eager['peak_rss_mb'])
                entry['working_rss_vs_torch_eager_f32'] = _ratio(ours['working_rss_mb'], eager['working_rss_mb'])
        targets[f'{model} {ours["variant"]}'] = entry
    for row in record['decode']:
        if row['framework'] == 'plmjax' and row['vs_transformers_generate'] is not None:
            targets[f'decode batch {row["batch_size"]} {row["variant"]}'] = {
                'vs_transformers_generate': row['vs_transformers_generate']}
    return targets


# ------------------------------------------------------------------------------------------------ Markdown


def _num(x, digits=1):
    return '-' if x is None else f'{x:,.{digits}f}'


def _pct(x):
    return '-' if x is None else f'{100 * x:.1f}%'


def _rate(summary, scale=1.0, digits=0):
    return (f'{_num(summary["median"] / scale, digits)} ({_num(summary["min"] / scale, digits)}–'
            f'{_num(summary["max"] / scale, digits)})')


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def markdown(record: dict) -> str:
    parts = [f'## plmjax bench ({record["size"]} sizes, {record["repeats"]} repeats; median (min–max))',
             f'Machine: {record["machine"].get("cpu_model", record["machine"]["processor"])}, '
             f'{record["machine"]["cpus"]} CPUs; jax {record["machine"]["jax"]}'
             + (f', torch {record["machine"]["torch"]}' if 'torch' in record['machine'] else '') + '.',
             f'FLOPs: {record["formula"]}. MFU = model FLOP/s / best XLA float32 matmul FLOP/s; MFU of own '
             f'precision: over the best matmul FLOP/s of the products the row computes (bf16 x bf16 -> f32 for '
             f'xla_bf16_matmul, torch bf16 for autocast, float32 otherwise).']
    if record['ceiling']:
        parts.append('### Matmul ceiling (GFLOP/s)\n' + _table(
            ['backend', 'n', 'GFLOP/s', 'best'],
            [[name, c['n'], _rate(c, 1e9), _num(c['max'] / 1e9, 0)] for name, c in record['ceiling'].items()]))
    if record['train']:
        parts.append('### Training step\n' + _table(
            ['model', 'implementation', 'tokens/s', 'model GFLOP/s', 'MFU', 'MFU of own precision', 'compile s',
             'peak RSS MB', 'RSS over imports MB', 'x torch eager f32'],
            [[r['model'], f'{r["framework"]} {r["variant"]}', _rate(r['tokens_per_s']),
              _num(r['model_flops_per_s'] / 1e9), _pct(r['mfu']), _pct(r.get('mfu_own')), _num(r['compile_s']),
              _num(r['peak_rss_mb'], 0), _num(r['working_rss_mb'], 0), _num(r['vs_torch_eager_f32'], 2)]
             for r in record['train']]))
    if record['decode']:
        parts.append('### Greedy decoding (KV cache)\n' + _table(
            ['batch', 'implementation', 'tokens/s', 'compile s', 'weights prepared once, s', 'peak RSS MB',
             'x transformers generate'],
            [[r['batch_size'], f'{r["framework"]} {r["variant"]}', _rate(r['tokens_per_s'], digits=1),
              _num(r['compile_s']), _num(r.get('prepare_s')), _num(r['peak_rss_mb'], 0),
              _num(r['vs_transformers_generate'], 2)]
             for r in record['decode']]))
    if record['targets']:
        rows = []
        for name, t in record['targets'].items():
            rows.append([name] + [_num(t.get(k), 2) if k != 'mfu' else _pct(t.get(k))
                                  for k in ('vs_torch_eager_f32', 'vs_fastest_torch', 'mfu',
                                            'peak_rss_vs_torch_eager_f32', 'vs_transformers_generate')]
                        + [t.get('fastest_torch_variant', '-')])
        parts.append('### Targets (plmjax / reference)\n' + _table(
            ['', 'x torch eager f32', 'x fastest torch', 'MFU', 'peak RSS / torch', 'x generate',
             'fastest torch variant'], rows))
    if record['errors']:
        parts.append('### Not measured\n' + '\n'.join(
            f'- {e["kind"]} {e.get("model") or ""} {e["framework"]} {e.get("variant") or ""}: {e["error"]}'
            for e in record['errors']))
    return '\n\n'.join(parts) + '\n'
