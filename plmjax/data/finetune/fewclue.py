"""FewCLUE: the nine few-shot Chinese tasks, from `$PLMJAX_SHARED_DATA/fewclue/<task>/` (default
`<repo>/../shared/data/fewclue`; the gin macro / env var FEWCLUE_DIR overrides).

Splits: 'train' = train_few_all.json, 'validation' = dev_few_all.json, 'test' = test.json (when you have it),
'unlabeled' = unlabeled.json (tnews and eprstmt; labels -1). Formats are CLUE's (see clue.py) except:

- bustm: `sentence1`, `sentence2`, `label` '0'/'1';
- eprstmt: `sentence`, `label` 'Negative'/'Positive';
- csldcp: `content`, `label` one of the 67 disciplines of labels_all.txt (CSLDCP_LABELS, in that file's order);
- tnews, iflytek: as CLUE, the label an int (tnews 100..116 as in label_index2en2zh.json, iflytek 0..118);
- cluewsc: as CLUEWSC2020, the id in `idx`;
- chid: one blank `#idiom#` in `content`, 7 `candidates`, `answer` the candidate index.
"""
import functools
import os

from plmjax.data.finetune import clue
from plmjax.data.finetune import readers
from plmjax.data.finetune.spec import DatasetSpec

CSLDCP_LABELS = ('材料科学与工程', '作物学', '口腔医学', '药学', '教育学', '水利工程', '理论经济学', '食品科学与工程', '畜牧学/兽医学', '体育学', '核科学与技术',
                 '力学', '园艺学', '水产', '法学', '地质学/地质资源与地质工程', '石油与天然气工程', '农林经济管理', '信息与通信工程', '图书馆、情报与档案管理', '政治学',
                 '电气工程', '海洋科学', '民族学', '航空宇航科学与技术', '化学/化学工程与技术', '哲学', '公共卫生与预防医学', '艺术学', '农业工程', '船舶与海洋工程',
                 '计算机科学与技术', '冶金工程', '交通运输工程', '动力工程及工程热物理', '纺织科学与工程', '建筑学', '环境科学与工程', '公共管理', '数学', '物理学',
                 '林学/林业工程', '心理学', '历史学', '工商管理', '应用经济学', '中医学/中药学', '天文学', '机械工程', '土木工程', '光学工程', '地理学',
                 '农业资源利用', '生物学/生物科学与工程', '兵器科学与技术', '矿业工程', '大气科学', '基础医学/临床医学', '电子科学与技术', '测绘科学与技术', '控制科学与工程',
                 '军事学', '中国语言文学', '新闻传播学', '社会学', '地球物理学', '植物保护')
EPRSTMT_LABELS = ("Negative", "Positive")
CHID_CHOICES = 7
SPLIT_FILES = {"train": "train_few_all.json", "validation": "dev_few_all.json", "test": "test.json",
               "unlabeled": "unlabeled.json"}
WITH_UNLABELED = ("tnews", "eprstmt")
FEWCLUE_DIR_HELP = ("Set the environment variable FEWCLUE_DIR (or the gin macro FEWCLUE_DIR) to the folder that "
                    "holds the FewCLUE task folders (bustm/, chid/, ...); the default is "
                    "<repo>/../shared/data/fewclue.")


def _spec(prefix, kind, fields=(), labels=(), submission="", choices=0, words=()):
    return DatasetSpec(name=f"fewclue_{prefix}", benchmark="fewclue", kind=kind, prefix=prefix, text_fields=fields,
                       label_names=labels, metrics=("accuracy",),
                       submission_name=submission or f"{prefix}_predict.json", num_choices=choices, label_words=words)


_CLUE = clue.CLASSIFICATION
CLASSIFICATION = {
    "bustm": (_spec("bustm", "classification", ("sentence1", "sentence2"), ("0", "1")), _CLUE["afqmc"][1]),
    "cluewsc": (_spec("cluewsc", "classification", ("text",), ("true", "false"), "cluewscf_predict.json"),
                _CLUE["cluewsc2020"][1]),
    "csl": (_spec("csl", "classification", ("keyword", "abst"), ("0", "1"), "cslf_predict.json"), _CLUE["csl"][1]),
    "csldcp": (_spec("csldcp", "classification", ("content",), CSLDCP_LABELS),
               clue.JsonClassification(clue._fields("content"))),  # pylint: disable=protected-access
    "eprstmt": (_spec("eprstmt", "classification", ("sentence",), EPRSTMT_LABELS), _CLUE["tnews"][1]),
    "iflytek": (_spec("iflytek", "classification", ("sentence",), clue.IFLYTEK_LABELS, "iflytekf_predict.json",
                      words=clue.IFLYTEK_WORDS), _CLUE["iflytek"][1]),
    "ocnli": (_spec("ocnli", "classification", ("sentence1", "sentence2"), clue.NLI_LABELS, "ocnlif_predict.json"),
              _CLUE["ocnli"][1]),
    "tnews": (_spec("tnews", "classification", ("sentence",), clue.TNEWS_LABELS, "tnewsf_predict.json",
                    words=clue.TNEWS_WORDS), _CLUE["tnews"][1]),
}
SPECS = {prefix: spec for prefix, (spec, _) in CLASSIFICATION.items()}
SPECS["chid"] = _spec("chid", "multiple_choice", ("context",), submission="chidf_predict.json",
                      choices=CHID_CHOICES)


def splits(prefix: str) -> tuple[str, ...]:
    return ("train", "validation", "test") + (("unlabeled",) if prefix in WITH_UNLABELED else ())


def default_fewclue_dir() -> str:
    from plmjax.data import corpora  # pylint: disable=import-outside-toplevel
    return os.environ.get("FEWCLUE_DIR") or str(corpora.shared_data_dir() / "fewclue")


def read_chid(path: str) -> list[dict]:
    examples = []
    for line, record in readers.read_json_lines(path):
        content = readers.field(record, "content", path, line)
        candidates = readers.field(record, "candidates", path, line, list)
        if content.count(clue.CHID_BLANK) != 1 or len(candidates) != CHID_CHOICES:
            raise readers.format_error(path, line, f"{content.count(clue.CHID_BLANK)} {clue.CHID_BLANK} blanks and "
                                       f"{len(candidates)} candidates", f"FewCLUE chid has one blank and "
                                       f"{CHID_CHOICES} candidates")
        label = -1
        if record.get("answer") is not None:
            label = readers.field(record, "answer", path, line, int)
            if not 0 <= label < CHID_CHOICES:
                raise readers.format_error(path, line, f"unknown label (answer {label} is not a candidate index "
                                           f"0..{CHID_CHOICES - 1})", "Fix the answer")
        idx = readers.example_id(record, ("id",), len(examples), path, line)
        examples.append(clue.chid_example(content, clue.CHID_BLANK, candidates, label, idx))
    return examples


def read_split(prefix: str, fewclue_dir: readers.DataDir, split: str) -> list[dict]:
    """The examples of one split of a FewCLUE task."""
    if split not in splits(prefix):
        raise ValueError(f"fewclue_{prefix} has no split {split!r}; it has {splits(prefix)}.")
    directory = readers.resolve_dir(fewclue_dir) or default_fewclue_dir()
    path = readers.check_file(os.path.join(directory, prefix, SPLIT_FILES[split]),
                              f"FewCLUE {prefix} {split} file", FEWCLUE_DIR_HELP)
    if prefix == "chid":
        return read_chid(path)
    spec, fmt = CLASSIFICATION[prefix]
    return clue.read_json_classification(spec, fmt, path)


def reader(prefix: str, fewclue_dir: readers.DataDir = None):
    """read_fn(split) for `spec.examples_source`; the folder is resolved when data is read."""
    return functools.partial(read_split, prefix, fewclue_dir)
