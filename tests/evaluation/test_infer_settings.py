"""`plmjax infer` beyond the parity tests: u-PMLM from an encoder checkpoint (orders, constraints), settings from gin
files (the flag wins over gin), and inputs from a seqio task split."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plmjax import cli, convert, models
from tests.evaluation import tiny_encoder_checkpoint
from plmjax.decode import decoding, pmlm

WORDS = tiny_encoder_checkpoint.WORDS


@pytest.fixture(scope='module')
def encoder_dir(tmp_path_factory):
    return tiny_encoder_checkpoint.save(tmp_path_factory.mktemp('pmlm'))


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pmlm_infer_writes_the_library_generation_with_constraints_and_order(encoder_dir, tmp_path):
    path, module, params = encoder_dir
    inputs = tmp_path / 'prompts.jsonl'
    inputs.write_text(json.dumps({'inputs': 'w5 w6', 'fixed': {'1': 'w40', '4': 'w41 w42'}}) + '\n'
                      + json.dumps({'inputs': 'w9'}) + '\n')
    out = tmp_path / 'out.jsonl'
    assert cli.main(['infer', '--checkpoint', str(path), '--inputs', str(inputs), '--out', str(out), '--strategy',
                     'pmlm', '--order', '3,7,1,2,4,6,5,8', '--max_new_tokens', '8', '--batch_size', '2']) == 0
    rows = _rows(out)
    assert rows[0]['tokens'][1] == WORDS.index('w40') + 5 and rows[0]['tokens'][4:6] == [WORDS.index('w41') + 5,
                                                                                         WORDS.index('w42') + 5]
    assert rows[0]['order'] == [2, 6, 0, 3, 7]  # the given order (0-based) without the fixed offsets 1, 4, 5
    assert rows[1]['order'] == [2, 6, 0, 1, 3, 5, 4, 7] and rows[1]['length'] == 8
    # the library on the same template gives the same text
    ids, free, mask = pmlm.template([[5, 6], [9]], 8, mask_id=3, pad_id=0, cls_id=1, sep_id=2,
                                    fixed=[{1: [40], 4: [41, 42]}, {}], length=16)
    ranks = np.zeros(ids.shape, np.int32)
    ranks[0, 3:11] = ranks[1, 2:10] = np.argsort([2, 6, 0, 1, 3, 5, 4, 7])
    got = pmlm.generate(module, params, ids, free, pmlm.Options(mask_id=3, forbidden_ids=(0, 1, 2)),
                        input_mask=mask, ranks=ranks)
    assert rows[0]['tokens'] == np.asarray(got.tokens)[0, 3:11].tolist()
    assert rows[1]['tokens'] == np.asarray(got.tokens)[1, 2:10].tolist()
    assert not set(rows[1]['tokens']) & {0, 1, 2, 3}
    np.testing.assert_allclose([r['score'] for r in rows], np.asarray(got.scores), rtol=1e-5)


def test_an_earlier_infer_bindings_do_not_leak_into_the_next_call(encoder_dir, tmp_path):
    """One process, two `plmjax infer` calls (a notebook, the test suite): the second, without gin files, uses the
    defaults and its checkpoint's tokenizer, not the first call's `infer.*` bindings (a task vocabulary, a length)."""
    path, _, _ = encoder_dir
    inputs = tmp_path / 'prompts.txt'
    inputs.write_text('w5 w6\n')
    gin_file = tmp_path / 'other.gin'
    gin_file.write_text("infer.task = 'pydoc_lm'\ninfer.max_new_tokens = 3\ninfer.order = 'random'\n")
    first, second = tmp_path / 'first.jsonl', tmp_path / 'second.jsonl'
    assert cli.main(['infer', '--checkpoint', str(path), '--inputs', str(inputs), '--out', str(first), '--strategy',
                     'pmlm', '--gin_file', str(gin_file)]) == 0
    assert cli.main(['infer', '--checkpoint', str(path), '--inputs', str(inputs), '--out', str(second), '--strategy',
                     'pmlm', '--max_new_tokens', '4']) == 0
    row = _rows(second)[0]
    assert row['order'] == [0, 1, 2, 3]  # the default left-to-right order
    assert set(row['tokens']) <= set(range(5, 64)) and row['output'] == ' '.join(WORDS[t - 5] for t in row['tokens'])


@pytest.mark.parametrize('flags, message', [
    (['--order', '1,2'], 'list the 8 generated positions'),
    (['--order', 'sideways'], 'choose one of'),
])
def test_pmlm_infer_rejects_a_bad_order(encoder_dir, tmp_path, capsys, flags, message):
    path, _, _ = encoder_dir
    inputs = tmp_path / 'p.txt'
    inputs.write_text('w5\n')
    assert cli.main(['infer', '--checkpoint', str(path), '--inputs', str(inputs), '--strategy', 'pmlm',
                     '--max_new_tokens', '8', *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


@pytest.mark.slow
def test_gin_settings_and_flags_and_a_task_split(tmp_path, capsys):
    """A decoder checkpoint, inputs from pydoc_lm's validation split; gin binds the strategy and the length, the
    --max_new_tokens flag wins over gin's."""
    config = models.tiny_decoder(vocab_size=4096, dropout_rate=0.0)
    module = models.build_model('decoder', config)
    params = jax.device_get(nn.meta.unbox(module.init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))['params']))
    convert.save_checkpoint(str(tmp_path / 'gpt'), 'decoder', config, params)
    gin_file = tmp_path / 'generate.gin'
    gin_file.write_text("infer.strategy = 'sample'\ninfer.top_k = 1\ninfer.max_new_tokens = 99\n"
                        "infer.task = 'pydoc_lm'\ninfer.split = 'validation'\ninfer.num_examples = 3\n"
                        "infer.feature_length = 32\n")
    out = tmp_path / 'out.jsonl'
    assert cli.main(['infer', '--checkpoint', str(tmp_path / 'gpt'), '--gin_file', str(gin_file), '--out', str(out),
                     '--max_new_tokens', '6', '--batch_size', '3']) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(len(r['tokens']) == 6 and r['target'] for r in rows)
    import seqio
    import plmjax.tasks  # noqa: F401
    vocab = seqio.get_mixture_or_task('pydoc_lm').output_features['targets'].vocabulary
    dataset = seqio.get_mixture_or_task('pydoc_lm').get_dataset({'targets': 32}, split='validation', shuffle=False)
    prompts = []
    for example in dataset.take(3).as_numpy_iterator():
        targets = [int(t) for t in example['targets'] if t not in (0, vocab.eos_id)]
        prompts.append(targets[:len(targets) // 2])
    assert [r['input'] for r in rows] == [vocab.decode(p) for p in prompts]
    ids = np.zeros((3, 16), np.int32)
    mask = np.zeros((3, 16), np.int32)
    for row, p in enumerate(prompts):
        ids[row, 16 - len(p):], mask[row, 16 - len(p):] = p, 1
    greedy = decoding.generate(module, params, ids, decoding.Options(max_new_tokens=6, eos_id=vocab.eos_id),
                               input_mask=mask)  # sampling with top_k = 1 is greedy
    assert [r['tokens'] for r in rows] == np.asarray(greedy.tokens).tolist()
