"""train/adapter.py: PEFT adapters through the one checkpoint writer: a crash while saving keeps the previous
adapter loadable; the size report is sum(prod(shape) * itemsize)."""
import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from plmjax import peft
from plmjax.train import adapter as adapter_lib
from tests.peft.helpers import init_params, model_and_inputs, randomize


def _lora_params():
    module, args, kwargs = model_and_inputs('encoder_classifier')
    return init_params(peft.wrap(module, 'lora'), args, kwargs)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_a_crash_while_saving_leaves_the_previous_adapter_loadable(tmp_path, monkeypatch):
    params = _lora_params()
    first = {**params, 'lora': randomize(params['lora'], seed=1)}
    second = {**params, 'lora': randomize(params['lora'], seed=2)}
    directory = tmp_path / 'adapter'
    adapter_lib.save_adapter(directory, first, 'lora')

    def crash(self, directory, *args, **kwargs):  # the arrays' write fails after the save began
        raise OSError('disk full')
    with monkeypatch.context() as patch:
        patch.setattr(ocp.StandardCheckpointHandler, 'async_save', crash)
        with pytest.raises(OSError, match='disk full'):
            adapter_lib.save_adapter(directory, second, 'lora')
    method, loaded = adapter_lib.load_adapter(directory)
    assert method == 'lora'
    _assert_same(loaded, jax.device_get(peft.adapter_params(first)))

    adapter_lib.save_adapter(directory, second, 'lora')  # the next save replaces it, over the crash's leftovers
    _assert_same(adapter_lib.load_adapter(directory)[1], jax.device_get(peft.adapter_params(second)))
    assert sorted(p.name for p in directory.iterdir()) == ['2']  # keep-1; the crashed step 2 written again


def test_sizes_are_shapes_times_itemsizes():
    params = _lora_params()
    params = {**params, 'base': jax.tree.map(lambda x: np.asarray(x, np.float16), params['base'])}
    size = peft.adapter_size(params)
    expected = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    assert size['adapter_bytes'] == expected(peft.adapter_params(params))
    assert size['full_bytes'] == expected(params) > size['adapter_bytes']
    assert size['full_parameters'] == sum(x.size for x in jax.tree.leaves(params))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    assert peft.adapter_size(abstract) == size
