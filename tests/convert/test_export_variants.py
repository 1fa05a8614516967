"""plmjax configs that the tiny transformers references of test_hf_parity.py do not cover (untied output layers,
T5 tied without logit scaling, BART with scaled embeddings, ALBERT's pooler), exported with `save_hf`: the
directory loads with `from_pretrained` and transformers computes what plmjax computes (same tolerances)."""
import numpy as np
import pytest

pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from plmjax import convert  # noqa: E402
from plmjax.convert import common, parity  # noqa: E402

from tests.convert.test_hf_parity import check_differences  # noqa: E402
from tests.convert.test_round_trip import CASES  # noqa: E402

VARIANTS = ['bert_untied', 'albert', 'gpt2_untied', 't5_tied_unscaled', 'bart_untied']


@pytest.mark.parametrize('name', VARIANTS)
def test_exported_variant_computes_the_same_in_transformers(name, tmp_path):
    arch, config, _, family = CASES[name]
    rng = np.random.RandomState(0)
    params = common.unflatten({  # random weights around the usual init, norm scales around 1
        path: (rng.normal(0, 0.05, leaf.shape) + path.endswith('scale')).astype(np.float32)
        for path, leaf in common.flatten(common.abstract_params(arch, config)).items()})
    written = convert.save_hf(str(tmp_path), config, params, family=family)
    hf_config, _ = convert.read_hf_dir(str(tmp_path))
    reference = getattr(transformers, hf_config['architectures'][0]).from_pretrained(tmp_path).eval()
    converted = convert.Converted(arch, config, params, written, [], [])
    check_differences(parity.compare(reference, converted), arch)
