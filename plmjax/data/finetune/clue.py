"""CLUE: the classification tasks (JSON lines), CMRC2018 (SQuAD-style JSON), CHID and C3 (multiple choice).

Files as CLUE distributes them, in `$CLUE_DIR/<task>/` (or `<task>_public/`), {train,dev,test}.json unless said:

- afqmc, cmnli, ocnli: `sentence1`, `sentence2`, `label` (NLI: '-' = no gold label, dropped as CLUE's baseline does);
- tnews, iflytek: `sentence`, `label` (tnews '100'..'116', iflytek '0'..'118'), `label_des(c)`;
- cluewsc2020: `text`, `target` {span1_text, span1_index, span2_text, span2_index}, `label` 'true'/'false'; the
  text is given with `_` around span 1 (the candidate) and `[` `]` around span 2 (the pronoun);
- csl: `keyword` (a list, joined by spaces) and `abst`, `label` '0'/'1';
- cmrc2018: SQuAD v1 JSON, data/paragraphs/{context, qas/{question, id, answers[{text, answer_start}]}};
- chid: `candidates` (10) and `content` (passages with `#idiom012345#` blanks), answers in {train,dev}_answer.json;
  one example per blank, its id the blank's number, the blank written `#idiom#` (FewCLUE's form) and the other
  blanks of the passage `_`;
- c3: {d,m}-{train,dev}.json and test.json, JSON arrays of [passage lines, [{question, choice, answer, (id)}], id];
  choices padded to 4 with 无效答案 ("invalid answer"), as CLUE's baseline does.

Test files (`test.json`, else `test1.1.json`, `test1.0.json`) carry `id`; examples without one are numbered by row.
"""
import dataclasses
import functools
import os
import re
from typing import Callable, Optional

from plmjax.data.finetune import readers
from plmjax.data.finetune.spec import DatasetSpec

CLUE_DIR_HELP = ("Set the environment variable CLUE_DIR (or the gin macro CLUE_DIR) to the folder that holds the "
                 "CLUE task folders (afqmc/ or afqmc_public/, tnews/, ...).")
SPLIT_FILES = {"train": ("train.json",), "validation": ("dev.json",),
               "test": ("test.json", "test1.1.json", "test1.0.json")}
TNEWS_LABELS = ("100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115",
                "116")
TNEWS_WORDS = ("news_story", "news_culture", "news_entertainment", "news_sports", "news_finance", "news_house",
               "news_car", "news_edu", "news_tech", "news_military", "news_travel", "news_world", "news_stock",
               "news_agriculture", "news_game")
IFLYTEK_LABELS = tuple(str(i) for i in range(119))
IFLYTEK_WORDS = ('打车', '地图导航', '免费WIFI', '租车', '同城服务', '快递物流', '婚庆', '家政', '公共交通', '政务', '社区服务', '薅羊毛', '魔幻', '仙侠',
                 '卡牌', '飞行空战', '射击游戏', '休闲益智', '动作类', '体育竞技', '棋牌中心', '经营养成', '策略', 'MOBA', '辅助工具', '约会社交', '即时通讯',
                 '工作社交', '论坛圈子', '婚恋社交', '情侣社交', '社交工具', '生活社交', '微博博客', '新闻', '漫画', '小说', '技术', '教辅', '问答交流',
                 '搞笑', '杂志', '百科', '影视娱乐', '求职', '兼职', '视频', '短视频', '音乐', '直播', '电台', 'K歌', '成人', '中小学', '职考',
                 '公务员', '英语', '视频教育', '高等教育', '成人教育', '艺术', '语言(非英语)', '旅游资讯', '综合预定', '民航', '铁路', '酒店', '行程管理',
                 '民宿短租', '出国', '工具', '亲子儿童', '母婴', '驾校', '违章', '汽车咨询', '汽车交易', '日常养车', '行车辅助', '租房', '买房', '装修家居',
                 '电子产品', '问诊挂号', '养生保健', '医疗服务', '减肥瘦身', '美妆美业', '菜谱', '餐饮店', '体育咨讯', '运动健身', '支付', '保险', '股票',
                 '借贷', '理财', '彩票', '记账', '银行', '美颜', '影像剪辑', '摄影修图', '相机', '绘画', '二手', '电商', '团购', '外卖', '电影票务',
                 '社区超市', '购物咨询', '笔记', '办公', '日程管理', '女性', '经营', '收款', '其他')
NLI_LABELS = ("contradiction", "entailment", "neutral")
C3_CHOICES = 4
C3_PAD_CHOICE = "无效答案"
CHID_BLANK = "#idiom#"
_CHID_TAG = re.compile(r"#idiom\d+#")


@dataclasses.dataclass(frozen=True)
class JsonClassification:
    """How one JSON-lines classification format becomes examples."""
    texts: Callable[[dict, str, int], dict]  # (record, path, line) -> {text field: str}
    label_key: str = "label"
    id_keys: tuple[str, ...] = ("id",)
    skip_labels: tuple[str, ...] = ()  # label values whose examples are dropped (NLI '-')


def _fields(*names):
    return lambda record, path, line: {n: readers.field(record, n, path, line) for n in names}


def _csl_texts(record, path, line):
    keywords = readers.field(record, "keyword", path, line, list)
    return {"keyword": " ".join(map(str, keywords)), "abst": readers.field(record, "abst", path, line)}


def wsc_text(record: dict, path: str, line: int) -> dict:
    """CLUEWSC's text with `_` around span 1 (the candidate) and `[` `]` around span 2 (the pronoun)."""
    text = readers.field(record, "text", path, line)
    target = readers.field(record, "target", path, line, dict)
    marks = []
    for k, (left, right) in (("1", ("_", "_")), ("2", ("[", "]"))):
        span = readers.field(target, f"span{k}_text", path, line)
        start = readers.field(target, f"span{k}_index", path, line, int)
        if text[start:start + len(span)] != span:
            raise readers.format_error(path, line, f"target span{k}_text {span!r} is not at span{k}_index {start} "
                                       f"of the text (found {text[start:start + len(span)]!r})",
                                       "Fix the index or the span text")
        marks += [(start, left), (start + len(span), right)]
    for position, mark in sorted(marks, reverse=True):  # right to left: earlier offsets stay valid
        text = text[:position] + mark + text[position:]
    return {"text": text}


def read_json_classification(spec: DatasetSpec, fmt: JsonClassification, path: str) -> list[dict]:
    examples = []
    for row, (line, record) in enumerate(readers.read_json_lines(path)):
        example = fmt.texts(record, path, line)
        example["idx"] = readers.example_id(record, fmt.id_keys, row, path, line)
        if fmt.label_key in record and record[fmt.label_key] is not None:
            if str(record[fmt.label_key]) in fmt.skip_labels:
                continue
            example["label"] = readers.label_id(record[fmt.label_key], spec.label_names, path, line, spec.name)
        else:
            example["label"] = -1
        example["label_value"] = float(example["label"])
        examples.append(example)
    return examples


# ---------------------------------------------------------------------------------------- CMRC2018


def read_cmrc2018(path: str) -> list[dict]:
    """One example per question; `idx` numbers them in file order, `id` keeps the official string id and
    `answers` every gold answer (the dev set has several); `answer`/`answer_start` are the first one."""
    document = readers.read_json(path)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise readers.format_error(path, None, "no top-level 'data' list", "CMRC2018 files are SQuAD v1 JSON: "
                                   "{'data': [{'paragraphs': [{'context', 'qas': [...]}]}]}")
    examples = []
    for article in data:
        for paragraph in readers.field(article, "paragraphs", path, None, list):
            context = readers.field(paragraph, "context", path, None)
            for qa in readers.field(paragraph, "qas", path, None, list):
                qid = str(readers.field(qa, "id", path, None, (str, int)))
                answers = [(readers.field(a, "text", path, None), readers.field(a, "answer_start", path, None, int))
                           for a in qa.get("answers") or []]
                answer, start = answers[0] if answers else ("", -1)
                if answers and context[start:start + len(answer)] != answer:
                    start = _nearest(context, answer, start, path, qid)
                examples.append({"question": readers.field(qa, "question", path, None), "context": context,
                                 "answer": answer, "answer_start": start, "idx": len(examples), "id": qid,
                                 "answers": [text for text, _ in answers]})
    return examples


def _nearest(context: str, answer: str, start: int, path: str, qid: str) -> int:
    """The occurrence of `answer` closest to a misaligned `answer_start`."""
    found = [m.start() for m in re.finditer(re.escape(answer), context)]
    if not found:
        raise readers.format_error(path, None, f"question {qid}: the answer {answer!r} does not occur in its context",
                                   "Fix the answer text; span extraction needs answers copied from the context")
    return min(found, key=lambda s: abs(s - start))


# --------------------------------------------------------------------------------------------- CHID


def chid_example(content: str, blank: str, candidates: list, label: int, idx: int) -> dict:
    context = content.replace(blank, CHID_BLANK)
    context = _CHID_TAG.sub("_", context) if blank != CHID_BLANK else context
    return {"context": context, "question": "", "choices": [str(c) for c in candidates], "label": label,
            "idx": idx}


def read_chid(path: str, answer_path: Optional[str]) -> list[dict]:
    answers = readers.read_json(answer_path) if answer_path else {}
    examples = []
    for line, record in readers.read_json_lines(path):
        candidates = readers.field(record, "candidates", path, line, list)
        if len(candidates) != SPECS["chid"].num_choices:
            raise readers.format_error(path, line, f"{len(candidates)} candidates", f"CLUE's CHID has "
                                       f"{SPECS['chid'].num_choices} per line")
        for passage in readers.field(record, "content", path, line, list):
            for tag in _CHID_TAG.findall(passage):
                label = -1
                if answer_path:
                    if tag not in answers:
                        raise readers.format_error(answer_path, None, f"no answer for the blank {tag} of {path} line "
                                                   f"{line}", "Use the answer file of the same split")
                    label = int(answers[tag])
                    if not 0 <= label < len(candidates):
                        raise readers.format_error(answer_path, None, f"answer {label} of {tag} is not a candidate "
                                                   f"index (0..{len(candidates) - 1})", "Fix the answer")
                examples.append(chid_example(passage, tag, candidates, label, int(tag[6:-1])))
    return examples


# ----------------------------------------------------------------------------------------------- C3


def read_c3(paths: list[str]) -> list[dict]:
    examples = []
    for path in paths:
        document = readers.read_json(path)
        if not isinstance(document, list):
            raise readers.format_error(path, None, "not a JSON array", "C3 files are arrays of [passage lines, "
                                       "questions, id]")
        for number, item in enumerate(document):
            where = f"item {number}"
            if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[0], list)):
                raise readers.format_error(path, None, f"{where} is not [passage lines, questions, id]",
                                           "Use the official C3 file")
            context = "\n".join(map(str, item[0]))
            for qa in item[1]:
                choices = [str(c) for c in readers.field(qa, "choice", path, None, list)]
                if not 2 <= len(choices) <= C3_CHOICES:
                    raise readers.format_error(path, None, f"{where}: {len(choices)} choices", "C3 has 2 to 4")
                label = -1
                if qa.get("answer") is not None:
                    if qa["answer"] not in choices:
                        raise readers.format_error(path, None, f"{where}: unknown label (answer {qa['answer']!r} is "
                                                   f"not one of the choices {choices})", "Fix the answer")
                    label = choices.index(qa["answer"])
                choices += [C3_PAD_CHOICE] * (C3_CHOICES - len(choices))
                examples.append({"context": context, "question": readers.field(qa, "question", path, None),
                                 "choices": choices, "label": label,
                                 "idx": readers.example_id(qa, ("id",), len(examples), path, None)})
    return examples


# ------------------------------------------------------------------------------------------- tasks


def _spec(prefix, kind, fields=(), labels=(), metrics=("accuracy",), submission="", choices=0, words=()):
    return DatasetSpec(name=f"clue_{prefix}", benchmark="clue", kind=kind, prefix=prefix, text_fields=fields,
                       label_names=labels, metrics=metrics, submission_name=submission or f"{prefix}_predict.json",
                       num_choices=choices, label_words=words)


CLASSIFICATION = {
    "afqmc": (_spec("afqmc", "classification", ("sentence1", "sentence2"), ("0", "1")),
              JsonClassification(_fields("sentence1", "sentence2"))),
    "tnews": (_spec("tnews", "classification", ("sentence",), TNEWS_LABELS, submission="tnews11_predict.json",
                    words=TNEWS_WORDS), JsonClassification(_fields("sentence"))),
    "iflytek": (_spec("iflytek", "classification", ("sentence",), IFLYTEK_LABELS, words=IFLYTEK_WORDS),
                JsonClassification(_fields("sentence"))),
    "cmnli": (_spec("cmnli", "classification", ("sentence1", "sentence2"), NLI_LABELS),
              JsonClassification(_fields("sentence1", "sentence2"), skip_labels=("-",))),
    "ocnli": (_spec("ocnli", "classification", ("sentence1", "sentence2"), NLI_LABELS,
                    submission="ocnli_50k_predict.json"),
              JsonClassification(_fields("sentence1", "sentence2"), skip_labels=("-",))),
    "cluewsc2020": (_spec("cluewsc2020", "classification", ("text",), ("true", "false"),
                          submission="cluewsc11_predict.json"), JsonClassification(wsc_text, id_keys=("idx", "id"))),
    "csl": (_spec("csl", "classification", ("keyword", "abst"), ("0", "1")), JsonClassification(_csl_texts)),
}
SPECS = {prefix: spec for prefix, (spec, _) in CLASSIFICATION.items()}
SPECS["cmrc2018"] = _spec("cmrc2018", "span_extraction", ("question", "context"), metrics=("exact_match", "span_f1"))
SPECS["chid"] = _spec("chid", "multiple_choice", ("context",), submission="chid11_predict.json", choices=10)
SPECS["c3"] = _spec("c3", "multiple_choice", ("question", "context"), submission="c311_predict.json",
                    choices=C3_CHOICES)


def default_clue_dir() -> Optional[str]:
    return os.environ.get("CLUE_DIR") or None


def task_dir(clue_dir: readers.DataDir, prefix: str) -> str:
    clue_dir = readers.resolve_dir(clue_dir) or default_clue_dir()
    if not clue_dir:
        raise FileNotFoundError(f"No CLUE data folder is set for clue_{prefix}. {CLUE_DIR_HELP}")
    for name in (prefix, f"{prefix}_public"):
        if os.path.isdir(os.path.join(clue_dir, name)):
            return os.path.join(clue_dir, name)
    raise FileNotFoundError(f"CLUE folder {os.path.join(clue_dir, prefix)} (or {prefix}_public) not found. "
                            f"{CLUE_DIR_HELP}")


def _split_file(directory: str, split: str, names: tuple[str, ...], prefix: str) -> str:
    for name in names:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"clue_{prefix} {split} file not found: {os.path.join(directory, names[0])}. "
                            f"{CLUE_DIR_HELP}")


def read_split(prefix: str, clue_dir: readers.DataDir, split: str) -> list[dict]:
    """The examples of one split of a CLUE task ('train', 'validation' or 'test')."""
    if split not in SPLIT_FILES:
        raise ValueError(f"clue_{prefix} has no split {split!r}; it has {sorted(SPLIT_FILES)}.")
    directory = task_dir(clue_dir, prefix)
    if prefix == "c3":
        if split == "test":
            return read_c3([_split_file(directory, split, SPLIT_FILES["test"], prefix)])
        name = {"train": "train", "validation": "dev"}[split]
        return read_c3([_split_file(directory, split, (f"{kind}-{name}.json",), prefix) for kind in ("d", "m")])
    path = _split_file(directory, split, SPLIT_FILES[split], prefix)
    if prefix == "cmrc2018":
        return read_cmrc2018(path)
    if prefix == "chid":
        answers = None if split == "test" else _split_file(
            directory, split, (SPLIT_FILES[split][0].replace(".json", "_answer.json"),), prefix)
        return read_chid(path, answers)
    spec, fmt = CLASSIFICATION[prefix]
    return read_json_classification(spec, fmt, path)


def reader(prefix: str, clue_dir: readers.DataDir = None):
    """read_fn(split) for `spec.examples_source`; the folder is resolved when data is read."""
    return functools.partial(read_split, prefix, clue_dir)
