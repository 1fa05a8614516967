"""The vocabulary a command's `--vocab FILE` or `--task NAME` names (`plmjax parse`, `plmjax infer`)."""
from __future__ import annotations

import os
from typing import Optional


def from_flags(vocab: Optional[str], task: Optional[str]):
    """A seqio Vocabulary: the inputs' (else targets') vocabulary of the seqio task `task`, or the file `vocab` (a
    WordPiece vocab.txt or a SentencePiece model)."""
    import seqio
    if task:
        import plmjax.tasks  # noqa: F401  (registers the tasks)
        features = seqio.get_mixture_or_task(task).output_features
        return features.get('inputs', features.get('targets')).vocabulary
    if not os.path.isfile(vocab):
        raise FileNotFoundError(f'--vocab {vocab}: no such file.')
    if vocab.endswith('.txt'):
        from plmjax.data import vocabularies
        return vocabularies.WordPieceVocabulary(vocab)
    return seqio.SentencePieceVocabulary(vocab)
