"""`plmjax bench` at tiny sizes: every figure is a real positive measurement, the derived figures follow from
the measured ones, and the FLOP count matches the formula computed by hand from the config."""
import argparse
import json

import pytest

from plmjax.bench import command, configs, report, runner


def _positive_summary(summary):
    assert 0 < summary['min'] <= summary['median'] <= summary['max']


def test_flops_formula_by_hand():
    d, mlp, vocab, layers, seq, batch = 64, 128, 512, 2, 32, 8
    layer = 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d  # q k v o, wi, wo, two LayerNorms
    head = d * d + d + 2 * d + vocab  # MLM transform, its LayerNorm, the vocab bias (the projection is tied)
    n = layers * layer + 2 * d + head  # + the embedding LayerNorm
    counts = runner.model_counts('bert', 'tiny')
    assert counts.non_embedding_params == {'encoder': n}
    tokens = batch * seq
    assert counts.flops_per_step == 6 * n * tokens + 12 * layers * seq * d * tokens


def _check_ratio(ratio, a, b):
    """A ratio of two summaries: median / median, range from min / max to max / min."""
    assert ratio['median'] == pytest.approx(a['median'] / b['median'])
    assert ratio['min'] == pytest.approx(a['min'] / b['max']) and ratio['max'] == pytest.approx(a['max'] / b['min'])
    assert ratio['min'] <= ratio['median'] <= ratio['max']


@pytest.mark.slow  # eight fresh worker processes (~50 s on an idle 2-core machine)
def test_tiny_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / 'results.json'
    args = argparse.Namespace(sizes='tiny', only='matmul,bert,decode', repeats=2, out=str(out), no_torch=False,
                              torch_variants='eager_f32', decode_models='gpt2', traceback=False)
    command.run(args)
    record = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert record['errors'] == []
    assert record['machine']['cpu_model'] and set(record['machine']['cpu_flags']) <= set(report.MATRIX_FLAGS)

    ceiling = record['ceiling']
    assert set(ceiling) == {'xla_float32', 'xla_bfloat16', 'xla_bfloat16_to_float32', 'torch_float32',
                            'torch_bfloat16'}
    for c in ceiling.values():
        _positive_summary(c)
    best_f32 = ceiling['xla_float32']['max']

    # BERT: each plmjax variant with logits at every position (like BertForMaskedLM) and at the predicted ones.
    rows = {(r['framework'], r['variant'], r['logits']): r for r in record['train']}
    assert set(rows) == {('plmjax', v, where) for v in ('xla_f32', 'xla_bf16_matmul') for where in configs.LOGITS} | {
        ('torch', 'eager_f32', 'all')}
    counts = runner.model_counts('bert', 'tiny')
    for (framework, variant, _), r in rows.items():
        _positive_summary(r['tokens_per_s'])
        assert r['peak_rss_mb'] > r['import_rss_mb'] > 0
        assert r['tokens_per_step'] == counts.tokens_per_step and r['flops_per_step'] == counts.flops_per_step
        for k in ('median', 'min', 'max'):
            assert r['model_flops_per_s'][k] == pytest.approx(r['tokens_per_s'][k] * r['flops_per_step']
                                                              / r['tokens_per_step'])
            # MFU: over the best matmul of the row's own precision; the f32-ceiling ratio is a separate figure.
            own = {'xla_bf16_matmul': 'xla_bfloat16_to_float32', 'eager_f32': 'torch_float32'}.get(variant,
                                                                                                 'xla_float32')
            assert r['mfu_ceiling'] == own
            assert r['mfu'][k] == pytest.approx(r['model_flops_per_s'][k] / ceiling[own]['max'])
            assert r['vs_xla_f32_ceiling'][k] == pytest.approx(r['model_flops_per_s'][k] / best_f32)
        assert r['loss'] > 0
    torch_eager = rows['torch', 'eager_f32', 'all']
    for where in configs.LOGITS:
        ours = rows['plmjax', 'xla_f32', where]
        assert ours['compile_s'] > 0
        _check_ratio(ours['vs_torch_eager_f32'], ours['tokens_per_s'], torch_eager['tokens_per_s'])
        # Both heads train the same objective (the same batch, parameters and dropout keys; that the sparse head's
        # loss and gradients equal the full one's is proven in tests/objectives/test_mlm_sparse_logits.py).
        assert ours['loss'] == pytest.approx(rows['plmjax', 'xla_f32', 'all']['loss'], rel=1e-3)
        assert rows['plmjax', 'xla_bf16_matmul', where]['loss'] == pytest.approx(ours['loss'], rel=1e-2)
    assert torch_eager['vs_torch_eager_f32']['median'] == pytest.approx(1.0)
    like_for_like = record['targets']['bert xla_f32, logits at all positions']
    assert like_for_like['peak_rss_vs_torch_eager_f32']['median'] == pytest.approx(
        rows['plmjax', 'xla_f32', 'all']['peak_rss_mb'] / torch_eager['peak_rss_mb'])
    assert set(record['targets']) >= {f'bert {v}, logits at {w} positions' for v in ('xla_f32', 'xla_bf16_matmul')
                                      for w in ('all', 'predicted')}

    decode = _check_decode_rows(record, 'gpt2', ('xla_f32', 'xla_bf16_matmul'))
    assert decode['xla_bf16_matmul', 8, 4]['compile_s'] > 0

    ours = rows['plmjax', 'xla_f32', 'all']
    mfu = ours['mfu']
    for text in ('Matmul ceiling', 'Training step', 'Decoding (KV cache)', '4 beams', 'plmjax xla_f32, logits at all positions',
                 'plmjax xla_bf16_matmul, logits at predicted positions', 'torch eager_f32',
                 report.machine_text(record['machine']),
                 f'{100 * mfu["median"]:.1f}% ({100 * mfu["min"]:.1f}–{100 * mfu["max"]:.1f}%)',
                 f'{ours["vs_torch_eager_f32"]["median"]:,.2f}'):
        assert text in table


def _check_decode_rows(record, model, variants):
    """Every (variant, batch, beams) row of `model`, measured, against generate's row of the same model, and
    plmjax float32 decoding the same tokens as generate (the same weights and inputs)."""
    bench = configs.DECODES[model]
    rows = [r for r in record['decode'] if r['model'] == model]
    decode = {(r['variant'], r['batch_size'], r['num_beams']): r for r in rows}
    assert len(decode) == len(rows)
    assert set(decode) == {(v, b, w) for v in (*variants, 'generate') for b in bench.batch_sizes
                           for w in bench.num_beams}
    for (variant, batch_size, beams), r in decode.items():
        _positive_summary(r['tokens_per_s'])
        assert r['peak_rss_mb'] > r['import_rss_mb'] > 0 and r['convert_s'] > 0
        theirs = decode['generate', batch_size, beams]
        _check_ratio(r['vs_transformers_generate'], r['tokens_per_s'], theirs['tokens_per_s'])
        if variant == 'xla_f32':
            assert r['compile_s'] > 0 and r['prepare_s'] > 0
            assert r['same_rows'] == 1.0 and r['same_prefix'] == 1.0, (batch_size, beams)
        if variant == 'generate':
            assert r['same_rows'] is None and r['compile_s'] is None
        search = 'greedy' if beams == 1 else f'beam {beams}'
        if variant != 'generate':
            target = record['targets'][f'decode {model} {search} batch {batch_size} {variant}']
            assert target['vs_transformers_generate'] == r['vs_transformers_generate']
    return decode


@pytest.mark.slow  # two fresh worker processes (~40 s on a 2-core machine)
def test_tiny_t5_decode_bench_matches_generate(tmp_path, capsys):
    """T5 (encoder-decoder) rows beside generate's: the encoder runs once, EOS is held back on both sides
    (min_new_tokens) so every row decodes all its tokens, and both sides produce the same tokens."""
    out = tmp_path / 'decode.json'
    command.run(argparse.Namespace(sizes='tiny', only='decode', repeats=1, out=str(out), no_torch=False,
                                   torch_variants='eager_f32', plmjax_variants='xla_f32', decode_models='t5',
                                   traceback=False))
    record = json.loads(out.read_text())
    assert record['errors'] == []
    assert {r['model'] for r in record['decode']} == {'t5'}
    _check_decode_rows(record, 't5', ('xla_f32',))
    table = capsys.readouterr().out
    assert '| t5 | 8 | 4 beams | plmjax xla_f32 |' in table and 'same rows' in table


def test_same_tokens_counts_rows_and_prefixes():
    ours = [[5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]]
    theirs = [[5, 6, 7, 8], [5, 6, 9, 8], [0, 2, 3, 4]]
    assert report.same_tokens(ours, theirs) == {'same_rows': 1 / 3, 'same_prefix': (4 + 2 + 0) / 12}
    assert report.same_tokens(ours, None) == {'same_rows': None, 'same_prefix': None}


def test_decode_specs_per_model():
    specs = runner.specs('tiny', 1, ['decode'], decode_models=['gpt2', 't5'])
    assert [(s['model'], s['framework'], s['variant']) for s in specs] == [
        (m, f, v) for m in ('gpt2', 't5') for f, v in (('plmjax', 'xla_f32'), ('plmjax', 'xla_bf16_matmul'),
                                                        ('torch', 'generate'))]
    t5 = next(s for s in specs if s['model'] == 't5' and s['framework'] == 'torch')
    assert t5['hf_config']['model_type'] == 't5' and configs.DECODES['t5'].min_new_tokens
    assert not configs.DECODES['gpt2'].min_new_tokens  # GPT-2 has no EOS at all: every step runs
    with pytest.raises(ValueError, match='--decode_models bart: unknown; choose from gpt2,t5'):
        runner.specs('tiny', 1, ['decode'], decode_models=['bart'])


def test_machine_names_the_matrix_units(tmp_path):
    amx = tmp_path / 'cpuinfo'
    amx.write_text('processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\ncpu family\t: 6\n'
                   'model\t\t: 143\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n'
                   'processor\t: 1\nmodel name\t: ignored\n')
    info = report._cpuinfo(str(amx))
    assert info == {'cpu_model': 'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz',
                    'cpu_flags': ['amx_bf16', 'amx_tile', 'avx512_bf16', 'avx512f', 'avx2'],
                    'cpu_family_model': 'family 6 model 143'}
    assert report.machine_text({**info, 'cpus': 2}) == ('Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (family 6 '
                                                        'model 143), 2 CPUs; bf16 matrix units: AMX-BF16, '
                                                        'AVX512-BF16 (AVX-512)')
    plain = report._cpuinfo(str(tmp_path / 'absent'))
    assert plain == {}
    assert report.machine_text({'cpu_model': 'AMD EPYC', 'cpu_flags': ['avx2'], 'cpus': 2}) == (
        'AMD EPYC, 2 CPUs; bf16 matrix units: none (AVX2; no AMX, no AVX512-BF16)')


def test_bad_flags_name_the_choices():
    with pytest.raises(ValueError, match='--only .*matmul,bert,gpt2,t5,decode'):
        command.run(argparse.Namespace(sizes='tiny', only='bert,llama', repeats=1, out='x.json', no_torch=True,
                                       torch_variants='eager_f32', traceback=False))


@pytest.mark.slow  # three fresh worker processes
def test_tiny_parse_bench_measures_impact_matrices_in_both_frameworks(tmp_path, capsys):
    out = tmp_path / 'parse.json'
    command.run(argparse.Namespace(sizes='tiny', only='parse', repeats=2, out=str(out), no_torch=False,
                                   torch_variants='eager_f32', traceback=False))
    record = json.loads(out.read_text())
    assert record['errors'] == []
    rows = {(r['framework'], r['variant']): r for r in record['parse']}
    assert set(rows) == {('plmjax', 'xla_f32'), ('plmjax', 'xla_bf16_matmul'), ('torch', 'eager_f32')}
    for r in rows.values():
        _positive_summary(r['sentences_per_s'])
        assert r['sentences'] == len(configs.PARSE.tiny_word_counts)
    ours, theirs = rows['plmjax', 'xla_f32'], rows['torch', 'eager_f32']
    _check_ratio(ours['vs_torch_eager_f32'], ours['sentences_per_s'], theirs['sentences_per_s'])
    assert 'impact matrices xla_f32' in record['targets']
    assert '### Perturbed Masking impact matrices' in capsys.readouterr().out


def test_a_worker_reports_its_own_peak_memory_not_its_parents():
    import subprocess
    import sys
    ballast = bytearray(400 * 2 ** 20)  # the parent resident at 400 MB more when it starts the worker
    ballast[::4096] = b'\x01' * len(ballast[::4096])
    code = 'from plmjax.bench import timing; print(timing.peak_rss_mb())'
    child = float(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout)
    assert child < 300, child  # getrusage's ru_maxrss reported the parent's ~400+ MB here
    del ballast


@pytest.mark.slow  # two fresh worker processes
def test_checkpoints_group_times_saved_models_side_by_side(tmp_path, capsys):
    """`--only checkpoints --checkpoints teacher=DIR,student=DIR`: each saved model's forward pass in its own
    worker, with its size on disk; a quantized student (its metadata and packed file) runs quantization-aware."""
    import jax
    import numpy as np
    from plmjax import models
    from plmjax.compression import packing
    from plmjax.train import saved_model
    dirs = {}
    for name, layers, quantized in (('teacher', 2, None), ('student', 1, 'ternary')):
        config = models.tiny_encoder(vocab_size=64, max_length=32, num_encoder_layers=layers)
        model = models.build_model('encoder_classifier', config, num_labels=2)
        params = jax.tree.map(np.asarray, __import__('flax').linen.meta.unbox(
            model.init(jax.random.key(0), np.ones((1, 8), np.int32))['params']))
        metadata = {'head_options': {'num_labels': 2}}
        if quantized:
            metadata['quantize'] = {'method': quantized, 'activation_bits': 8, 'clip': 2.5}
        saved_model.save_model(str(tmp_path / name), 'encoder_classifier', config, params, metadata=metadata)
        if quantized:
            packing.export_packed(str(tmp_path / name / 'packed.npz'), params, quantized)
        dirs[name] = str(tmp_path / name)
    out = tmp_path / 'checkpoints.json'
    command.run(argparse.Namespace(sizes='tiny', only='checkpoints', repeats=2, out=str(out), no_torch=True,
                                   torch_variants='eager_f32', traceback=False, infer_shape='4,16',
                                   checkpoints=','.join(f'{k}={v}' for k, v in dirs.items())))
    record = json.loads(out.read_text())
    assert record['errors'] == []
    teacher, student = record['infer']
    assert (teacher['name'], student['name']) == ('teacher', 'student') and teacher['batch_size'] == 4
    for row in (teacher, student):
        _positive_summary(row['examples_per_s'])
    assert student['parameters'] < teacher['parameters'] and student['checkpoint_bytes'] < teacher['checkpoint_bytes']
    assert teacher['packed_bytes'] is None and 0 < student['packed_bytes'] < student['checkpoint_bytes']
    assert student['quantize']['method'] == 'ternary'
    _check_ratio(student['vs_first'], student['examples_per_s'], teacher['examples_per_s'])
    assert '### Checkpoints: forward pass, batch 4 x 16 tokens' in capsys.readouterr().out
