"""Prompts of each task: PET cloze patterns and verbalizers (encoders) and in-context formats (decoders).

A `PromptTask` gives one of DATA's classification tasks (plmjax.data.finetune: its data, official labels and
metrics) a PET pattern with verbalizers (Schick & Schütze, 2021) and an in-context format (Brown et al., 2020).
Patterns are sequences of literal text, `{field}` references and `MASK`; a verbalizer of n tokens fills n
[MASK]s, and the pattern gets as many [MASK]s as the longest verbalizer has tokens.
"""
import dataclasses

MASK = "[MASK]"

SST2_LABELS = ("0", "1")
EPRSTMT_LABELS = ("Negative", "Positive")
TNEWS_LABELS = ("100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115",
                "116")
TNEWS_NAMES = ("故事", "文化", "娱乐", "体育", "财经", "房产", "汽车", "教育", "科技", "军事", "旅游", "国际", "股票",
               "农业", "电竞")  # label_zh of fewclue/tnews/label_index2en2zh.json
CSLDCP_LABELS = (  # fewclue/csldcp/labels_all.txt
    "材料科学与工程", "作物学", "口腔医学", "药学", "教育学", "水利工程", "理论经济学", "食品科学与工程", "畜牧学/兽医学",
    "体育学", "核科学与技术", "力学", "园艺学", "水产", "法学", "地质学/地质资源与地质工程", "石油与天然气工程", "农林经济管理",
    "信息与通信工程", "图书馆、情报与档案管理", "政治学", "电气工程", "海洋科学", "民族学", "航空宇航科学与技术",
    "化学/化学工程与技术", "哲学", "公共卫生与预防医学", "艺术学", "农业工程", "船舶与海洋工程", "计算机科学与技术", "冶金工程",
    "交通运输工程", "动力工程及工程热物理", "纺织科学与工程", "建筑学", "环境科学与工程", "公共管理", "数学", "物理学",
    "林学/林业工程", "心理学", "历史学", "工商管理", "应用经济学", "中医学/中药学", "天文学", "机械工程", "土木工程", "光学工程",
    "地理学", "农业资源利用", "生物学/生物科学与工程", "兵器科学与技术", "矿业工程", "大气科学", "基础医学/临床医学",
    "电子科学与技术", "测绘科学与技术", "控制科学与工程", "军事学", "中国语言文学", "新闻传播学", "社会学", "地球物理学", "植物保护")
IFLYTEK_NAMES = (  # label_des of labels 0..118 (IFLYTEK's official label list)
    "打车", "地图导航", "免费WIFI", "租车", "同城服务", "快递物流", "婚庆", "家政", "公共交通", "政务", "社区服务", "薅羊毛", "魔幻",
    "仙侠", "卡牌", "飞行空战", "射击游戏", "休闲益智", "动作类", "体育竞技", "棋牌中心", "经营养成", "策略", "MOBA", "辅助工具",
    "约会社交", "即时通讯", "工作社交", "论坛圈子", "婚恋社交", "情侣社交", "社交工具", "生活社交", "微博博客", "新闻", "漫画", "小说",
    "技术", "教辅", "问答交流", "搞笑", "杂志", "百科", "影视娱乐", "求职", "兼职", "视频", "短视频", "音乐", "直播", "电台", "K歌",
    "成人", "中小学", "职考", "公务员", "英语", "视频教育", "高等教育", "成人教育", "艺术", "语言(非英语)", "旅游资讯", "综合预定",
    "民航", "铁路", "酒店", "行程管理", "民宿短租", "出国", "工具", "亲子儿童", "母婴", "驾校", "违章", "汽车咨询", "汽车交易",
    "日常养车", "行车辅助", "租房", "买房", "装修家居", "电子产品", "问诊挂号", "养生保健", "医疗服务", "减肥瘦身", "美妆美业", "菜谱",
    "餐饮店", "体育咨讯", "运动健身", "支付", "保险", "股票", "借贷", "理财", "彩票", "记账", "银行", "美颜", "影像剪辑", "摄影修图",
    "相机", "绘画", "二手", "电商", "团购", "外卖", "电影票务", "社区超市", "购物咨询", "笔记", "办公", "日程管理", "女性", "经营",
    "收款", "其他")


@dataclasses.dataclass(frozen=True)
class PromptTask:
    """The prompts of one classification task; its data, labels and metrics are DATA's task `name`'s."""
    name: str  # DATA's seqio task ('glue_sst2_tsv', 'fewclue_eprstmt'); its PET task is f'{name}_pet'
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]  # official label strings, in label-id order (checked against DATA's TaskInfo)
    pattern: tuple[str, ...]  # PET: literal text, '{field}' and MASK
    verbalizers: tuple[str, ...]  # PET: the word of each label
    prompt: str  # in-context: the text before the answer, with '{field}'s
    answers: tuple[str, ...]  # in-context: each label's continuation of `prompt`
    separator: str = "\n\n"  # in-context: between demonstrations

    def __post_init__(self):
        for name, words in (("verbalizers", self.verbalizers), ("answers", self.answers)):
            if len(words) != len(self.label_names):
                raise ValueError(f"{self.name}: {len(words)} {name} for {len(self.label_names)} labels.")
        if self.pattern.count(MASK) != 1:
            raise ValueError(f"{self.name}: a PET pattern holds MASK exactly once, got {self.pattern}.")
        fields = {part[1:-1] for part in self.pattern if _is_field(part)}
        if not fields or not fields <= set(self.text_fields):
            raise ValueError(f"{self.name}: pattern fields {sorted(fields)} must be among {self.text_fields}.")

    def fields_of_pattern(self) -> tuple[str, ...]:
        return tuple(part[1:-1] for part in self.pattern if _is_field(part))


def _is_field(part: str) -> bool:
    return part.startswith("{") and part.endswith("}")


def _fewclue(task: str, field: str, labels, pattern, verbalizers, prompt, answers=None) -> PromptTask:
    return PromptTask(name=f"fewclue_{task}", text_fields=(field,), label_names=labels, pattern=pattern,
                      verbalizers=verbalizers, prompt=prompt, answers=answers or verbalizers, separator="\n")


PROMPT_TASKS = {t.name: t for t in (
    PromptTask(name="glue_sst2_tsv", text_fields=("sentence",), label_names=SST2_LABELS,
               pattern=("{sentence}", "It was", MASK, "."), verbalizers=("terrible", "great"),
               prompt="Review: {sentence}\nSentiment:", answers=(" negative", " positive")),
    _fewclue("eprstmt", "sentence", EPRSTMT_LABELS, ("感觉很", MASK, "。", "{sentence}"), ("失望", "满意"),
             "评论：{sentence}\n评价：", ("差评", "好评")),
    _fewclue("tnews", "sentence", TNEWS_LABELS, ("这是一则", MASK, "新闻：", "{sentence}"), TNEWS_NAMES,
             "新闻：{sentence}\n类别："),
    _fewclue("csldcp", "content", CSLDCP_LABELS, ("这篇论文的学科是", MASK, "：", "{content}"), CSLDCP_LABELS,
             "论文：{content}\n学科："),
    _fewclue("iflytek", "sentence", tuple(str(i) for i in range(len(IFLYTEK_NAMES))),
             ("这款应用属于", MASK, "类：", "{sentence}"), IFLYTEK_NAMES, "应用：{sentence}\n类别："),
)}


def get_prompt_task(name: str) -> PromptTask:
    """The prompts of a task by its name (with or without the '_pet' suffix)."""
    base = name[:-len("_pet")] if name.endswith("_pet") else name
    if base not in PROMPT_TASKS:
        raise ValueError(f"No prompts for task {name!r}; tasks with prompts: {sorted(PROMPT_TASKS)}.")
    return PROMPT_TASKS[base]
