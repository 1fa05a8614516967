"""scripts/grow_experiment.py's arithmetic: the first step reaching a loss on hand-made curves, and the training
FLOPs per token of tiny_encoder counted by hand."""
import importlib.util

from plmjax.models import config as config_lib
from tests.conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("grow_experiment", REPO_ROOT / "scripts" / "grow_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_step_reaching():
    first = _script().first_step_reaching
    steps, losses = [0, 20, 40, 60, 80], [7.0, 6.5, 6.3, 6.35, 6.1]
    assert first(steps, losses, 6.3) == 40  # at or below, the first time (not the last crossing)
    assert first(steps, losses, 6.32) == 40
    assert first(steps, losses, 7.0) == 0  # a grown model may start there
    assert first(steps, losses, 6.0) is None  # never reached


def test_train_flops_per_token_by_hand():
    flops = _script().train_flops_per_token
    small = config_lib.tiny_encoder(vocab_size=4096)  # 2 layers, 64 wide, 4 heads of 16, FFN 128
    # per layer: q, k, v, out 4*64*64 + FFN 2*64*128 + attention scores and values 2*32*64; MLM transform 64*64;
    # tied output projection 4096*64
    assert flops(small, 32) == 6 * (2 * (16384 + 16384 + 4096) + 4096 + 262144)
    large = config_lib.tiny_encoder(vocab_size=4096, emb_dim=128, num_heads=8, mlp_dim=256, num_encoder_layers=4)
    assert flops(large, 32) == 6 * (4 * (65536 + 65536 + 8192) + 16384 + 524288)


def test_steps_saved_exact_and_lower_bounds():
    saved = _script().steps_saved
    assert saved(400, 100, 600) == "300 (75%)"
    assert saved(400, 100, 600, cost=200.0) == "100 (25%)"  # the small model's training paid in large steps
    assert saved(None, 120, 600) == "> 480 (> 80%)"  # scratch did not get there within 600 steps
    assert saved(None, 120, 600, cost=180.0) == "> 300 (> 50%)"
    assert saved(400, None, 600) == "-"
