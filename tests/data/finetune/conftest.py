import pytest

from tests.data.finetune import fixtures


@pytest.fixture(scope="session")
def english_reference():
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(str(fixtures.english_model_dir()))


@pytest.fixture(scope="session")
def chinese_reference(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(
        str(fixtures.chinese_vocab_dir(tmp_path_factory.mktemp("chinese_bert"))))
