"""Prompting tasks: `<task>_pet`, PET cloze classification (plmjax.prompting.pet) of DATA's tasks

    glue_sst2_tsv_pet                              SST-2 (GLUE_DIR, default ../shared/data/glue)
    fewclue_{eprstmt,tnews,csldcp,iflytek}_pet     FewCLUE (FEWCLUE_DIR, default ../shared/data/fewclue)

Each reads the same source and uses the same WordPiece vocabulary as DATA's task (tasks/finetune.py, imported
first), and registers the same TaskInfo (kind 'classification', official metrics, label strings, submission
file) under its own name, so EVAL's predict and submission files apply to it. Registering reads nothing.
"""
import dataclasses
import functools

import seqio

from plmjax.data.finetune import info
from plmjax.prompting import pet, templates

from . import finetune  # noqa: F401  (DATA's tasks: the PET tasks share their sources)


def register_pet_task(task: templates.PromptTask) -> str:
    """Registers `<task.name>_pet` over DATA's task `task.name` and returns its name."""
    base = seqio.get_mixture_or_task(task.name)
    base_info = info.get_task_info(task.name)
    if base_info.label_names != task.label_names:
        raise ValueError(f"{task.name}: the PET verbalizers follow the labels {task.label_names[:5]}..., the task's "
                         f"are {base_info.label_names[:5]}...; fix plmjax/prompting/templates.py.")
    name = f"{task.name}_pet"
    seqio.TaskRegistry.remove(name)  # re-importing replaces the task
    seqio.TaskRegistry.add(name, **pet.task_kwargs(task, base.source, base.output_features["inputs"].vocabulary))
    info.register_task_info(dataclasses.replace(base_info, name=name))
    info.register_examples_reader(name, functools.partial(info.read_examples, task.name))
    return name


for _task in templates.PROMPT_TASKS.values():
    register_pet_task(_task)
