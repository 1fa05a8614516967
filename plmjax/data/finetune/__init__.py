"""Fine-tuning data: GLUE, CLUE, FewCLUE and UD POS tagging for encoders (BERT's format) and as text to text.

info.py (TaskInfo registry) <- spec.py (DatasetSpec, examples -> seqio source) <- readers.py (clear errors) <-
glue.py / clue.py / fewclue.py / ud.py (official files -> examples) -> encoding.py (WordPiece ids, truncation,
spans, tags) -> preprocessors.py (seqio preprocessors) -> definitions.py (Task kwargs); vocab.py holds the lazy
default vocabularies. Tasks are registered in `tasks/finetune.py`; the feature converters are in
`plmjax/data/feature_converters.py` ('classification', 'span_extraction', 'multiple_choice', 'tagging').
"""
from plmjax.data.finetune.info import TaskInfo, get_task_info, read_examples  # noqa: F401
from plmjax.data.finetune.info import register_task_info, task_names  # noqa: F401
