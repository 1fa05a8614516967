"""`plmjax bench` at tiny sizes: every figure is a real positive measurement, the derived figures follow from
the measured ones, and the FLOP count matches the formula computed by hand from the config."""
import argparse
import json

import pytest

from plmjax.bench import command, configs, runner

pytestmark = pytest.mark.slow  # six fresh worker processes (~40 s on an idle 2-core machine)


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


def test_tiny_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / 'results.json'
    args = argparse.Namespace(sizes='tiny', only='matmul,bert,decode', repeats=2, out=str(out), no_torch=False,
                              torch_variants='eager_f32', traceback=False)
    command.run(args)
    record = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert record['errors'] == []

    ceiling = record['ceiling']
    assert set(ceiling) == {'xla_float32', 'xla_bfloat16', 'xla_bfloat16_to_float32', 'torch_float32',
                            'torch_bfloat16'}
    for c in ceiling.values():
        _positive_summary(c)
    best_f32 = ceiling['xla_float32']['max']

    rows = {(r['framework'], r['variant']): r for r in record['train']}
    assert set(rows) == {('plmjax', 'xla_f32'), ('plmjax', 'xla_bf16_matmul'), ('torch', 'eager_f32')}
    counts = runner.model_counts('bert', 'tiny')
    for r in rows.values():
        _positive_summary(r['tokens_per_s'])
        assert r['peak_rss_mb'] > r['import_rss_mb'] > 0
        assert r['tokens_per_step'] == counts.tokens_per_step and r['flops_per_step'] == counts.flops_per_step
        assert r['model_flops_per_s'] == pytest.approx(r['tokens_per_s']['median'] * r['flops_per_step']
                                                       / r['tokens_per_step'])
        assert r['mfu'] == pytest.approx(r['model_flops_per_s'] / best_f32)
        own = {'xla_bf16_matmul': 'xla_bfloat16_to_float32', 'eager_f32': 'torch_float32'}.get(r['variant'],
                                                                                             'xla_float32')
        assert r['mfu_own'] == pytest.approx(r['model_flops_per_s'] / ceiling[own]['max'])
        assert r['loss'] > 0
    ours, torch_eager = rows['plmjax', 'xla_f32'], rows['torch', 'eager_f32']
    assert ours['compile_s'] > 0
    assert ours['vs_torch_eager_f32'] == pytest.approx(ours['tokens_per_s']['median']
                                                       / torch_eager['tokens_per_s']['median'])
    assert torch_eager['vs_torch_eager_f32'] == pytest.approx(1.0)
    assert rows['plmjax', 'xla_bf16_matmul']['loss'] == pytest.approx(ours['loss'], rel=1e-2)
    assert record['targets']['bert xla_f32']['peak_rss_vs_torch_eager_f32'] == pytest.approx(
        ours['peak_rss_mb'] / torch_eager['peak_rss_mb'])

    decode = {(r['variant'], r['batch_size']): r for r in record['decode']}
    assert set(decode) == {(v, b) for v in ('xla_f32', 'xla_bf16_matmul', 'generate')
                           for b in configs.DECODE.batch_sizes}
    for (variant, batch_size), r in decode.items():
        _positive_summary(r['tokens_per_s'])
        assert r['vs_transformers_generate'] == pytest.approx(
            r['tokens_per_s']['median'] / decode['generate', batch_size]['tokens_per_s']['median'])
    assert decode['xla_f32', 8]['compile_s'] > 0 and decode['xla_bf16_matmul', 8]['compile_s'] > 0

    for text in ('Matmul ceiling', 'Training step', 'Greedy decoding', 'plmjax xla_f32', 'torch eager_f32',
                 f'{100 * ours["mfu"]:.1f}%', f'{ours["vs_torch_eager_f32"]:,.2f}'):
        assert text in table


def test_bad_flags_name_the_choices():
    with pytest.raises(ValueError, match='--only .*matmul,bert,gpt2,t5,decode'):
        command.run(argparse.Namespace(sizes='tiny', only='bert,llama', repeats=1, out='x.json', no_torch=True,
                                       torch_variants='eager_f32', traceback=False))
