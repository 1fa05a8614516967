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


def test_stage1_flops_per_token_by_hand():
    """A two-stage step: forward through the sub-model, backward through its top block and the head's transform,
    the frozen tied projection's input gradient only."""
    script = _script()
    large = config_lib.tiny_encoder(vocab_size=4096, emb_dim=128, num_heads=8, mlp_dim=256, num_encoder_layers=4)
    layer, transform, vocab = 65536 + 65536 + 8192, 16384, 524288
    assert script.stage1_flops_per_token(large, 32, 2, 2) == (2 * (2 * layer + transform + vocab)
                                                             + 4 * (2 * layer + transform) + 2 * vocab)
    assert script.stage1_flops_per_token(large, 32, 4, 2) < script.train_flops_per_token(large, 32)
    # all four layers as one block: a full step less the tied table's weight gradient
    assert script.stage1_flops_per_token(large, 32, 4, 4) == script.train_flops_per_token(large, 32) - 2 * vocab


def test_full_model_steps_counts_stage1_at_its_sampled_depths():
    rows = [{"step": 10, "sub_model_layers": 2.0}, {"step": 20, "sub_model_layers": 3.0},
            {"step": 30, "sub_model_layers": 4.0}, {"step": 40, "sub_model_layers": 4.0}]
    cost = lambda depth: depth / 10  # noqa: E731
    assert _script().full_model_steps(rows, 20, cost) == {0: 0.0, 10: 2.0, 20: 5.0, 30: 15.0, 40: 25.0}
