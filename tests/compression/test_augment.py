"""TinyBERT data augmentation: BERT's basic tokenizer, the released code's MLM query (masked sentence as segment A,
the original as segment B), candidates against a brute-force top-K of the model's own softmax, the sampling's
statistics, determinism, and the GLUE folder the task reader reads back."""
import dataclasses
import json

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plmjax.interactive as pi
from plmjax import cli, convert, models
from plmjax.compression import augment, augment_glue
from plmjax.data.finetune import glue

SPECIALS = ['[PAD]', '[CLS]', '[SEP]', '[MASK]', '[UNK]']
WORDS = ['film', 'movie', 'good', 'bad', 'great', 'dull', 'plot', 'actor', 'story', 'scene', 'cat', 'dog', 'funny',
         'the', 'is', 'a', 'not', '.', ',', '!', 'wonderful', 'boring', 'script', 'music', 'ending', 'cast']
PIECES = ['##s', '##ing', '##ly']
VOCAB = SPECIALS + WORDS + PIECES


@pytest.fixture(scope='module')
def mlm_dir(tmp_path_factory):
    """A random-weight tiny encoder (token types on) with a WordPiece tokenizer that has continuation pieces."""
    import tokenizers
    path = tmp_path_factory.mktemp('mlm')
    config = models.tiny_encoder(vocab_size=len(VOCAB), dropout_rate=0.0, max_length=32)
    module = models.build_model('encoder', config)
    params = jax.device_get(nn.meta.unbox(module.init(jax.random.key(3), jnp.ones((1, 8), jnp.int32))['params']))
    convert.save_checkpoint(str(path), 'encoder', config, params)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece({w: i for i, w in enumerate(VOCAB)},
                                                                 unk_token='[UNK]'))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix='##')
    tokenizer.add_special_tokens(SPECIALS)
    (path / 'tokenizer').mkdir()
    tokenizer.save(str(path / 'tokenizer' / 'tokenizer.json'))
    (path / 'tokenizer' / 'special_tokens_map.json').write_text(json.dumps(
        {'pad_token': '[PAD]', 'cls_token': '[CLS]', 'sep_token': '[SEP]', 'mask_token': '[MASK]',
         'unk_token': '[UNK]'}))
    return path


def test_words_are_berts_basic_tokenizer():
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer  # the original BERT code's
    reference = BasicTokenizer(do_lower_case=True)
    for text in ["It's a Wonderful, wonderful film!", 'Café  déjà-vu (2001)... "no"', 'the 中文 plot\tends',
                 "hide new secretions from the parental units "]:
        assert augment.words(text) == reference.tokenize(text)
    assert augment.words('The FILM', lower_case=False) == ['The', 'FILM']


def test_replaceable_words_are_letters_and_not_stop_words():
    assert [w for w in ['film', 'Film', 'the', 'is', "'s", 'x2', 'déjà', ',', 'boring'] if augment.replaceable(w)] \
        == ['film', 'Film', 'boring']


def test_query_is_the_released_codes_layout(mlm_dir):
    mlm = pi.masked_lm(pi.load(str(mlm_dir)))
    cats = mlm.encode('cats')
    assert len(cats) == 2  # cat ##s
    pieces = [mlm.encode(w) for w in ['the', 'cats', 'is', 'funny']]
    ids, types, position = augment.query(mlm, pieces, 3)
    the, is_, funny = (VOCAB.index(w) for w in ('the', 'is', 'funny'))
    assert ids == [1, the, *cats, is_, 3, 2, the, *cats, is_, funny, 2]
    assert types == [0] * 7 + [1] * 6 and position == 5
    ids, _, position = augment.query(mlm, pieces, 1)  # a multi-piece word: one [MASK] for its pieces
    assert ids[:5] == [1, the, 3, is_, funny] and position == 2
    mlm.max_length = 5
    assert augment.query(mlm, pieces, 3) is None and augment.query(mlm, pieces, 2)[0] == [1, the, *cats, 3]


def test_candidates_are_the_top_k_whole_words_of_the_models_softmax(mlm_dir):
    model = pi.load(str(mlm_dir))
    mlm = pi.masked_lm(model)
    sentences = [augment.words(t) for t in ['The cats is a funny film .', 'boring script , great music !']]
    options = augment.Options(num_candidates=6)
    got = augment.candidates(mlm, sentences, options, batch_size=4)
    assert [sorted(g) for g in got] == [[1, 4, 5], [0, 1, 3, 4]]  # the replaceable words (cats: two pieces)
    for s, sentence in enumerate(sentences):
        pieces = [mlm.encode(w) for w in sentence]
        for i, found in got[s].items():
            ids, types, position = augment.query(mlm, pieces, i)
            logits = model.module.apply({'params': model.params}, jnp.asarray([ids]),
                                        token_type_ids=jnp.asarray([types]))['logits'][0, position]
            logits = np.asarray(logits, np.float64)
            probs = np.exp(logits - logits.max())
            top = np.argsort(-probs / probs.sum(), kind='stable')[:6]
            expected = [VOCAB[t] for t in top if VOCAB[t] not in SPECIALS and not VOCAB[t].startswith('##')]
            assert found == (expected or [sentence[i]])


def test_a_word_without_candidates_keeps_itself():
    spelled = {5: 'film', 6: 's', 7: 'xyz'}  # 6 is a continuation ('##s' decodes to 's'), 7 encodes to nothing
    pieces = {'film': [5], 'dull': [4]}
    mlm = augment.MaskedLM(encode=lambda t: pieces.get(t, []), decode=lambda ids: spelled.get(ids[0], ''),
                           logits=lambda ids, types, pos: np.tile(np.arange(8.0), (len(pos), 1)),
                           cls_id=1, sep_id=2, mask_id=3, pad_id=0, max_length=16)
    # the top pieces are 7, 6, 5: only 5 spells a word; 'films' has no piece here, so no query
    assert augment.candidates(mlm, [['film', 'films']], augment.Options(num_candidates=2)) == [{0: ['film'],
                                                                                                   1: ['films']}]
    assert augment.candidates(mlm, [['dull']], augment.Options(num_candidates=3)) == [{0: ['film']}]


def test_copies_replace_with_probability_p_and_draw_candidates_uniformly():
    options = augment.Options(copies=1, replace_prob=0.4)
    picks = []
    for seed in range(4000):
        out = augment.copies(['a', 'film'], {1: ['movie', 'story', 'plot']}, options, np.random.default_rng(seed))
        picks += [o.split()[1] for o in out]
    n = 4000
    assert abs(len(picks) / n - 0.4) < 4 * np.sqrt(0.4 * 0.6 / n)
    counts = np.array([picks.count(w) for w in ('movie', 'story', 'plot')], np.float64)
    expected = np.full(3, len(picks) / 3)
    assert ((counts - expected) ** 2 / expected).sum() < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_copies_are_distinct_new_and_deterministic():
    choices = {0: ['good', 'great'], 2: ['film', 'story']}
    options = augment.Options(copies=20, seed=7)
    first = augment.copies(['bad', 'is', 'movie'], choices, options, np.random.default_rng([7, 0]))
    again = augment.copies(['bad', 'is', 'movie'], choices, options, np.random.default_rng([7, 0]))
    assert first == again and len(set(first)) == len(first) <= 8 and 'bad is movie' not in first
    assert all(t.split()[1] == 'is' for t in first)
    with pytest.raises(ValueError, match='replace_prob'):
        augment.Options(replace_prob=1.5)


def test_augment_folder_is_read_back_by_the_glue_reader(mlm_dir, tmp_path, capsys):
    source = tmp_path / 'glue' / 'SST-2'
    source.mkdir(parents=True)
    rows = ['a funny film .\t1', 'boring script , dull music\t0', 'the\t1']
    (source / 'train.tsv').write_text('sentence\tlabel\n' + '\n'.join(rows) + '\n')
    (source / 'dev.tsv').write_text('sentence\tlabel\ngreat cast\t1\n')
    mlm = pi.masked_lm(pi.load(str(mlm_dir)))
    options = augment.Options(copies=5, seed=1)
    sizes = augment_glue.augment_folder(mlm, glue.TASKS['sst2'], str(tmp_path / 'glue'), str(tmp_path / 'aug'),
                                        options, limit=0, batch_size=8, progress=False)
    examples = glue.read_tsv_split(glue.TASKS['sst2'], str(tmp_path / 'aug'), 'train')
    assert sizes['examples'] == 3 and sizes['augmented_examples'] == len(examples) > 3
    groups = augment.augment(mlm, ['a funny film .', 'boring script , dull music', 'the'], options, 8)
    assert [e['sentence'] for e in examples] == [t for g in groups for t in g]
    assert [e['label'] for e in examples] == [1] * len(groups[0]) + [0] * len(groups[1]) + [1]  # 'the': no copy
    assert (tmp_path / 'aug' / 'SST-2' / 'dev.tsv').read_text() == (source / 'dev.tsv').read_text()
    # `plmjax augment`: the options from gin (the recipe's file, then bindings), the progress bar, augment.json
    again = tmp_path / 'again'
    common = ['augment', '--mlm', str(mlm_dir), '--glue_dir', str(tmp_path / 'glue'), '--out', str(again),
              '--limit', '2', '--batch_size', '3', '--gin_file', 'gin_configs/compression/augment.gin']
    try:
        assert cli.main([*common, '--gin_param', 'augment.copies = 5', '--gin_param', 'augment.seed = 1']) == 0
    finally:
        gin.clear_config()  # no binding reaches later tests
    assert (again / 'SST-2' / 'train.tsv').read_text().splitlines() == \
        (tmp_path / 'aug' / 'SST-2' / 'train.tsv').read_text().splitlines()[:1 + len(groups[0]) + len(groups[1])]
    record = json.loads((again / 'SST-2' / 'augment.json').read_text())
    assert record['options'] == {**dataclasses.asdict(options), 'num_candidates': 15, 'replace_prob': 0.4}
    assert record['examples'] == 2 and record['mlm'] == str(mlm_dir)
    try:
        assert cli.main([*common, '--gin_param', 'augment.copys = 5']) == 2
    finally:
        gin.clear_config()
    assert 'copys' in capsys.readouterr().err
