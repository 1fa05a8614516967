"""Readers of the official files: GLUE TSV layouts, CLUE/FewCLUE JSON, CoNLL-U; one clear error (file, line,
fix) for a malformed line, a missing field or an unknown label."""
import json

import pytest

from plmjax.data.finetune import clue, fewclue, glue, readers, ud
from tests.data.finetune import fixtures


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    return fixtures.write_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module")
def clue_dir(tmp_path_factory):
    return fixtures.write_clue(tmp_path_factory.mktemp("clue"))


def read(prefix, directory, split):
    return glue.read_tsv_split(glue.TASKS[prefix], str(directory), split)


def test_glue_tsv_layouts(glue_dir):
    assert read("cola", glue_dir, "train") == [
        {"sentence": "Our friends won't buy this analysis.", "idx": 0, "label": 1, "label_value": 1.0},
        {"sentence": "They drank the pub.", "idx": 1, "label": 0, "label_value": 0.0}]
    assert read("cola", glue_dir, "test") == [{"sentence": "Bill whistled past the house.", "idx": 0, "label": -1,
                                               "label_value": -1.0}]
    assert read("mrpc", glue_dir, "train")[0]["sentence2"] == "Referring to him , Amrozi accused his brother ."
    assert read("mrpc", glue_dir, "train")[0]["label"] == 1  # the header's BOM is not part of "Quality"
    assert read("stsb", glue_dir, "validation")[0] == {
        "sentence1": "A man with a hard hat is dancing.", "sentence2": "A man wearing a hard hat is dancing.",
        "idx": 3, "label": 0, "label_value": 3.8}
    assert read("stsb", glue_dir, "test")[0]["label"] == -1
    assert read("qqp", glue_dir, "train")[0]["idx"] == 133273
    assert read("mnli", glue_dir, "validation")[0]["label"] == 1  # gold_label neutral, TFDS order
    assert read("mnli_mismatched", glue_dir, "validation")[0]["label"] == 2  # contradiction
    assert read("mnli_mismatched", glue_dir, "test")[0]["premise"] == "Ho."
    assert read("qnli", glue_dir, "validation")[0]["label"] == 1  # not_entailment
    assert read("rte", glue_dir, "train")[0]["label"] == 1
    assert read("wnli", glue_dir, "train")[0]["label"] == 1
    assert read("ax", glue_dir, "test")[0] == {"premise": "The cat sat.", "hypothesis": "The cat did not sit.",
                                               "idx": 0, "label": -1, "label_value": -1.0}
    for prefix, task in glue.TASKS.items():
        for split in task.files:
            assert read(prefix, glue_dir, split), (prefix, split)


def test_real_sst2(shared_data):
    train = read("sst2", shared_data / "glue", "train")
    assert len(train) == 67349 and {e["label"] for e in train} == {0, 1}


def test_glue_errors(glue_dir, tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood .\t1\nbad .\tnegative\n")
    with pytest.raises(readers.DataFormatError, match=r"dev.tsv, line 3: unknown label 'negative' for glue_sst2"):
        read("sst2", tmp_path, "validation")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood .\n")
    with pytest.raises(readers.DataFormatError, match=r"dev.tsv, line 2: 1 tab-separated fields, expected at least 2"):
        read("sst2", tmp_path, "validation")
    (tmp_path / "SST-2" / "dev.tsv").write_text("text\tlabel\ngood .\t1\n")
    with pytest.raises(readers.DataFormatError, match=r"line 1: the header lacks the column\(s\) \['sentence'\]"):
        read("sst2", tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        read("rte", tmp_path, "train")


def test_clue_readers(clue_dir):
    assert [e["label"] for e in clue.read_split("cmnli", clue_dir, "train")] == [2, 1, 0]  # '-' dropped
    expected = {"sentence1": "蚂蚁借呗1怎么还款", "sentence2": "借呗还款方式", "idx": 1, "label": -1, "label_value": -1.0}
    assert clue.read_split("afqmc", clue_dir, "test")[1] == expected
    assert clue.read_split("tnews", clue_dir, "validation")[0]["label"] == clue.TNEWS_LABELS.index("102")
    assert [e["label"] for e in clue.read_split("iflytek", clue_dir, "train")] == [0, 39, 78, 117]
    assert clue.read_split("cluewsc2020", clue_dir, "train")[0]["text"] == "_小明_看见老师，[他]很高兴。"
    assert clue.read_split("csl", clue_dir, "train")[0]["keyword"] == "问题 研究"
    chid = clue.read_split("chid", clue_dir, "train")
    assert [(e["idx"], e["label"]) for e in chid] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert chid[1]["context"] == "祝你_，也祝他#idiom#。" and len(chid[1]["choices"]) == 10
    assert clue.read_split("chid", clue_dir, "test")[0]["label"] == -1
    c3 = clue.read_split("c3", clue_dir, "train")
    assert len(c3) == 2 and c3[0]["choices"] == ["打招呼", "吃饭", "睡觉", clue.C3_PAD_CHOICE] and c3[0]["label"] == 0
    assert clue.read_split("c3", clue_dir, "test")[0]["idx"] == 7
    cmrc = clue.read_split("cmrc2018", clue_dir, "validation")
    assert [e["answer"] for e in cmrc] == fixtures.CMRC_ANSWERS
    assert all(e["context"][e["answer_start"]:][:len(e["answer"])] == e["answer"] for e in cmrc)
    assert cmrc[0]["id"] == "TRAIN_0_QUERY_0" and cmrc[0]["answers"] == ["1963年"]


@pytest.mark.parametrize("content,problem", [
    ('{"sentence1": "a", "sentence2": "b", "label": "1"}\n{"sentence1": "a", "sentence2": \n',
     "line 2: malformed JSON"),
    ('{"sentence1": "a", "label": "1"}\n', "line 1: missing field 'sentence2'"),
    ('{"sentence1": "a", "sentence2": "b", "label": "1"}\n\n{"sentence1": "a", "sentence2": "b", "label": "2"}\n',
     "line 3: unknown label '2' for clue_afqmc"),
    ('{"sentence1": 3, "sentence2": "b", "label": "1"}\n', "line 1: field 'sentence1' is int 3, expected str"),
])
def test_clue_errors_name_file_and_line(tmp_path, content, problem):
    (tmp_path / "afqmc").mkdir()
    (tmp_path / "afqmc" / "train.json").write_text(content, encoding="utf-8")
    with pytest.raises(readers.DataFormatError) as error:
        clue.read_split("afqmc", str(tmp_path), "train")
    assert f"{tmp_path / 'afqmc' / 'train.json'}, {problem}" in str(error.value)


def test_missing_clue_dir_names_the_setting(monkeypatch):
    monkeypatch.delenv("CLUE_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="CLUE_DIR"):
        clue.read_split("afqmc", None, "train")


def test_fewclue_label_lists_are_the_official_files(shared_data):
    directory = shared_data / "fewclue"
    assert fewclue.CSLDCP_LABELS == tuple(
        line.strip() for line in open(directory / "csldcp" / "labels_all.txt", encoding="utf-8") if line.strip())
    tnews = [json.loads(line) for line in open(directory / "tnews" / "label_index2en2zh.json", encoding="utf-8")]
    assert clue.TNEWS_LABELS == tuple(r["label"] for r in tnews)
    assert clue.TNEWS_WORDS == tuple(r["label_desc"] for r in tnews)


@pytest.mark.parametrize("task", sorted(fewclue.SPECS))
def test_fewclue_reads_every_line(shared_data, task):
    spec = fewclue.SPECS[task]
    for split, name in [("train", "train_few_all.json"), ("validation", "dev_few_all.json")]:
        path = shared_data / "fewclue" / task / name
        records = [json.loads(line) for line in open(path, encoding="utf-8")]
        examples = fewclue.read_split(task, None, split)
        assert len(examples) == len(records)
        if task == "chid":
            assert [e["label"] for e in examples] == [r["answer"] for r in records]
            assert [e["choices"] for e in examples] == [r["candidates"] for r in records]
        else:
            assert [spec.label_names[e["label"]] for e in examples] == [str(r["label"]) for r in records]
        assert [e["idx"] for e in examples] == [r.get("id", r.get("idx")) for r in records]


def test_fewclue_unlabeled_split(shared_data):
    examples = fewclue.read_split("eprstmt", None, "unlabeled")
    assert len(examples) == 19565 and {e["label"] for e in examples} == {-1}


def test_ud_split_and_errors(shared_data, tmp_path):
    train, validation = ud.read_split(None, "train"), ud.read_split(None, "validation")
    assert (len(train), len(validation)) == (1601, 400)
    assert {s["idx"] % 5 for s in validation} == {4} and 4 not in {s["idx"] % 5 for s in train}
    # "Today's" (a multiword range 1-2) is read as its two syntactic words
    today = next(s for s in train + validation if s["words"][:2] == ["Today", "'s"])
    assert [ud.UPOS[t] for t in today["tags"][:2]] == ["NOUN", "PART"]
    bad = tmp_path / "bad.conllu"
    bad.write_text("# text = A b\n1\tA\ta\tDET\t_\t_\t2\tdet\t_\t_\n2\tb\tb\tNOUNX\t_\t_\t0\troot\t_\t_\n")
    with pytest.raises(readers.DataFormatError, match=r"bad.conllu, line 3: unknown label 'NOUNX'"):
        ud.read_split(str(bad), "train")
