"""Data: corpora and seqio sources, vocabularies, pre-training preprocessors, feature converters, the pipeline.

corpora.py (plain text) -> sources.py (seqio sources) -> vocabularies.py (SentencePiece, WordPiece)
-> preprocessors.py, masking.py, span_corruption.py (packing and corruption) -> pretraining.py (Task kwargs)
-> feature_converters.py (model batch features) -> pipeline.py (`get_dataset`, what the trainer calls).
Tasks are registered in the top-level `tasks/` package (`plmjax.tasks`).
"""
