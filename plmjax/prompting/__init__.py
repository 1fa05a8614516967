"""Prompting: adapting a pre-trained model to a task through its pre-training head, without a new head.

- templates.py: per task, PET patterns and verbalizers (encoders) and in-context formats (decoders);
- pet.py: PET cloze classification data (seqio preprocessor `pet_features`, `PetFeatureConverter`); the loss and
  label scores are the objective `pet` (`plmjax.objectives.pet`), the tasks `<task>_pet` (tasks/prompting.py);
- in_context.py: k-shot in-context evaluation of decoders by rank classification (`evaluate`).

Submodules are imported on use (`from plmjax.prompting import in_context`): the data side never pulls in models.
"""
