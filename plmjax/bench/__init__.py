"""`plmjax bench`: side-by-side speed of plmjax and the PyTorch reference on this machine.

Measures the XLA matmul ceiling, the training step (tokens/s, model FLOP/s, MFU, compile time, peak memory) of
BERT-base MLM, GPT-2 small causal LM and T5-small span corruption, and GPT-2 greedy decoding with a KV cache,
each configuration in a fresh worker process. The FLOP formula is in `plmjax.bench.configs` (FORMULA).
Nothing here imports jax at package import: the PyTorch workers import this package too.
"""
