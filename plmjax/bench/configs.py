"""What `plmjax bench` measures: the models, their batch shapes at each size, and the model-FLOP formula.

Model FLOPs of one training step (forward + backward), as in Kaplan et al. (2020) and PaLM's MFU (Chowdhery
et al., 2022, appendix B):

    6 * N * tokens  +  12 * layers * seq * d_attn * tokens

N is the number of NON-EMBEDDING parameters: every parameter except the token, position and token-type
embedding tables and T5's relative-attention-bias tables. The output projection is tied to the token table in
all three benchmarked models (BERT, GPT-2, T5), so its FLOPs are not counted either (nor in PyTorch's figures,
which use the same formula). d_attn = heads * head_dim; seq is the attended length (no causal halving).
An encoder-decoder counts each stack with its own tokens: 6 * N_enc * input tokens + 6 * N_dec * target
tokens + 12 * L_enc * S_in * d * input tokens + 12 * L_dec * (S_tgt + S_in) * d * target tokens (decoder
self-attention plus cross-attention); its tokens/s counts input + target tokens.

This module never imports jax at module level: the PyTorch worker processes read the shapes from here too.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

# Token tables and relative-bias tables: what "non-embedding" leaves out (names of plmjax parameter modules).
EMBEDDING_MODULES = ('token_embedder', 'position_embedder', 'token_type_embedder', 'relative_attention_bias')

# The tiny sizes shrink the full presets (same structure, CI-sized): see `ModelBench.preset_overrides`.
TINY = dict(vocab_size=512, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, max_length=128)


@dataclasses.dataclass(frozen=True)
class ModelBench:
    """One benchmarked training configuration: a plmjax preset + objective and its Hugging Face class."""
    name: str  # 'bert' | 'gpt2' | 't5'
    preset: str  # plmjax.models.config preset function
    architecture: str
    objective: str
    hf_class: str  # the transformers class of the PyTorch reference
    lengths: Mapping[str, int]  # full size: {'inputs': ..., 'targets': ...}
    tiny_lengths: Mapping[str, int]
    overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
    batch_size: int = 8
    # plmjax's objective can run the output head at the predicted positions only (MLM's sparse head, what
    # `plmjax train` does); the reference computes logits at every position. Both are measured (LOGITS).
    sparse_head: bool = False

    def feature_lengths(self, size: str) -> dict[str, int]:
        return dict(self.lengths if size == 'full' else self.tiny_lengths)

    def preset_overrides(self, size: str) -> dict:
        overrides = dict(self.overrides)
        if size == 'tiny':
            layers = {f: 2 for f in ('num_encoder_layers', 'num_decoder_layers')
                      if f in _LAYER_FIELDS[self.architecture]}
            overrides.update(TINY, **layers)
        return overrides


_LAYER_FIELDS = {'encoder': ('num_encoder_layers',), 'decoder': ('num_decoder_layers',),
                 'encoder_decoder': ('num_encoder_layers', 'num_decoder_layers')}

# Where a training row computes the vocabulary logits: 'all' positions (like-for-like with the reference) or the
# 'predicted' ones only (plmjax's sparse MLM head: BERT-base at 8 x 128 projects 24 positions a row, not 128,
# which saves about a sixth of the step's FLOPs; the reference does about 20% more work).
LOGITS = ('all', 'predicted')

# BERT-base MLM is `BertForMaskedLM`, which has no pooler: neither has the plmjax model here.
MODELS = {m.name: m for m in (
    ModelBench('bert', 'bert_base', 'encoder', 'mlm', 'BertForMaskedLM', {'inputs': 128}, {'inputs': 32},
               {'pooler': False}, sparse_head=True),
    ModelBench('gpt2', 'gpt2_small', 'decoder', 'causal_lm', 'GPT2LMHeadModel', {'targets': 128}, {'targets': 32}),
    ModelBench('t5', 't5_small', 'encoder_decoder', 'span_corruption', 'T5ForConditionalGeneration',
               {'inputs': 128, 'targets': 32}, {'inputs': 32, 'targets': 8}),
)}


@dataclasses.dataclass(frozen=True)
class DecodeBench:
    """Decoding with a KV cache of one model (a ModelBench name: a decoder, or an encoder-decoder whose encoder
    runs once on the `prompt_length` inputs): `new_tokens` at each batch size, greedy (num_beams 1) and with beam
    search (num_beams > 1). Every step runs on both sides: a decoder has no EOS (`eos_id` None); an
    encoder-decoder keeps its EOS (`eos_id`) and `min_new_tokens` = `new_tokens` holds it back on both sides.
    Both sides decode the same weights (written once as a Hugging Face directory) and the same inputs."""
    model: str = 'gpt2'
    prompt_length: int = 32
    new_tokens: int = 64
    tiny_prompt_length: int = 8
    tiny_new_tokens: int = 8
    batch_sizes: tuple[int, ...] = (1, 8)
    num_beams: tuple[int, ...] = (1, 4)
    eos_id: int | None = None

    def shape(self, size: str) -> tuple[int, int]:
        return ((self.prompt_length, self.new_tokens) if size == 'full'
                else (self.tiny_prompt_length, self.tiny_new_tokens))

    @property
    def min_new_tokens(self) -> bool:
        """Whether EOS is held back until the last token (both sides: the same number of steps)."""
        return self.eos_id is not None


# GPT-2 small: a 32-token prompt; T5-small: 32 input tokens encoded once, EOS = 1 (T5's) held back for 64 steps.
DECODES = {d.model: d for d in (DecodeBench('gpt2'), DecodeBench('t5', eos_id=1))}
DECODE = DECODES['gpt2']


@dataclasses.dataclass(frozen=True)
class ParseBench:
    """Perturbed Masking impact matrices (Dist, last layer) of an all-MiniLM-L6-v2-sized BERT (6 layers, 384
    wide: the encoder of the fidelity check) over synthetic sentences of `word_counts` words (three times the
    5%, 15%, .., 95% quantiles of the UD English-EWT dev sentences of at most 20 words: 8.7 words and 57.7
    forward passes a sentence, as there), every third word two pieces; the masked copies are batched
    `batch_size` at a time in chunks of about `chunk_copies` (plmjax.analysis.masking), identically in both
    frameworks."""
    preset: str = 'bert_base'
    overrides: Mapping[str, object] = dataclasses.field(default_factory=lambda: dict(
        emb_dim=384, num_heads=12, head_dim=32, mlp_dim=1536, num_encoder_layers=6, pooler=False))
    word_counts: tuple[int, ...] = (1, 3, 4, 6, 7, 9, 10, 13, 15, 19) * 3
    tiny_word_counts: tuple[int, ...] = (3, 5, 4)
    batch_size: int = 64
    chunk_copies: int = 1024
    hf_class: str = 'BertModel'

    def preset_overrides(self, size: str) -> dict:
        overrides = dict(self.overrides)
        if size == 'tiny':
            overrides.update(TINY, num_encoder_layers=2)
        return overrides

    def sentences(self, size: str, vocab_size: int) -> list[list[list[int]]]:
        """The word pieces (ids >= 5) of each sentence, the same in both workers."""
        import numpy as np
        rng = np.random.default_rng(0)
        counts = self.word_counts if size == 'full' else self.tiny_word_counts
        return [[rng.integers(5, vocab_size, 2 if w % 3 == 2 else 1).tolist() for w in range(n)] for n in counts]


PARSE = ParseBench()
MATMUL_SIZE = {'full': 4096, 'tiny': 512}  # square [n, n] @ [n, n]: 2 n^3 FLOPs


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    """The numbers the FLOP formula needs, for one model and batch shape."""
    non_embedding_params: dict[str, int]  # per stack: 'encoder' / 'decoder' (heads count with their stack)
    layers: dict[str, int]
    seq: dict[str, int]  # attended length per stack
    tokens: dict[str, int]  # tokens per step per stack
    d_attn: int

    @property
    def tokens_per_step(self) -> int:
        return sum(self.tokens.values())

    @property
    def flops_per_step(self) -> float:
        flops = 0.0
        for stack, tokens in self.tokens.items():
            flops += 6 * self.non_embedding_params[stack] * tokens
            flops += 12 * self.layers[stack] * self.seq[stack] * self.d_attn * tokens
        return flops

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), 'tokens_per_step': self.tokens_per_step,
                'flops_per_step': self.flops_per_step}


def is_embedding(path: tuple[str, ...]) -> bool:
    return any(name in EMBEDDING_MODULES for name in path)


def model_counts(bench: ModelBench, size: str, param_shapes: Mapping[tuple[str, ...], tuple[int, ...]],
                 config) -> ModelCounts:
    """`param_shapes`: {path: shape} of the plmjax parameters; config: its TransformerConfig."""
    lengths = bench.feature_lengths(size)
    batch = bench.batch_size
    d_attn = config.num_heads * config.head_dim
    if bench.architecture != 'encoder_decoder':
        stack = 'encoder' if bench.architecture == 'encoder' else 'decoder'
        n = sum(math.prod(s) for p, s in param_shapes.items() if not is_embedding(p))
        seq = max(lengths.values())
        layers = config.num_encoder_layers if stack == 'encoder' else config.num_decoder_layers
        return ModelCounts({stack: n}, {stack: layers}, {stack: seq}, {stack: batch * seq}, d_attn)
    n_enc = sum(math.prod(s) for p, s in param_shapes.items() if not is_embedding(p) and p[0] == 'encoder')
    n_dec = sum(math.prod(s) for p, s in param_shapes.items() if not is_embedding(p) and p[0] != 'encoder')
    s_in, s_tgt = lengths['inputs'], lengths['targets']
    return ModelCounts({'encoder': n_enc, 'decoder': n_dec},
                       {'encoder': config.num_encoder_layers, 'decoder': config.num_decoder_layers},
                       {'encoder': s_in, 'decoder': s_tgt + s_in},
                       {'encoder': batch * s_in, 'decoder': batch * s_tgt}, d_attn)


FORMULA = ('model FLOPs/step = 6*N*tokens + 12*layers*seq*d_attn*tokens; N = non-embedding parameters (all but '
           'the token, position, token-type and relative-bias tables; the tied output projection is the token '
           'table, so not counted: rows with logits at all positions and at the predicted ones count the same '
           'model FLOPs); d_attn = heads*head_dim; T5: each stack with its own tokens, decoder seq = '
           'targets + inputs (self + cross attention)')
