"""Intermediate outputs of any plmjax model, through one mechanism: flax `sow` into the 'intermediates' collection.

What is sown (nothing is kept unless the caller makes 'intermediates' mutable, so ordinary calls pay nothing):
- `Embedder`: 'hidden_states', its output (hidden state 0: after the embedding norm and dropout, and after
  ELECTRA's projection to emb_dim, as Hugging Face's `hidden_states[0]`);
- `TransformerLayer`: 'hidden_states', the layer's output (the last one is before the stack's final norm, if the
  config has one; Hugging Face's GPT-2 and T5 put the final-normed state there instead);
- `MultiHeadAttention` (self- and cross-attention): 'attention_scores' [batch, heads, q, k], the scores after
  scaling and bias, with masked keys set to finfo(float32).min (Hugging Face's `scores + extended mask`,
  TinyBERT's distillation target), and 'attention_probs', their softmax before dropout.

`capture` runs a model and returns them per stack, in layer order, as arrays with a leading layer axis, for the
unrolled and the scanned layout alike (a scanned stack sows them stacked already).
"""
import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

COLLECTION = 'intermediates'
NAMES = ('hidden_states', 'attention_scores', 'attention_probs', 'cross_attention_scores', 'cross_attention_probs')
_LAYER_KEY = re.compile(r'^layers_(\d+)$')


def capture(module: nn.Module, variables, *args, what: Sequence[str] = NAMES, **kwargs):
    """`module.apply(variables, *args, **kwargs)` -> (outputs, {stack: {name: array}}).

    stack: the path of each layer stack ('encoder', 'decoder', PanGu-α's 'query_layer/layer', ...). name, one of
    `what` (default all of NAMES): 'hidden_states' [num_layers + 1, batch, length, emb] (the embedder's output
    first; [num_layers, ...] for a layer outside a stack), '(cross_)attention_scores' and '(cross_)attention_probs'
    [num_layers, batch, heads, q, k]. Each stack is called once per apply (ALBERT's shared layer, called once per
    layer, is fine)."""
    unknown = set(what) - set(NAMES)
    if unknown:
        raise ValueError(f'Unknown intermediates {sorted(unknown)}; known: {NAMES}.')
    outputs, state = module.apply(variables, *args, mutable=[COLLECTION], **kwargs)
    return outputs, collect(state.get(COLLECTION, {}), what)


def collect(intermediates: Mapping, what: Sequence[str] = NAMES) -> dict[str, dict[str, jnp.ndarray]]:
    """The 'intermediates' collection of one apply -> {stack: {name: array}} (see `capture`)."""
    found = {}
    _walk(intermediates, '', found)
    return {path: {k: v for k, v in values.items() if k in what} for path, values in found.items()}


def _walk(tree: Mapping, path: str, found: dict) -> None:
    layers = _stack_layers(tree)
    if layers is not None:
        found[path] = _gather(layers, tree.get('embedder'))
        return
    if 'hidden_states' in tree and 'self_attention' in tree:  # a TransformerLayer outside a stack
        found[path] = _gather([(tree, False)], None)
        return
    for key, child in tree.items():
        if isinstance(child, Mapping):
            _walk(child, f'{path}/{key}' if path else key, found)


def _stack_layers(tree: Mapping):
    """[(layer intermediates, stacked?)] of a stack in layer order, or None if `tree` is not a stack."""
    if isinstance(tree.get('layers'), Mapping):
        return [(tree['layers'], True)]
    indices = sorted(int(m.group(1)) for m in map(_LAYER_KEY.match, tree) if m)
    return [(tree[f'layers_{i}'], False) for i in indices] or None


def _calls(values, stacked: bool) -> list:
    """A sown tuple (one entry per call) -> per-layer arrays with a leading axis."""
    return [v if stacked else v[None] for v in values]


def _gather(layers, embedder) -> dict:
    out = {}
    names = {'hidden_states': (None, 'hidden_states')}
    for prefix, module in (('', 'self_attention'), ('cross_', 'cross_attention')):
        for kind in ('attention_scores', 'attention_probs'):
            names[prefix + kind] = (module, kind)
    for name, (module, kind) in names.items():
        parts = []
        if name == 'hidden_states' and embedder is not None:
            parts += _calls(embedder.get('hidden_states', ()), False)
        for layer, stacked in layers:
            source = layer if module is None else layer.get(module, {})
            parts += _calls(source.get(kind, ()), stacked)
        if parts:
            out[name] = jnp.concatenate(parts, axis=0)
    return out
