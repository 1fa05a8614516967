"""Runs every measured configuration in its own fresh worker process, one at a time (the machine's cores are
shared by nothing else of ours while a worker runs), and collects the raw results.

Configurations, in order: the matmul ceilings (XLA, then PyTorch), then per model plmjax and the PyTorch variants
(for BERT, each plmjax variant twice: logits at all positions as the reference, and at the predicted positions
only), then per decode model (GPT-2 small, T5-small) greedy and beam search decoding at each batch size (plmjax,
then `transformers` generate, on the same weights), then Perturbed Masking impact
matrices (plmjax, then `transformers`' BertModel).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Iterable

from plmjax.bench import configs, worker

GROUPS = ('matmul', *configs.MODELS, 'decode', 'parse', 'checkpoints')
TORCH_VARIANTS = ('eager_f32', 'eager_bf16_autocast', 'compile')
# plmjax: float32 throughout, or every product on bf16 operands with float32 accumulation (matmul_dtype).
PLMJAX_VARIANTS = ('xla_f32', 'xla_bf16_matmul')
# (steps per repeat) for each kind and size: a repeat times this many steps, decodes or matmuls.
STEPS = {('matmul', 'full'): 3, ('matmul', 'tiny'): 10, ('train', 'full'): 2, ('train', 'tiny'): 3,
         ('decode', 'full'): 1, ('decode', 'tiny'): 2, ('parse', 'full'): 1, ('parse', 'tiny'): 1,
         ('infer', 'full'): 5, ('infer', 'tiny'): 2}
TIMEOUT_S = {'full': 3600, 'tiny': 300}


def hf_config(model: str, size: str) -> dict:
    """config.json of the `transformers` model equivalent to the plmjax preset (plmjax.convert.to_hf)."""
    bench = configs.MODELS[model]
    return _hf_config_json(bench.preset, bench.preset_overrides(size), bench.architecture, bench.hf_class)


def parse_hf_config(size: str) -> dict:
    """config.json of the BertModel equivalent to the parse bench's encoder."""
    return _hf_config_json(configs.PARSE.preset, configs.PARSE.preset_overrides(size), 'encoder', 'BertForMaskedLM')


def _hf_config_json(preset: str, overrides: dict, architecture: str, hf_class: str) -> dict:
    import jax
    import numpy as np
    from plmjax import models
    from plmjax.convert import common, hf
    config = models.PRESETS[preset](**overrides)
    abstract = common.abstract_params(architecture, config)
    zeros = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), abstract)  # no memory
    config_json, _ = hf.to_hf(config, zeros, hf_class=hf_class, architecture=architecture)
    return config_json


def model_counts(model: str, size: str) -> configs.ModelCounts:
    import jax
    from plmjax import models
    from plmjax.convert import common
    bench = configs.MODELS[model]
    config = models.PRESETS[bench.preset](**bench.preset_overrides(size))
    abstract = common.abstract_params(bench.architecture, config)
    shapes = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    return configs.model_counts(bench, size, shapes, config)


def specs(size: str, repeats: int, only: Iterable[str] = GROUPS, torch: bool = True,
          torch_variants: Iterable[str] = TORCH_VARIANTS,
          plmjax_variants: Iterable[str] = PLMJAX_VARIANTS,
          decode_models: Iterable[str] = tuple(configs.DECODES), checkpoints: dict | None = None,
          infer_shape: tuple[int, int] = (32, 64)) -> list[dict]:
    """The worker specs of one benchmark run (decode specs still need `write_decode_weights`); `checkpoints`
    ({name: saved model dir}, group 'checkpoints') adds the forward pass of each at `infer_shape` (batch, length)."""
    only = set(only)
    unknown = only - set(GROUPS)
    if unknown:
        raise ValueError(f'--only {",".join(sorted(unknown))}: unknown; choose from {",".join(GROUPS)}.')
    unknown = set(decode_models) - set(configs.DECODES)
    if unknown:
        raise ValueError(f'--decode_models {",".join(sorted(unknown))}: unknown; choose from '
                         f'{",".join(configs.DECODES)}.')
    frameworks = ('plmjax', 'torch') if torch else ('plmjax',)
    base = {'size': size, 'repeats': repeats}
    out = []
    if 'matmul' in only:
        out += [{**base, 'kind': 'matmul', 'framework': f, 'n': configs.MATMUL_SIZE[size],
                 'steps': STEPS['matmul', size]} for f in frameworks]
    for model in configs.MODELS:
        if model not in only:
            continue
        train = {**base, 'kind': 'train', 'model': model, 'steps': STEPS['train', size]}
        logits = configs.LOGITS if configs.MODELS[model].sparse_head else ('all',)
        out += [{**train, 'framework': 'plmjax', 'variant': v, 'logits': where} for v in plmjax_variants
                for where in logits]
        if torch:
            config_json = hf_config(model, size)
            out += [{**train, 'framework': 'torch', 'variant': v, 'logits': 'all', 'hf_config': config_json}
                    for v in torch_variants]
    if 'decode' in only:  # one process per model and framework for all batch sizes: peak RSS is the largest's
        for model in decode_models:
            bench = configs.DECODES[model]
            decode = {**base, 'kind': 'decode', 'model': model, 'batch_sizes': list(bench.batch_sizes),
                      'num_beams': list(bench.num_beams), 'steps': STEPS['decode', size]}
            out += [{**decode, 'framework': 'plmjax', 'variant': v} for v in plmjax_variants]
            if torch:
                out.append({**decode, 'framework': 'torch', 'variant': 'generate', 'hf_config': hf_config(model, size)})
    if 'checkpoints' in only:
        for name, path in (checkpoints or {}).items():
            out.append({**base, 'kind': 'infer', 'framework': 'plmjax', 'variant': 'xla_f32', 'model': name,
                        'checkpoint': path, 'batch_size': infer_shape[0], 'length': infer_shape[1],
                        'steps': STEPS['infer', size]})
    if 'parse' in only:
        parse = {**base, 'kind': 'parse', 'steps': STEPS['parse', size]}
        out += [{**parse, 'framework': 'plmjax', 'variant': v} for v in plmjax_variants]
        if torch:
            out.append({**parse, 'framework': 'torch', 'variant': 'eager_f32', 'hf_config': parse_hf_config(size)})
    return out



def write_decode_weights(spec_list: list[dict], root: str) -> None:
    """Writes each decode model's random weights (plmjax's initializer, seed 0) once as a Hugging Face
    directory `<root>/<model>` (`plmjax.convert.save_hf`) and points its decode specs at it: the plmjax worker
    reads it back with `plmjax.convert.load_hf`, `transformers` with `from_pretrained`, so both sides decode the
    same weights and their tokens can be compared."""
    from plmjax import models
    from plmjax.convert import common, hf
    for model in dict.fromkeys(s['model'] for s in spec_list if s['kind'] == 'decode'):
        bench, size = configs.MODELS[model], next(s['size'] for s in spec_list if s.get('model') == model)
        config = models.PRESETS[bench.preset](**bench.preset_overrides(size))
        path = os.path.join(root, model)
        hf.save_hf(path, config, common.init_params(bench.architecture, config), hf_class=bench.hf_class,
                   architecture=bench.architecture)
        for spec in spec_list:
            if spec['kind'] == 'decode' and spec['model'] == model:
                spec['weights_dir'] = path


def worker_env() -> dict:
    """CPU only, one (real) device: the test suite's fake-device flag must not reach the measured process."""
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
    flags = [f for f in env.get('XLA_FLAGS', '').split() if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(flags)
    return env


def run_spec(spec: dict, timeout_s: float) -> dict:
    """Runs one spec in a fresh process; returns the worker's result (or an 'error')."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, '-m', 'plmjax.bench.worker', json.dumps(spec)], env=worker_env(),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {'error': f'timed out after {timeout_s:.0f} s'}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(worker.RESULT_PREFIX)]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        return {'error': f'worker exited with status {proc.returncode}: {tail}'}
    result = json.loads(lines[-1][len(worker.RESULT_PREFIX):])
    result['wall_s'] = time.perf_counter() - start
    return result


def label(spec: dict) -> str:
    parts = [spec['kind'], spec.get('model', ''), spec['framework'], spec.get('variant', ''),
             'logits at ' + spec['logits'] if spec.get('logits') else '']
    if 'batch_sizes' in spec:
        parts.append('batch ' + ','.join(map(str, spec['batch_sizes'])))
    return ' '.join(p for p in parts if p)


def run_all(spec_list: list[dict], size: str, log=sys.stderr) -> list[tuple[dict, dict]]:
    results = []
    for i, spec in enumerate(spec_list):
        print(f'[{i + 1}/{len(spec_list)}] {label(spec)} ...', file=log, end=' ', flush=True)
        result = run_spec(spec, TIMEOUT_S[size])
        print(result.get('error') or f'{result.get("wall_s", 0):.0f} s', file=log, flush=True)
        results.append((spec, result))
    return results
