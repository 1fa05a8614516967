"""Turns the workers' raw results into the benchmark record (JSON) and its Markdown table.

Every rate is a summary over repeats: median, min and max. Derived figures keep the three (`_scaled`,
`_ratio`): model FLOP/s = FLOPs per step (`configs.FORMULA`) * steps/s; MFU = model FLOP/s / the best measured
matmul FLOP/s of the precision the row computes its products in (`CEILING`: bf16 x bf16 -> f32 for plmjax's
bf16 products, torch's bf16 matmul for autocast, float32 otherwise), so it is a utilization of that precision's
peak; `vs_xla_f32_ceiling` = model FLOP/s / the best XLA float32 matmul, the same scale for every row (a bf16
row may exceed 1: it is a speed, not a utilization). Ratios of two measured rates: median / median, with min =
min / other's max and max = max / other's min. Each training row's speed is relative to PyTorch eager float32
of the same model (its logits at every position, as BERT rows say), each decoding row's to `transformers`'
generate of the same model, batch size and beams (both decode the same weights and inputs; `same_tokens` says how
far their tokens agree); memory (one measurement per process) as peak RSS and as peak RSS minus the RSS
right after the imports. The record names the machine: CPU model and the matrix units the bf16 speed-ups depend
on (AMX, AVX512-BF16).
"""
from __future__ import annotations

import os
import platform

from plmjax.bench import configs, timing

# /proc/cpuinfo flags that decide how fast bf16 products run (XLA hands bf16 x bf16 -> f32 to these kernels).
MATRIX_FLAGS = ('amx_bf16', 'amx_tile', 'avx512_bf16', 'avx512f', 'avx2')


def _cpuinfo(path: str = '/proc/cpuinfo') -> dict:
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if not key:
                    break  # the first processor's block is enough
                fields.setdefault(key, value.strip())
    except OSError:
        return {}
    flags = set(fields.get('flags', '').split())
    info = {'cpu_model': fields.get('model name'), 'cpu_flags': [f for f in MATRIX_FLAGS if f in flags]}
    if 'cpu family' in fields:
        info['cpu_family_model'] = f'family {fields["cpu family"]} model {fields.get("model", "?")}'
    return {k: v for k, v in info.items() if v is not None}


def _machine() -> dict:
    import jax
    info = {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
            'cpus': os.cpu_count(), 'python': platform.python_version(), 'jax': jax.__version__, **_cpuinfo()}
    try:
        import torch
        import transformers
        info.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    return info


def machine_text(machine: dict) -> str:
    """'AMD EPYC (family 25 model 1), 2 CPUs; bf16 matrix units: none (avx2; no AMX, no AVX512-BF16)'."""
    flags = machine.get('cpu_flags', [])
    units = [name for flag, name in (('amx_bf16', 'AMX-BF16'), ('avx512_bf16', 'AVX512-BF16')) if flag in flags]
    missing = [name for flag, name in (('amx_bf16', 'AMX'), ('avx512_bf16', 'AVX512-BF16')) if flag not in flags]
    vector = 'AVX-512' if 'avx512f' in flags else ('AVX2' if 'avx2' in flags else 'no AVX2')
    cpu = machine.get('cpu_model', machine.get('processor', '?'))
    if machine.get('cpu_family_model'):
        cpu += f' ({machine["cpu_family_model"]})'
    return (f'{cpu}, {machine.get("cpus")} CPUs; bf16 matrix units: {", ".join(units) or "none"} ({vector}'
            + (f'; no {", no ".join(missing)}' if missing else '') + ')')


# The matmul ceiling of each training variant's products.
CEILING = {'xla_f32': 'xla_float32', 'xla_bf16_matmul': 'xla_bfloat16_to_float32', 'eager_f32': 'torch_float32',
           'compile': 'torch_float32', 'eager_bf16_autocast': 'torch_bfloat16'}
SUMMARY_KEYS = ('median', 'min', 'max')


def _scaled(summary: dict | None, factor: float | None) -> dict | None:
    """A median/min/max summary times a constant (None when either is missing)."""
    if not summary or not factor:
        return None
    return {k: summary[k] * factor for k in SUMMARY_KEYS}


def _ratio(a: dict | None, b: dict | None) -> dict | None:
    """a / b of two median/min/max summaries: median / median, and the widest range (min/max, max/min)."""
    if not a or not b:
        return None
    return {'median': a['median'] / b['median'], 'min': a['min'] / b['max'], 'max': a['max'] / b['min']}


def _point(value: float | None) -> dict | None:
    """One measurement (peak RSS) as a summary, so that ratios of it have the same form."""
    return None if value is None else {k: value for k in SUMMARY_KEYS}


def build(results: list[tuple[dict, dict]], size: str, repeats: int, counts: dict[str, configs.ModelCounts]) -> dict:
    record = {'machine': _machine(), 'size': size, 'repeats': repeats, 'formula': configs.FORMULA,
              'ceiling': {}, 'train': [], 'decode': [], 'parse': [], 'infer': [], 'errors': [], 'targets': {}}
    decoded = {}  # id(decode row) -> its tokens [batch, new tokens]: compared, not kept in the record
    for spec, result in results:
        if 'error' in result:
            record['errors'].append({**{k: spec.get(k) for k in ('kind', 'model', 'framework', 'variant', 'logits',
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
                   'logits': spec.get('logits', 'all'), 'tokens_per_s': timing.summary(result['tokens_per_s']),
                   'tokens_per_step': c.tokens_per_step, 'flops_per_step': c.flops_per_step,
                   'compile_s': result.get('compile_s'), 'loss': result['loss'], **memory}
            row['model_flops_per_s'] = _scaled(row['tokens_per_s'], c.flops_per_step / c.tokens_per_step)
            record['train'].append(row)
        elif spec['kind'] == 'infer':
            record['infer'].append({'name': spec['model'], 'checkpoint': spec['checkpoint'],
                                    'batch_size': spec['batch_size'], 'length': result['length'],
                                    'examples_per_s': timing.summary(result['examples_per_s']),
                                    **{k: result[k] for k in ('compile_s', 'parameters', 'checkpoint_bytes',
                                                              'packed_bytes', 'quantize')}, **memory})
        elif spec['kind'] == 'parse':
            record['parse'].append({'framework': spec['framework'], 'variant': spec['variant'],
                                    'sentences_per_s': timing.summary(result['sentences_per_s']),
                                    'sentences': result['sentences'], 'first_s': result.get('first_s'), **memory})
        else:
            for key, measured in result['by_batch'].items():
                batch_size, _, num_beams = key.partition('/')
                row = {'model': spec.get('model', configs.DECODE.model), 'batch_size': int(batch_size),
                       'num_beams': int(num_beams or 1), 'framework': spec['framework'], 'variant': spec['variant'],
                       'tokens_per_s': timing.summary(measured['tokens_per_s']),
                       'compile_s': measured.get('compile_s'), 'prepare_s': measured.get('prepare_s'),
                       'convert_s': measured.get('convert_s'), **memory}
                if 'tokens' in measured:
                    decoded[id(row)] = measured['tokens']
                record['decode'].append(row)
    best = lambda name: record['ceiling'].get(name, {}).get('max')  # noqa: E731  the ceiling: the best repeat
    record['counts'] = {model: c.as_dict() for model, c in counts.items()}
    for row in record['train']:
        row['mfu_ceiling'] = CEILING.get(row['variant'])
        ceiling = best(row['mfu_ceiling'])
        row['mfu'] = _scaled(row['model_flops_per_s'], 1 / ceiling if ceiling else None)
        f32 = best('xla_float32')
        row['vs_xla_f32_ceiling'] = _scaled(row['model_flops_per_s'], 1 / f32 if f32 else None)
        base = _find(record['train'], model=row['model'], framework='torch', variant='eager_f32')
        row['vs_torch_eager_f32'] = _ratio(row['tokens_per_s'], base and base['tokens_per_s'])
    for row in record['decode']:
        base = _find(record['decode'], model=row['model'], batch_size=row['batch_size'], num_beams=row['num_beams'],
                     framework='torch')
        row['vs_transformers_generate'] = _ratio(row['tokens_per_s'], base and base['tokens_per_s'])
        row.update(same_tokens(decoded.get(id(row)), base and base is not row and decoded.get(id(base))))
    for row in record['infer']:  # against the first checkpoint given (the teacher)
        row['vs_first'] = _ratio(row['examples_per_s'], record['infer'][0]['examples_per_s'])
        row['size_vs_first'] = row['checkpoint_bytes'] / record['infer'][0]['checkpoint_bytes']
    for row in record['parse']:
        base = _find(record['parse'], framework='torch')
        row['vs_torch_eager_f32'] = _ratio(row['sentences_per_s'], base and base['sentences_per_s'])
    record['targets'] = _targets(record)
    return record


def same_tokens(ours, theirs) -> dict:
    """How far two decodings of the same inputs agree: the fraction of rows with identical tokens and the
    fraction of all tokens before each row's first difference (None when either side is missing)."""
    if not ours or not theirs:
        return {'same_rows': None, 'same_prefix': None}
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(ours, theirs)]
    return {'same_rows': sum(p == len(x) for p, x in zip(prefix, ours)) / len(ours),
            'same_prefix': sum(prefix) / sum(len(x) for x in ours)}


def row_name(row: dict) -> str:
    """'plmjax xla_f32', with ', logits at predicted positions' for BERT's sparse-head rows."""
    name = f'{row["framework"]} {row["variant"]}'
    if row['model'] in configs.MODELS and configs.MODELS[row['model']].sparse_head:
        name += ', logits at all positions' if row['logits'] == 'all' else ', logits at predicted positions'
    return name


def _find(rows, **fields):
    return next((r for r in rows if all(r.get(k) == v for k, v in fields.items())), None)


def _targets(record: dict) -> dict:
    """The issue's targets, each a ratio from this run (None when a side was not measured)."""
    targets = {}
    for ours in [r for r in record['train'] if r['framework'] == 'plmjax']:
        model = ours['model']
        torch_rows = [r for r in record['train'] if r['model'] == model and r['framework'] == 'torch']
        entry = {'mfu': ours['mfu'], 'logits': ours['logits']}
        if torch_rows:
            fastest = max(torch_rows, key=lambda r: r['tokens_per_s']['median'])
            eager = _find(torch_rows, variant='eager_f32')
            entry.update(vs_torch_eager_f32=ours['vs_torch_eager_f32'], fastest_torch_variant=fastest['variant'],
                         vs_fastest_torch=_ratio(ours['tokens_per_s'], fastest['tokens_per_s']))
            if eager:
                entry['peak_rss_vs_torch_eager_f32'] = _ratio(_point(ours['peak_rss_mb']),
                                                              _point(eager['peak_rss_mb']))
                entry['working_rss_vs_torch_eager_f32'] = _ratio(_point(ours['working_rss_mb']),
                                                                 _point(eager['working_rss_mb']))
        targets[f'{model} {row_name(ours).removeprefix("plmjax ")}'] = entry
    for row in record['decode']:
        if row['framework'] == 'plmjax' and row['vs_transformers_generate'] is not None:
            search = 'greedy' if row['num_beams'] == 1 else f'beam {row["num_beams"]}'
            targets[f'decode {row["model"]} {search} batch {row["batch_size"]} {row["variant"]}'] = {
                'vs_transformers_generate': row['vs_transformers_generate'], 'same_rows': row['same_rows']}
    for row in record['parse']:
        if row['framework'] == 'plmjax' and row['vs_torch_eager_f32'] is not None:
            targets[f'impact matrices {row["variant"]}'] = {'vs_torch_eager_f32': row['vs_torch_eager_f32']}
    return targets


# ------------------------------------------------------------------------------------------------ Markdown


def _num(x, digits=1):
    return '-' if x is None else f'{x:,.{digits}f}'


def _rate(summary, scale=1.0, digits=0):
    """'median (min–max)' of a summary; '-' when absent."""
    if summary is None:
        return '-'
    return (f'{_num(summary["median"] / scale, digits)} ({_num(summary["min"] / scale, digits)}–'
            f'{_num(summary["max"] / scale, digits)})')


def _pct(summary):
    if summary is None:
        return '-'
    return f'{100 * summary["median"]:.1f}% ({100 * summary["min"]:.1f}–{100 * summary["max"]:.1f}%)'


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def markdown(record: dict) -> str:
    machine = record['machine']
    parts = [f'## plmjax bench ({record["size"]} sizes, {record["repeats"]} repeats; every figure median (min–max))',
             f'Machine: {machine_text(machine)}; jax {machine["jax"]}'
             + (f', torch {machine["torch"]}' if 'torch' in machine else '') + '.',
             f'FLOPs: {record["formula"]}. MFU = model FLOP/s / the best matmul FLOP/s of the precision the row '
             'computes in (ceiling column: bf16 x bf16 -> f32 for xla_bf16_matmul, torch bf16 for autocast, float32 '
             'otherwise); "/ XLA f32 ceiling" = model FLOP/s / the best XLA float32 matmul, a speed on one scale '
             'for all rows (not a utilization: bf16 rows may pass 100%). Ratios: median / median, range min / max '
             'to max / min. BERT: "logits at all positions" computes the vocabulary projection at every position '
             'as BertForMaskedLM does (like-for-like); "at predicted positions" is plmjax\'s sparse MLM head, what '
             '`plmjax train` runs.']
    if record['size'] == 'tiny':
        parts.insert(1, 'Tiny sizes: a smoke test of the bench itself; at these shapes the figures (and MFU over a '
                        '512² matmul ceiling, which may pass 100%) say nothing about the models\' speed.')
    if record['ceiling']:
        parts.append('### Matmul ceiling (GFLOP/s)\n' + _table(
            ['backend', 'n', 'GFLOP/s', 'best'],
            [[name, c['n'], _rate(c, 1e9), _num(c['max'] / 1e9, 0)] for name, c in record['ceiling'].items()]))
    if record['train']:
        parts.append('### Training step\n' + _table(
            ['model', 'implementation', 'tokens/s', 'model GFLOP/s', 'MFU', 'ceiling', '/ XLA f32 ceiling',
             'compile s', 'peak RSS MB', 'RSS over imports MB', 'x torch eager f32'],
            [[r['model'], row_name(r), _rate(r['tokens_per_s']), _rate(r['model_flops_per_s'], 1e9, 1),
              _pct(r['mfu']), r.get('mfu_ceiling') or '-', _pct(r['vs_xla_f32_ceiling']), _num(r['compile_s']),
              _num(r['peak_rss_mb'], 0), _num(r['working_rss_mb'], 0), _rate(r['vs_torch_eager_f32'], digits=2)]
             for r in record['train']]))
    if record['decode']:
        parts.append('### Decoding (KV cache): greedy and beam search, the same weights and inputs on both sides\n'
                     'One-time costs apart from the per-token rate: "load s" reads the Hugging Face checkpoint '
                     '(plmjax: and converts it), "prepare s" makes plmjax\'s decoding layout (once per process), '
                     '"compile s" compiles the loop for that batch and search. "same rows": the fraction of rows '
                     'whose tokens equal generate\'s.\n\n' + _table(
            ['model', 'batch', 'search', 'implementation', 'tokens/s', 'load s', 'prepare s', 'compile s',
             'peak RSS MB', 'x transformers generate', 'same rows'],
            [[r.get('model', configs.DECODE.model), r['batch_size'],
              'greedy' if r['num_beams'] == 1 else f'{r["num_beams"]} beams',
              f'{r["framework"]} {r["variant"]}', _rate(r['tokens_per_s'], digits=1), _num(r.get('convert_s')),
              _num(r.get('prepare_s')), _num(r['compile_s']), _num(r['peak_rss_mb'], 0),
              _rate(r['vs_transformers_generate'], digits=2),
              '-' if r.get('same_rows') is None else f'{r["same_rows"]:.2f}']
             for r in record['decode']]))
    if record.get('parse'):
        parts.append('### Perturbed Masking impact matrices (MiniLM-L6 size, Dist, sentences of 1-19 words)\n'
                     + _table(['implementation', 'sentences/s', 'first pass s (compiles)', 'peak RSS MB',
                               'x torch eager f32'],
                              [[f'{r["framework"]} {r["variant"]}', _rate(r['sentences_per_s'], digits=1),
                                _num(r['first_s']), _num(r['peak_rss_mb'], 0),
                                _rate(r['vs_torch_eager_f32'], digits=2)] for r in record['parse']]))
    if record.get('infer'):
        first = record['infer'][0]
        parts.append(f'### Checkpoints: forward pass, batch {first["batch_size"]} x {first["length"]} tokens, '
                     f'examples/s (x the first: {first["name"]})\nQuantized students run fake-quantized in float32 '
                     '(as they train and evaluate; no low-bit kernels on CPU); "packed" is their low-bit file.\n\n'
                     + _table(['model', 'parameters', 'checkpoint MB', 'packed MB', 'examples/s', 'x first',
                               'compile s', 'peak RSS MB'],
                              [[r['name'], f'{r["parameters"] / 1e6:.2f}M', _num(r['checkpoint_bytes'] / 2 ** 20, 2),
                                '-' if r['packed_bytes'] is None else _num(r['packed_bytes'] / 2 ** 20, 2),
                                _rate(r['examples_per_s'], digits=1), _rate(r['vs_first'], digits=2),
                                _num(r['compile_s']), _num(r['peak_rss_mb'], 0)] for r in record['infer']]))
    if record['targets']:
        rows = [[name, _rate(t.get('vs_torch_eager_f32'), digits=2), _rate(t.get('vs_fastest_torch'), digits=2),
                 _pct(t.get('mfu')), _rate(t.get('peak_rss_vs_torch_eager_f32'), digits=2).split(' ')[0],
                 _rate(t.get('vs_transformers_generate'), digits=2), t.get('fastest_torch_variant', '-')]
                for name, t in record['targets'].items()]
        parts.append('### Targets (plmjax / reference)\n' + _table(
            ['', 'x torch eager f32', 'x fastest torch', 'MFU', 'peak RSS / torch', 'x generate',
             'fastest torch variant'], rows))
    if record['errors']:
        parts.append('### Not measured\n' + '\n'.join(
            f'- {e["kind"]} {e.get("model") or ""} {e["framework"]} {e.get("variant") or ""} '
            f'{"logits at " + e["logits"] if e.get("logits") else ""}: {e["error"]}' for e in record['errors']))
    return '\n\n'.join(parts) + '\n'
