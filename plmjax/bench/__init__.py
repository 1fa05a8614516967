"""`plmjax bench`: side-by-side speed of plmjax and the PyTorch reference on this machine.

Measures the matmul ceilings, the training step (tokens/s, model FLOP/s, MFU against the ceiling of the row's own
precision, compile time, peak memory) of BERT-base MLM (logits at all positions as the reference, and at the
predicted ones as `plmjax train`), GPT-2 small causal LM and T5-small span corruption, and GPT-2 greedy decoding
with a KV cache, each configuration in a fresh worker process. The FLOP formula is in `plmjax.bench.configs`
(FORMULA); how figures are derived, in `plmjax.bench.report`.
Nothing here imports jax at package import: the PyTorch workers import this package too.
"""
