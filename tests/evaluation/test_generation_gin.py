"""Each tiny generation gin file (gin_configs/generation/tiny_*.gin) runs `plmjax infer` end to end on a
random-weight checkpoint of its experiment's model, with inputs from the task split it names."""
import copy
import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import pytest

from plmjax import cli, convert, launch, models
from tests.conftest import REPO_ROOT

TINY = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / 'gin_configs' / 'generation').glob('tiny_*.gin'))


@pytest.fixture(autouse=True)
def _fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_there_are_generation_files_for_each_family():
    assert {'gin_configs/generation/tiny_gpt_sample.gin', 'gin_configs/generation/tiny_t5_beam.gin',
            'gin_configs/generation/tiny_bert_pmlm_random.gin'} <= set(TINY)


@pytest.mark.parametrize('path', TINY)
def test_generation_gin_runs_infer(path, tmp_path):
    text = (REPO_ROOT / path).read_text()
    assert f'plmjax infer --gin_file={path}' in text, 'the header gives the infer command'
    launch.parse_gin([path], [])
    config = copy.deepcopy(gin.query_parameter('%MODEL_CONFIG'))
    arch = gin.query_parameter('%MODEL_ARCH')
    gin.clear_config()
    module = models.build_model(arch, config)
    inputs = (jnp.ones((1, 8), jnp.int32),) * (2 if arch == 'encoder_decoder' else 1)
    params = jax.device_get(nn.meta.unbox(module.init(jax.random.key(0), *inputs)['params']))
    convert.save_checkpoint(str(tmp_path / 'model'), arch, config, params)
    out = tmp_path / 'out.jsonl'
    assert cli.main(['infer', '--gin_file', path, '--checkpoint', str(tmp_path / 'model'), '--out', str(out),
                     '--num_examples', '2', '--batch_size', '2']) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r['input'] and 'target' in r and r['tokens'] for r in rows)
    if 'pmlm' in path:
        assert all(sorted(r['order']) == list(range(12)) for r in rows)
