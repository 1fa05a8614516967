"""GPT-2's byte-level BPE vocabulary, built from the rank file openai-whisper ships, gives tiktoken's `gpt2` ids
on real English text (SST-2, WikiText-2, the standard library's docs) and on text that stresses the byte level
(accents, CJK, emoji, control characters, runs of spaces), decodes back losslessly, and encodes the same in
TensorFlow."""
import csv

import pytest
import tensorflow as tf

from plmjax.data import bpe, corpora

STRESS = ['Hello world!  It\'s   a test\n\n  of GPT-2\'s tokenizer 123456789',
          'naïve café, Crème Brûlée — 東京タワー 🤗🚀 \t\r\n end', '    indented\n\tcode()  ', "'s 're 've 'll 'd 'm 't",
          'ＦＵＬＬＷＩＤＴＨ and \u200b zero width \x00\x01 control', '<|endoftext|> is plain text here', '']


@pytest.fixture(scope='module')
def gpt2_vocab():
    try:
        return bpe.ByteLevelBpeVocabulary()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope='module')
def tiktoken_gpt2(gpt2_vocab):
    tiktoken = pytest.importorskip('tiktoken')
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenization regex
    return tiktoken.Encoding('gpt2', pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(bpe.gpt2_rank_file()),
                             special_tokens={bpe.ENDOFTEXT: 50256})


def real_texts(shared_data):
    with open(shared_data / 'glue' / 'SST-2' / 'dev.tsv', encoding='utf-8') as f:
        texts = [row['sentence'] for row in csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)]
    texts += (shared_data / 'wikitext-2' / 'valid.txt').read_text(encoding='utf-8').splitlines()[:2000]
    return texts + corpora.pydoc_paragraphs('validation')[:300]


def test_ids_equal_tiktoken(gpt2_vocab, tiktoken_gpt2, shared_data):
    texts = real_texts(shared_data) + STRESS
    got = [e.ids for e in gpt2_vocab.tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert got == [tiktoken_gpt2.encode_ordinary(t) for t in texts]
    assert sum(map(len, got)) > 100000
    assert [list(gpt2_vocab.encode(t)) for t in STRESS] == got[-len(STRESS):]


def test_vocabulary_ids_and_lossless_decoding(gpt2_vocab, tiktoken_gpt2):
    assert (gpt2_vocab.vocab_size, gpt2_vocab.eos_id, gpt2_vocab.unk_id) == (50257, 50256, None)
    assert tiktoken_gpt2.n_vocab == gpt2_vocab.vocab_size
    assert len(bpe.gpt2_merges(bpe.read_ranks(bpe.gpt2_rank_file()))) == 50000  # GPT-2's merges.txt has 50,000
    for text in STRESS:
        ids = list(gpt2_vocab.encode(text))
        assert gpt2_vocab.decode(ids) == text == tiktoken_gpt2.decode(ids)
        assert gpt2_vocab.decode(ids + [gpt2_vocab.eos_id, 0, 0]) == text  # decoding stops at EOS


def test_tf_encoding_matches_python(gpt2_vocab):
    texts = STRESS + corpora.pydoc_paragraphs('validation')[:20]
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(gpt2_vocab.encode_tf)
    assert [ids.tolist() for ids in dataset.as_numpy_iterator()] == [list(gpt2_vocab.encode(t)) for t in texts]
    ends = tf.ragged.constant([list(gpt2_vocab.encode(t)) + [gpt2_vocab.eos_id] for t in STRESS[:3]])
    decoded = gpt2_vocab.decode_tf(ends.to_tensor())  # [3, longest]; shorter rows padded with 0 after their EOS
    assert [d.decode() for d in decoded.numpy()] == STRESS[:3]


def test_missing_rank_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='BPE rank file not found'):
        bpe.ByteLevelBpeVocabulary(str(tmp_path / 'gpt2.tiktoken'))
