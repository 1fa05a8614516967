"""Task metadata of the fine-tuning tasks: what a trainer, an evaluator or a submission writer needs to know.

Every fine-tuning seqio task (tasks/finetune.py) registers its `TaskInfo` here when it is registered:

    info = get_task_info('glue_sst2')
    info.kind, info.label_names, info.metrics, info.submission_name   # 'classification', ('0', '1'), ...
"""
import dataclasses
from typing import Callable

BENCHMARKS = ("glue", "clue", "fewclue", "ud")
KINDS = ("classification", "regression", "span_extraction", "multiple_choice", "tagging", "text_to_text")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Metadata of one fine-tuning task (docs/interfaces.md, "Fine-tuning")."""
    name: str  # the seqio task name
    benchmark: str  # 'glue' | 'clue' | 'fewclue' | 'ud'
    kind: str  # one of KINDS
    label_names: tuple[str, ...]  # label id -> official label string (as in submission files); () regression/span/MC
    metrics: tuple[str, ...]  # names of metric functions in plmjax.evaluation.metrics
    submission_name: str  # the file the official leaderboard expects ('' none)
    num_choices: int = 0  # multiple choice only
    # text_to_text only: label id -> the target word the model generates (e.g. 'positive'); () when the target is
    # not a label (regression: the score as '%.1f' rounded to 0.2, spans: the answer text, tagging: the tags).
    label_words: tuple[str, ...] = ()

    def __post_init__(self):
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"TaskInfo {self.name!r}: unknown benchmark {self.benchmark!r}; expected {BENCHMARKS}.")
        if self.kind not in KINDS:
            raise ValueError(f"TaskInfo {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}.")
        if self.kind == "multiple_choice" and self.num_choices < 2:
            raise ValueError(f"TaskInfo {self.name!r}: a multiple-choice task needs num_choices >= 2.")

    @property
    def num_labels(self) -> int:
        """len(label_names); 1 for regression (one output)."""
        return 1 if self.kind == "regression" else len(self.label_names)


_REGISTRY: dict[str, TaskInfo] = {}


def register_task_info(info: TaskInfo) -> TaskInfo:
    """Adds (or replaces, as seqio re-registration does) the metadata of a task."""
    _REGISTRY[info.name] = info
    return info


def get_task_info(task_name: str) -> TaskInfo:
    """The metadata of a registered fine-tuning task; ValueError naming the task and the known ones."""
    if task_name not in _REGISTRY:
        raise ValueError(f"No fine-tuning task {task_name!r} is registered (import plmjax.tasks first). Known "
                         f"fine-tuning tasks: {', '.join(sorted(_REGISTRY)) or 'none'}.")
    return _REGISTRY[task_name]


def task_names() -> list[str]:
    """Every registered fine-tuning task, sorted."""
    return sorted(_REGISTRY)


_READERS: dict[str, Callable[[str], list[dict]]] = {}


def register_examples_reader(task_name: str, read_fn: Callable[[str], list[dict]]) -> None:
    """How `read_examples` finds a file-based task's raw examples (tasks/finetune.py registers them)."""
    _READERS[task_name] = read_fn


def read_examples(task_name: str, split: str) -> list[dict]:
    """A file-based task's examples of one split in file order, as the readers give them (spec.py's schema plus
    Python-only keys, e.g. CMRC2018's string `id` and every gold `answers`), for evaluation and submissions;
    `example_ids` in batches are their `idx`. Not for TFDS tasks (ValueError)."""
    if task_name not in _READERS:
        raise ValueError(f"{task_name!r} has no file reader (TFDS tasks and unknown names have none); known: "
                         f"{', '.join(sorted(_READERS))}.")
    return _READERS[task_name](split)
