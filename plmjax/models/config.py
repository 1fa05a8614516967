"""TransformerConfig, the one description of every plmjax network, and its named presets.

Every architectural choice of BERT, RoBERTa, NEZHA, ELECTRA, GPT-2, PanGu-α, T5 v1.0/v1.1 and BART is a field
here, with the value each family uses, so that a Hugging Face checkpoint maps onto a plmjax model one tensor at a
time and the forward pass matches the reference exactly. Presets are plain functions returning a config
(`bert_base(max_length=1024)`), registered with gin so that gin files bind `MODEL_CONFIG = @bert_base()` and
override fields (`bert_base.max_length = 1024`). This is the one models file that imports gin.
"""
import dataclasses
from typing import Optional

import gin
import jax.numpy as jnp

from plmjax.layers import flash, matmul, mlp, norms

ACTIVATIONS = tuple(mlp.ACTIVATIONS)
NORMS = norms.NORMS
POSITIONS = ('learned', 'sinusoidal', 'rotary', 't5_relative', 'nezha_relative', 'none')
DTYPES = ('float32', 'bfloat16', 'float64')  # float64 (with jax_enable_x64) is for numerical checks
# What each rematerialized layer keeps for the backward pass (jax.checkpoint policies): 'full' keeps only the layer's
# inputs and recomputes its forward pass; 'dots_saveable' keeps matmul outputs and recomputes the cheap elementwise
# work; 'dots_with_no_batch_dims_saveable' keeps only matmuls without batch dimensions (not attention scores).
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Every architectural choice of a plmjax network (defaults: BERT-base)."""
    name: str = 'custom'                 # preset name, used in error messages (`bert_base.max_length = ...`)
    vocab_size: int = 30522
    emb_dim: int = 768                   # width of the residual stream (d_model, hidden_size)
    embedding_size: Optional[int] = None  # factorized token embeddings (ELECTRA: 128), projected to emb_dim
    num_heads: int = 12
    head_dim: int = 64                   # d_kv
    mlp_dim: int = 3072                  # d_ff, intermediate_size
    num_encoder_layers: int = 12
    num_decoder_layers: int = 0          # PanGu-α: includes its top query layer
    shared_layers: bool = False          # ALBERT: every layer of a stack reuses the parameters of layers_0
    max_length: int = 512                # longest sequence accepted; learned position tables hold this many rows
    type_vocab_size: int = 0             # token types (BERT segments A/B); 0 = none
    # MLP.
    activation: str = 'gelu'             # 'relu' | 'gelu' (exact erf) | 'gelu_new' (tanh approximation) | 'silu'
    gated_mlp: bool = False              # GeGLU/SwiGLU: act(x wi_0) * (x wi_1), as T5 v1.1
    # Mixture of experts (plmjax.layers.moe): every moe_layer_interval-th layer's MLP (layers i with
    # (i + 1) % interval == 0 in each stack) becomes num_experts expert MLPs behind a learned router.
    num_experts: int = 0                 # 0: dense MLPs everywhere
    num_experts_per_token: int = 1       # 1: Switch Transformer (top-1); 2: GShard (top-2)
    expert_capacity_factor: float = 1.25  # capacity = ceil(factor * length * k / num_experts) per sequence
    moe_layer_interval: int = 1          # 2: every other layer (Switch Transformer)
    router_aux_loss_weight: float = 0.01  # Switch's load-balancing loss (alpha), averaged over MoE layers
    router_z_loss_weight: float = 0.001  # ST-MoE's router z-loss
    # Normalization.
    norm: str = 'layernorm'              # 'layernorm' | 'rmsnorm' (T5: no mean, no bias, variance in float32)
    norm_eps: float = 1e-12
    pre_norm: bool = False               # False: post-LN (BERT, BART); True: pre-LN (GPT-2, T5, PanGu-α)
    embedding_norm: bool = True          # LayerNorm after the embeddings (BERT, BART's layernorm_embedding)
    final_norm: bool = False             # norm after the last layer (GPT-2's ln_f, T5's final_layer_norm)
    # Positions.
    position: str = 'learned'            # one of POSITIONS ('none': no position information)
    position_offset: int = 0             # learned position ids start here (RoBERTa, BART: 2; RoBERTa's HF
                                         # position ids equal these on right-padded inputs)
    relative_num_buckets: int = 32       # T5 relative attention bias
    relative_max_distance: int = 128
    nezha_max_relative_position: int = 64  # NEZHA clips relative distances to [-k, k]
    rotary_base: float = 10000.0
    # Attention and embeddings.
    use_bias: bool = True                # biases in attention and MLP projections (T5: none)
    scale_attention: bool = True         # divide scores by sqrt(head_dim); T5 folds it into the query init instead
    scale_embeddings: bool = False       # multiply token embeddings by sqrt(emb_dim) (BART scale_embedding, mBART)
    # Dropout.
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    activation_dropout_rate: float = 0.0  # on the MLP hidden activation (T5's dropout in DenseReluDense; BART)
    # Heads.
    tie_embeddings: bool = True          # output projection shares the token embedding matrix
    scale_tied_logits: bool = False      # tied logits from hidden * emb_dim**-0.5 (T5 v1.0)
    lm_head_bias: bool = False           # bias on the LM logits (BART's final_logits_bias)
    mlm_head_transform: bool = True      # BERT's dense + act + LayerNorm before the MLM vocab projection
    pooler: bool = False                 # BERT's pooler: tanh(dense(hidden[:, 0])), returned as 'pooled'
    query_layer: bool = False            # PanGu-α: the last decoder layer queries with learned position embeddings
    # Numerics and memory.
    init_std: Optional[float] = 0.02     # N(0, init_std) weights; None: T5's fan-in scaling, embeddings N(0, 1)
    pad_id: int = 0
    dtype: str = 'float32'               # compute dtype: 'float32' | 'bfloat16' ('float64' for numerical checks)
    param_dtype: str = 'float32'
    matmul_dtype: Optional[str] = None   # operands of every matrix product: None (the compute dtype) or 'bfloat16'
                                         # (bf16 x bf16 -> float32, also in the backward pass; plmjax.layers.matmul)
    remat_policy: str = 'none'           # rematerialize each layer (nn.remat) to save activation memory: one of
                                         # REMAT_POLICIES (the one remat switch)
    scan_layers: bool = False            # run each stack's layers as one nn.scan (params `layers`, stacked on a
                                         # leading 'layers' axis) instead of unrolled `layers_0..layers_{n-1}`:
                                         # one layer to compile. Same numbers; convert checkpoints with
                                         # plmjax.models.layout. gin: `bert_base.scan_layers = True`. Default off
                                         # everywhere (converters and golden trees are unrolled).
    pipeline_stages: int = 1             # > 1: GPipe pipeline over the mesh's 'stage' axis (plmjax.models.pipeline):
                                         # each stack's layers split into this many stages (params
                                         # `pipeline/layers` [stages, layers/stage, ...] whatever scan_layers;
                                         # scan_layers=False unrolls the pipeline's loops: (microbatches +
                                         # stages - 1) x layers/stage bodies to compile, as the plan's cost
                                         # analysis needs). Use scan_layers=True to train.
    pipeline_microbatches: int = 1       # the batch runs through the pipeline in this many microbatches; bubble
                                         # fraction (stages - 1) / (microbatches + stages - 1). gin:
                                         # `gpt2_xl.pipeline_stages = 4`, `gpt2_xl.pipeline_microbatches = 16`.
    attention_kernel: str = 'einsum'     # 'einsum' (the reference; CPU) | 'flash': the Pallas TPU flash-attention
                                         # kernel for training/scoring passes (plmjax.layers.flash: causal,
                                         # padding, T5 bias; decoding falls back to einsum; needs
                                         # attention_dropout_rate=0 in training). gin: `t5_base.attention_kernel
                                         # = 'flash'`.

    def __post_init__(self):
        def check_choice(field, choices):
            value = getattr(self, field)
            if value not in choices:
                raise ValueError(f'TransformerConfig.{field}={value!r} is not one of {choices}.')

        check_choice('activation', ACTIVATIONS)
        check_choice('norm', NORMS)
        check_choice('position', POSITIONS)
        check_choice('dtype', DTYPES)
        check_choice('param_dtype', DTYPES)
        check_choice('matmul_dtype', matmul.MATMUL_DTYPES)
        check_choice('remat_policy', REMAT_POLICIES)
        check_choice('attention_kernel', flash.KERNELS)
        if self.attention_kernel != 'einsum' and self.position == 'nezha_relative':
            raise ValueError(f'attention_kernel={self.attention_kernel!r} cannot add NEZHA\'s relative keys/values '
                             f'(position=\'nezha_relative\'): use attention_kernel=\'einsum\'.')
        for field in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'max_length'):
            if getattr(self, field) <= 0:
                raise ValueError(f'TransformerConfig.{field} must be positive, got {getattr(self, field)}.')
        if self.num_encoder_layers < 0 or self.num_decoder_layers < 0:
            raise ValueError('TransformerConfig.num_encoder_layers and num_decoder_layers must be >= 0.')
        if self.position in ('rotary', 'nezha_relative') and self.head_dim % 2:
            raise ValueError(f'{self.position} positions need an even head_dim, got head_dim={self.head_dim}.')
        if self.position == 'sinusoidal' and self.token_embedding_size % 2:
            raise ValueError(f'sinusoidal positions need an even embedding width, got {self.token_embedding_size}.')
        if self.pipeline_stages > 1 and self.shared_layers:
            raise ValueError('pipeline_stages > 1 splits distinct layers into stages; shared_layers=True (ALBERT) has '
                             'one layer: use pipeline_stages=1 with shared_layers.')
        if self.scan_layers and self.shared_layers:
            raise ValueError('scan_layers=True scans over distinct layers; shared_layers=True (ALBERT) has one layer '
                             'reused num_layers times: use scan_layers=False with shared_layers.')
        if self.num_experts:
            self._check_moe()
        if self.pipeline_stages < 1 or self.pipeline_microbatches < 1:
            raise ValueError('TransformerConfig.pipeline_stages and pipeline_microbatches must be >= 1, got '
                             f'{self.pipeline_stages} and {self.pipeline_microbatches}.')
        if self.pipeline_stages > 1 and self.attention_kernel != 'einsum':
            raise ValueError("pipeline_stages > 1 runs the einsum attention only: set attention_kernel = 'einsum' or "
                             'pipeline_stages = 1.')
        if self.pipeline_stages > 1 and self.num_experts:
            raise ValueError('pipeline_stages > 1 with num_experts > 0 (a pipelined mixture of experts) is not '
                             'supported: set pipeline_stages = 1 or num_experts = 0.')
        if self.query_layer and self.num_decoder_layers < 1:
            raise ValueError('query_layer=True needs num_decoder_layers >= 1 (the query layer is the last of them).')
        if self.embedding_size not in (None, self.emb_dim) and self.tie_embeddings and not self.mlm_head_transform:
            raise ValueError(
                f'tied output embeddings of size embedding_size={self.embedding_size} need mlm_head_transform=True '
                f'to map emb_dim={self.emb_dim} to it (as ELECTRA\'s generator head does).')

    def _check_moe(self):
        if self.num_experts < 2 or self.num_experts_per_token not in (1, 2) or self.moe_layer_interval < 1:
            raise ValueError(f'TransformerConfig.num_experts={self.num_experts} (0 or >= 2), num_experts_per_token='
                             f'{self.num_experts_per_token} (1 or 2) or moe_layer_interval={self.moe_layer_interval} '
                             '(>= 1) is out of range.')
        if self.expert_capacity_factor <= 0:
            raise ValueError('TransformerConfig.expert_capacity_factor must be > 0, got '
                             f'{self.expert_capacity_factor}.')
        if self.shared_layers:
            raise ValueError('num_experts > 0 with shared_layers=True (ALBERT) is not supported: set num_experts = 0.')
        stacks = (self.num_encoder_layers, self.num_decoder_layers - self.query_layer)  # the query layer is dense
        uneven = [n for n in stacks if n % self.moe_layer_interval]
        if self.scan_layers and uneven:
            raise ValueError(f'scan_layers=True scans blocks of moe_layer_interval={self.moe_layer_interval} layers, '
                             f'which must divide the number of layers of each stack (got {uneven}): change '
                             'moe_layer_interval or use scan_layers=False.')

    def is_moe_layer(self, index: int) -> bool:
        """Whether layer `index` (0-based, within its stack) has a mixture-of-experts MLP."""
        return self.num_experts > 0 and (index + 1) % self.moe_layer_interval == 0

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def token_embedding_size(self) -> int:
        """Width of the token (and position, token type) embedding tables."""
        return self.embedding_size or self.emb_dim


gin.external_configurable(TransformerConfig, module='plmjax.models')


def _preset(name, base, overrides):
    return TransformerConfig(**{**base, 'name': name, **overrides})


# --- Encoders: BERT, RoBERTa, NEZHA, ELECTRA -------------------------------------------------------------

_BERT = dict(vocab_size=30522, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=12,
             num_decoder_layers=0, max_length=512, type_vocab_size=2, activation='gelu', norm='layernorm',
             norm_eps=1e-12, pre_norm=False, embedding_norm=True, final_norm=False, position='learned',
             use_bias=True, tie_embeddings=True, mlm_head_transform=True, pooler=True, init_std=0.02)


@gin.configurable
def tiny_encoder(**overrides) -> TransformerConfig:
    """A 2-layer BERT for tests and smoke runs."""
    return _preset('tiny_encoder', {**_BERT, 'vocab_size': 512, 'emb_dim': 64, 'num_heads': 4, 'head_dim': 16,
                                    'mlp_dim': 128, 'num_encoder_layers': 2, 'max_length': 128}, overrides)


@gin.configurable
def bert_base(**overrides) -> TransformerConfig:
    """BERT-base (Devlin et al., 2019): 12 layers, 768 wide, 12 heads, post-LN, 110M parameters."""
    return _preset('bert_base', _BERT, overrides)


@gin.configurable
def bert_large(**overrides) -> TransformerConfig:
    """BERT-large: 24 layers, 1024 wide, 16 heads, 335M parameters."""
    return _preset('bert_large', {**_BERT, 'emb_dim': 1024, 'num_heads': 16, 'mlp_dim': 4096,
                                  'num_encoder_layers': 24}, overrides)


@gin.configurable
def nezha_base(**overrides) -> TransformerConfig:
    """NEZHA-base (Wei et al., 2019): BERT-base with functional relative positions (k=64), Chinese vocabulary."""
    return _preset('nezha_base', {**_BERT, 'vocab_size': 21128, 'position': 'nezha_relative',
                                  'nezha_max_relative_position': 64}, overrides)


@gin.configurable
def roberta_base(**overrides) -> TransformerConfig:
    """RoBERTa-base: BERT-base with byte-level BPE (pad id 1), one token type, positions starting at 2."""
    return _preset('roberta_base', {**_BERT, 'vocab_size': 50265, 'type_vocab_size': 1, 'norm_eps': 1e-5,
                                    'position_offset': 2, 'pad_id': 1}, overrides)


@gin.configurable
def electra_small(**overrides) -> TransformerConfig:
    """ELECTRA-small discriminator body: 12 layers, 256 wide, 4 heads, 128-wide factorized embeddings."""
    return _preset('electra_small', {**_BERT, 'emb_dim': 256, 'embedding_size': 128, 'num_heads': 4,
                                     'mlp_dim': 1024, 'pooler': False}, overrides)


# --- Decoders: GPT-2, PanGu-α ------------------------------------------------------------------------------

_GPT2 = dict(vocab_size=50257, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=0,
             num_decoder_layers=12, max_length=1024, type_vocab_size=0, activation='gelu_new', norm='layernorm',
             norm_eps=1e-5, pre_norm=True, embedding_norm=False, final_norm=True, position='learned',
             use_bias=True, tie_embeddings=True, lm_head_bias=False, mlm_head_transform=False, init_std=0.02)


@gin.configurable
def tiny_decoder(**overrides) -> TransformerConfig:
    """A 2-layer GPT-2 for tests and smoke runs."""
    return _preset('tiny_decoder', {**_GPT2, 'vocab_size': 512, 'emb_dim': 64, 'num_heads': 4, 'head_dim': 16,
                                    'mlp_dim': 128, 'num_decoder_layers': 2, 'max_length': 128}, overrides)


@gin.configurable
def gpt2_small(**overrides) -> TransformerConfig:
    """GPT-2 small (Radford et al., 2019): 12 pre-LN layers, 768 wide, 124M parameters."""
    return _preset('gpt2_small', _GPT2, overrides)


@gin.configurable
def gpt2_xl(**overrides) -> TransformerConfig:
    """GPT-2 XL: 48 layers, 1600 wide, 25 heads, 1.56B parameters."""
    return _preset('gpt2_xl', {**_GPT2, 'emb_dim': 1600, 'num_heads': 25, 'mlp_dim': 6400,
                               'num_decoder_layers': 48}, overrides)


_PANGU = {**_GPT2, 'vocab_size': 40000, 'activation': 'gelu', 'query_layer': True}


@gin.configurable
def pangu_alpha_350m(**overrides) -> TransformerConfig:
    """PanGu-α 350M (Zeng et al., 2021): 23 GPT layers + a top query layer, 1024 wide, 16 heads."""
    return _preset('pangu_alpha_350m', {**_PANGU, 'emb_dim': 1024, 'num_heads': 16, 'head_dim': 64,
                                        'mlp_dim': 4096, 'num_decoder_layers': 24}, overrides)


@gin.configurable
def pangu_alpha_2_6b(**overrides) -> TransformerConfig:
    """PanGu-α 2.6B: 32 layers (incl. the query layer), 2560 wide, 32 heads."""
    return _preset('pangu_alpha_2_6b', {**_PANGU, 'emb_dim': 2560, 'num_heads': 32, 'head_dim': 80,
                                        'mlp_dim': 10240, 'num_decoder_layers': 32}, overrides)


@gin.configurable
def pangu_alpha_13b(**overrides) -> TransformerConfig:
    """PanGu-α 13B: 40 layers (incl. the query layer), 5120 wide, 40 heads."""
    return _preset('pangu_alpha_13b', {**_PANGU, 'emb_dim': 5120, 'num_heads': 40, 'head_dim': 128,
                                       'mlp_dim': 20480, 'num_decoder_layers': 40}, overrides)


_MOE = dict(num_experts=8, num_experts_per_token=1, expert_capacity_factor=1.25, moe_layer_interval=2)


@gin.configurable
def tiny_moe_decoder(**overrides) -> TransformerConfig:
    """tiny_decoder with a 4-expert Switch (top-1) MLP in its second layer, for tests and smoke runs."""
    return _preset('tiny_moe_decoder', {**_GPT2, 'vocab_size': 512, 'emb_dim': 64, 'num_heads': 4, 'head_dim': 16,
                                        'mlp_dim': 128, 'num_decoder_layers': 2, 'max_length': 128, **_MOE,
                                        'num_experts': 4}, overrides)


@gin.configurable
def pangu_alpha_moe(**overrides) -> TransformerConfig:
    """A PanGu-α-style mixture of experts: PanGu-α 2.6B (2560 wide, 31 GPT layers + the query layer) with 8
    GShard top-2 experts in every GPT layer (the query layer stays dense): 14.0B parameters, 4.3B used per token."""
    return _preset('pangu_alpha_moe', {**_PANGU, 'emb_dim': 2560, 'num_heads': 32, 'head_dim': 80,
                                       'mlp_dim': 10240, 'num_decoder_layers': 32, **_MOE,
                                       'num_experts_per_token': 2, 'moe_layer_interval': 1}, overrides)


# --- Encoder-decoders: T5, BART ----------------------------------------------------------------------------

_T5 = dict(vocab_size=32128, emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048, num_encoder_layers=6,
           num_decoder_layers=6, max_length=512, type_vocab_size=0, activation='relu', gated_mlp=False,
           norm='rmsnorm', norm_eps=1e-6, pre_norm=True, embedding_norm=False, final_norm=True,
           position='t5_relative', relative_num_buckets=32, relative_max_distance=128, use_bias=False,
           scale_attention=False, dropout_rate=0.1, attention_dropout_rate=0.1, activation_dropout_rate=0.1,
           tie_embeddings=True, scale_tied_logits=True, lm_head_bias=False, mlm_head_transform=False,
           init_std=None)
_T5_V1_1 = {**_T5, 'activation': 'gelu_new', 'gated_mlp': True, 'tie_embeddings': False,
            'scale_tied_logits': False}


@gin.configurable
def tiny_encoder_decoder(**overrides) -> TransformerConfig:
    """A 2+2-layer T5 v1.1 (gated GELU, relative bias) for tests and smoke runs."""
    return _preset('tiny_encoder_decoder', {**_T5_V1_1, 'vocab_size': 512, 'emb_dim': 64, 'num_heads': 4,
                                            'head_dim': 16, 'mlp_dim': 128, 'num_encoder_layers': 2,
                                            'num_decoder_layers': 2, 'max_length': 128}, overrides)


@gin.configurable
def t5_small(**overrides) -> TransformerConfig:
    """T5 v1.0 small (Raffel et al., 2020): 6+6 layers, 512 wide, ReLU, tied scaled logits, 60M parameters."""
    return _preset('t5_small', _T5, overrides)


@gin.configurable
def t5_base(**overrides) -> TransformerConfig:
    """T5 v1.0 base: 12+12 layers, 768 wide, 12 heads, 223M parameters."""
    return _preset('t5_base', {**_T5, 'emb_dim': 768, 'num_heads': 12, 'mlp_dim': 3072, 'num_encoder_layers': 12,
                               'num_decoder_layers': 12}, overrides)


@gin.configurable
def switch_base_8(**overrides) -> TransformerConfig:
    """Switch-Base-8 (Fedus et al., 2021): T5-base with a top-1 8-expert MLP in every other layer (layers 1, 3, ..
    of encoder and decoder), capacity factor 1.25; 620M parameters, T5-base's FLOPs per token."""
    return _preset('switch_base_8', {**_T5, 'emb_dim': 768, 'num_heads': 12, 'mlp_dim': 3072,
                                     'num_encoder_layers': 12, 'num_decoder_layers': 12, **_MOE}, overrides)


@gin.configurable
def t5_v1_1_small(**overrides) -> TransformerConfig:
    """T5 v1.1 small: 8+8 layers, 512 wide, 6 heads, gated GELU, untied output layer."""
    return _preset('t5_v1_1_small', {**_T5_V1_1, 'num_heads': 6, 'mlp_dim': 1024, 'num_encoder_layers': 8,
                                     'num_decoder_layers': 8}, overrides)


@gin.configurable
def bart_base(**overrides) -> TransformerConfig:
    """BART-base (Lewis et al., 2020): 6+6 post-LN layers, 768 wide, positions offset by 2, 139M parameters."""
    return _preset('bart_base', dict(
        vocab_size=50265, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=6,
        num_decoder_layers=6, max_length=1024, type_vocab_size=0, activation='gelu', norm='layernorm', norm_eps=1e-5,
        pre_norm=False, embedding_norm=True, final_norm=False, position='learned', position_offset=2, use_bias=True,
        dropout_rate=0.1, attention_dropout_rate=0.1, activation_dropout_rate=0.1, tie_embeddings=True,
        lm_head_bias=True, mlm_head_transform=False, init_std=0.02, pad_id=1), overrides)


PRESETS = {fn.__name__: fn for fn in (
    tiny_encoder, bert_base, bert_large, nezha_base, roberta_base, electra_small,
    tiny_decoder, gpt2_small, gpt2_xl, pangu_alpha_350m, pangu_alpha_2_6b, pangu_alpha_13b,
    tiny_encoder_decoder, t5_small, t5_base, t5_v1_1_small, bart_base,
    tiny_moe_decoder, pangu_alpha_moe, switch_base_8)}
