"""scripts/paired_test.py: McNemar's exact test on two submission files, against a hand computation."""
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _tsv(path, header, values):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in values))
    return str(path)


def test_discordant_pairs_and_exact_p_value(tmp_path):
    labels = [1, 0, 1, 1, 0, 0, 1, 0]
    gold = _tsv(tmp_path / "dev.tsv", ["sentence", "label"], [(f"s {i}", y) for i, y in enumerate(labels)])
    # A right on all 8; B wrong on examples 0, 1, 2: three discordant pairs, all A's -> p = 2 * 0.5**3 = 0.25
    a = _tsv(tmp_path / "a.tsv", ["index", "prediction"], enumerate(labels))
    b = _tsv(tmp_path / "b.tsv", ["index", "prediction"], [(i, 1 - y if i < 3 else y) for i, y in enumerate(labels)])
    out = subprocess.run([sys.executable, "scripts/paired_test.py", gold, a, b], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "A 100.00  B 62.50  (8 examples)" in out
    assert "only A right: 3, only B right: 0; McNemar exact two-sided p = 0.2500" in out
    short = _tsv(tmp_path / "short.tsv", ["index", "prediction"], [(0, 1)])
    failed = subprocess.run([sys.executable, "scripts/paired_test.py", gold, a, short], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "not the same split" in failed.stderr
