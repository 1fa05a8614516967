"""Corpora and sources: the embedded corpus split, WikiText-2 reading, text/JSON-lines files and their errors."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from plmjax.data import corpora, sources

WIKITEXT = corpora.shared_data_dir() / "wikitext-2"


def source_texts(source, split):
    return [ex["text"].decode() for ex in source.get_dataset(split=split, shuffle=False).as_numpy_iterator()]


def test_pydoc_corpus_is_deterministic_disjoint_and_large_enough():
    train, validation = corpora.pydoc_paragraphs("train"), corpora.pydoc_paragraphs("validation")
    assert not set(train) & set(validation)
    assert sum(map(len, train)) > 1_000_000 and sum(map(len, validation)) > 100_000
    corpora._pydoc_split_paragraphs.cache_clear()
    assert corpora.pydoc_paragraphs("train") == train  # rebuilt from scratch, same order
    documents = corpora.pydoc_documents("train")
    assert "\n".join(documents).split("\n") == train
    assert any("assert" in d for d in documents[:10])  # help topics come first, then module docstrings
    assert all("::=" not in p for p in train[:2000])  # grammar blocks (indented) are dropped


def test_prose_paragraphs_drops_code_and_headings():
    text = 'The "assert" statement\n**********************\n\nAssert statements are a convenient way\nto debug.\n\n' \
           '   assert_stmt ::= "assert" expression\n\n>>> assert 1 == 1\n\nShort one.\n'
    # The title's underline goes; the 3-word title and "Short one." are under the 4-word minimum.
    assert corpora.prose_paragraphs(text) == ["Assert statements are a convenient way to debug."]
    assert corpora.prose_paragraphs(text, min_words=3) == ['The "assert" statement', "Assert statements are a "
                                                           "convenient way to debug."]


def test_pydoc_source_matches_corpus():
    texts = source_texts(sources.pydoc_source(), "validation")
    assert texts == corpora.pydoc_documents("validation")


def test_unknown_split():
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        corpora.pydoc_documents("test")


def test_wikitext2_lines_skip_headings_and_empty_lines():
    if not WIKITEXT.is_dir():
        pytest.skip(f"WikiText-2 not found at {WIKITEXT} (set PLMJAX_SHARED_DATA)")
    paragraphs = corpora.wikitext2_paragraphs("train")
    raw = (WIKITEXT / "valid.txt").read_text(encoding="utf-8").split("\n")
    headings = [line for line in raw if line.strip().startswith("= ") and line.strip().endswith(" =")]
    assert len(headings) > 100 and len(paragraphs) + len(headings) == sum(1 for line in raw if line.strip())
    assert not any(p.startswith("= ") for p in paragraphs) and all(p == p.strip() and p for p in paragraphs)
    assert source_texts(sources.wikitext2_source(), "train") == paragraphs  # TF reader == Python reader
    assert source_texts(sources.wikitext2_source(), "validation") == corpora.wikitext2_paragraphs("validation")


def test_wikitext2_missing_folder_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMJAX_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PLMJAX_SHARED_DATA") as error:
        sources.wikitext2_source().get_dataset(split="train")
    assert str(tmp_path / "wikitext-2") in str(error.value) and "valid.txt" in str(error.value)


def test_plain_text_and_json_lines_files(tmp_path):
    (tmp_path / "train.txt").write_text("first document\n\n  second document  \n")
    (tmp_path / "valid.txt").write_text("held out\n")
    plain = sources.text_files_source([str(tmp_path / "train.txt")], [str(tmp_path / "valid.txt")])
    assert source_texts(plain, "train") == ["first document", "second document"]
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one", "id": 1}) + "\n\n" + json.dumps({"text": "two"}))
    json_lines = sources.text_files_source([str(tmp_path / "*.jsonl")], [str(tmp_path / "a.jsonl")], text_key="text")
    assert source_texts(json_lines, "train") == ["one", "two"]


def test_missing_file_names_path_and_gin_binding(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError) as error:
        sources.text_files_source([missing], [missing])
    assert missing in str(error.value) and "text_files_task.train_files" in str(error.value)
    (tmp_path / "train.txt").write_text("x\n")
    with pytest.raises(FileNotFoundError, match="text_files_task.validation_files"):
        sources.text_files_source([str(tmp_path / "train.txt")], [str(tmp_path / "*.missing")])


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken\n')
    source = sources.text_files_source([str(path)], [str(path)], text_key="text")
    with pytest.raises(ValueError, match=f"{path}, line 3: malformed JSON"):
        source.get_dataset(split="train")
    path.write_text('{"text": "fine"}\n{"body": "wrong key"}\n')
    with pytest.raises(ValueError, match=r"line 2: no field 'text'.*text_files_task.text_key"):
        sources.text_files_source([str(path)], [str(path)], text_key="text").get_dataset(split="train")
