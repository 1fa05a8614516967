"""Expert parallelism as the TPU compiler partitions it: on a (data=4, expert=4) v5e-16 mesh the MoE layers move
tokens to their experts and back with all-to-alls, and no chip gathers the whole batch's activations. Before
`MoeMlp` dispatched on each device's own groups first (plmjax.layers.moe), libtpu 0.0.42 all-gathered the
[batch, length, embed] activations of all 64 sequences onto every chip for the dispatch and combine einsums (the CPU
partitioner, in tests/train/test_moe_training.py's mesh, did not: only a TPU compile shows it)."""
import re

import pytest

from plmjax import sharding
from plmjax.models import config as config_lib
from plmjax.plan import aot, hardware
from tests.plan import needs_libtpu


@pytest.mark.slow
@needs_libtpu
def test_switch_moves_tokens_with_all_to_alls_on_a_v5e_mesh():
    config = config_lib.switch_base_8(emb_dim=128, mlp_dim=256, num_heads=2, vocab_size=1024, num_encoder_layers=2,
                                      num_decoder_layers=2, dtype="bfloat16", attention_dropout_rate=0.0)
    mesh = sharding.create_mesh(devices=hardware.topology_devices("v5e:4x4"), data=4, expert=4)
    batch = 64
    step = aot._compile_step(config, "encoder_decoder", "span_corruption", {"inputs": 128, "targets": 32}, mesh,
                             batch, None, 1, sharding.LOGICAL_AXIS_RULES)
    text = step["compiled"].as_text()
    gathered = re.findall(r"= \w+\[(\d+),\d+,128\]\S* all-gather\(", text)  # [rows, length, embed] results
    assert "all-to-all(" in text
    assert str(batch) not in gathered, gathered
