"""scripts/activation_ranges.py runs on a saved model and a task, with a row for every kind of product input
that TernaryBERT's 8-bit quantization sees; every entry is beyond a clip of 0 and none beyond 1e9."""
import importlib.util
import re
import sys

from tests.conftest import REPO_ROOT
from tests.train import tiny_classification
from tests.train.finetune_checkpoint import save_random_encoder


def test_table_of_every_product_input(tmp_path, monkeypatch, capsys):
    tiny_classification.register()
    try:
        checkpoint, _ = save_random_encoder(tmp_path / "encoder", seed=3)
        spec = importlib.util.spec_from_file_location("activation_ranges", REPO_ROOT / "scripts/activation_ranges.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        monkeypatch.setattr(sys, "argv", ["activation_ranges.py", checkpoint, "--task", tiny_classification.TASK,
                                          "--length", "16", "--batch_size", "16", "--batches", "2",
                                          "--clips", "0,1e9"])
        script.main()
    finally:
        tiny_classification.remove()
    rows = re.findall(r"^\| (.+?) \| ([0-9.]+) \| ([0-9.]+)% \| ([0-9.]+)% \|$", capsys.readouterr().out, re.M)
    sites = {site for site, *_ in rows}
    assert {"query input", "key input", "value input", "query", "key", "probabilities", "value", "out input",
            "wi input", "wo input"} <= sites, sites
    for site, peak, beyond_zero, beyond_huge in rows:
        assert float(peak) > 0 and beyond_zero == "100.00" and beyond_huge == "0.00", (site, peak)
