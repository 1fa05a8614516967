"""TinyBERT distillation (Jiao et al., 2020) as a wrapper module and a pure objective: teacher and student in one step.

`Distillation` holds the frozen teacher, the student and the learnable projection(s) student width -> teacher
width as one parameter tree, so the trainer's (module, objective) contract holds:

    {'teacher': <the teacher's parameters>, 'student': <the student's>, 'projection': {'fit_dense': Dense}}

(or {'projection': {'embedding': W_e, 'hidden': W_h}} with `separate_projections`, the paper's formulation).
The teacher's parameters enter its forward pass through `jax.lax.stop_gradient` (no gradient is computed for
them) and `optimizer` puts `optax.set_to_zero` on them (they stay bit-identical), the PEFT pattern
(plmjax/peft/base.py). Each model runs through `plmjax.models.intermediates.capture`, which reads the
pre-softmax attention scores and the hidden states the models sow: no attention code is copied. Both are
ordinary plmjax modules (any encoder architecture, unrolled or scanned), so their parameters load from
`plmjax convert` / `plmjax train` checkpoints (`plmjax.train.init.init_from_checkpoint(..., under=('teacher',))`).

Losses, as the released code computes them (huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py and
general_distill.py); deviations from the paper are marked *code*:
- attention: sum over mapped layers of MSE(student scores, teacher scores) on the scores *before* the softmax
  (the paper's Eq. 7 too: A = QK^T / sqrt(d_k)), with every entry <= -1e2 set to 0 in both (*code*:
  `torch.where(att <= -1e2, 0, att)`, which zeroes the masked keys; the mean still counts those zeros, its
  denominator is heads * length * length);
- hidden states: sum over mapped layers, the embedding output included as layer 0, of MSE(fit_dense(student),
  teacher); *code*: one projection `fit_dense` (with bias) shared by the embedding output and every layer; the
  paper's separate W_e (embeddings) and W_h (layers) with `separate_projections=True`;
- prediction: soft cross-entropy `mean(-softmax(t / T) * log_softmax(s / T))`, *code*: the mean runs over the
  batch **and the labels** (the paper's Eq. 10 sums over labels: the code's loss is that / num_labels), with no
  T^2 factor; regression (*code*): MSE of the student's prediction against the gold label, not the teacher's;
- stage 1 (`stage='intermediate'`, task distillation) and general distillation (`stage='general'`, on a
  pre-training corpus): loss = attention + hidden; stage 2 (`stage='prediction'`): loss = prediction only
  (*code*: the two stages are separate runs, `--pred_distill`); `stage='all'` sums the three (the paper's single
  loss, and TernaryBERT's / BinaryBERT's code with both `--pred_distill` and `--intermediate_distill`).
- TernaryBERT / BinaryBERT students (`DistillRun.quantize`): the student is `quantize.quantized_model` (weights
  fake-quantized, every product's input quantized, straight-through gradients to its latent weights), the
  teacher full precision; their code compares the hidden states without a projection (`fit_dense=False`, equal
  widths) and, for regression, the student's prediction with the teacher's (`regression_target='teacher'`).
Each loss is a per-example mean over the batch: the trainer's (sum, count) metrics give exactly the code's
batch mean, and gradient accumulation gives the full batch's gradient.

Layer mapping g (`layer_map`): student layer m (1..M) learns from teacher layer g(m) (1..N); hidden state 0 (the
embeddings) from the teacher's hidden state 0. 'uniform' (default) g(m) = m * N / M, the code's rule
(`teacher_atts[i * k + k - 1]` for student attention i, `teacher_reps[i * k]` for hidden state i; N % M == 0
required, as the code asserts); 'top' g(m) = N - M + m; 'bottom' g(m) = m; or an explicit tuple (g(1), ..., g(M)).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from plmjax.compression import quantize as quantize_lib
from plmjax.models import intermediates
from plmjax.objectives import finetune as finetune_objectives
from plmjax.objectives import mlm as mlm_objective
from plmjax.objectives.base import Objective, example_weights

TEACHER, STUDENT, PROJECTION = 'teacher', 'student', 'projection'
STAGES = ('intermediate', 'prediction', 'general', 'all')
MASKED_SCORE = -1e2  # the released code: scores at or below this are masked entries, set to 0 before the MSE


class DistillationConfigError(ValueError):
    """The teacher and the student cannot be distilled into one another as configured."""


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """stage: 'intermediate' (task distillation stage 1), 'prediction' (stage 2), 'general' or 'all' (the three
      losses summed).
    layer_map: 'uniform' | 'top' | 'bottom' | a tuple of teacher layers g(1..M) (1-based).
    separate_projections: the paper's W_e / W_h instead of the code's one shared `fit_dense`.
    temperature: of the prediction-layer soft cross-entropy.
    fit_dense: False compares the student's hidden states with the teacher's directly (equal widths; the
      TernaryBERT / BinaryBERT code).
    regression_target: 'label' (TinyBERT's code: MSE against the gold value) or 'teacher' (TernaryBERT's: against
      the teacher's prediction)."""
    stage: str = 'intermediate'
    layer_map: Union[str, Sequence[int]] = 'uniform'
    separate_projections: bool = False
    temperature: float = 1.0
    fit_dense: bool = True
    regression_target: str = 'label'


@dataclasses.dataclass(frozen=True)
class DistillRun:
    """A TinyBERT run of `plmjax train` (gin: `train.distill = @distill()`, `distill.stage = ...`): the run's
    MODEL_CONFIG is the student's, `train.init_checkpoint` the student's first parameters (a general-distilled
    student, or the teacher's layers cut out by `plmjax convert --extract --keep_layers`); the teacher is
    `teacher_config` (same architecture as the run) read from `teacher_checkpoint`.
    quantize: None (a full-precision student), or 'ternary' | 'binary' | 'int8' weights for a TernaryBERT /
    BinaryBERT student (`quantize.quantized_model`), its products' inputs at `activation_bits` (None: float)
    with weights and activations clipped at `clip` (the code's 2.5; None: not clipped) before quantization.
    method: 'tinybert' (this module), or 'dynabert': DynaBERT's width- and depth-adaptive training of every
    (width, depth) in `width_mults` x `depth_mults` with loss weights `lambda1` (logits) and `lambda2` (hidden
    states) (`compression.dynabert_train`; the student is the teacher's own config; stage is ignored).
    The other fields are `DistillOptions`'."""
    teacher_config: Any = None
    teacher_checkpoint: Optional[str] = None
    stage: str = 'intermediate'
    layer_map: Union[str, Sequence[int]] = 'uniform'
    separate_projections: bool = False
    temperature: float = 1.0
    fit_dense: bool = True
    regression_target: str = 'label'
    quantize: Optional[str] = None
    activation_bits: Optional[int] = 8
    clip: Optional[float] = 2.5
    method: str = 'tinybert'
    width_mults: Sequence[float] = (1.0, 0.75, 0.5, 0.25)
    depth_mults: Sequence[float] = (1.0,)
    lambda1: float = 1.0
    lambda2: float = 0.1

    @property
    def options(self) -> DistillOptions:
        layers = self.layer_map if isinstance(self.layer_map, str) else tuple(self.layer_map)
        return DistillOptions(self.stage, layers, self.separate_projections, self.temperature, self.fit_dense,
                              self.regression_target)

    def check(self) -> None:
        """One error naming the gin binding that is missing or wrong."""
        if self.teacher_config is None:
            raise DistillationConfigError("distill.teacher_config is not set: bind the teacher's model config, e.g. "
                                          "distill.teacher_config = @teacher/bert_base() with the teacher's sizes "
                                          "under the 'teacher' scope (gin_configs/compression/).")
        if not self.teacher_checkpoint:
            raise DistillationConfigError("distill.teacher_checkpoint is not set: give the fine-tuned (task "
                                          "distillation) or pre-trained (general distillation) teacher's "
                                          "`plmjax train` / `plmjax convert` output directory.")
        if self.stage not in STAGES:
            raise DistillationConfigError(f'distill.stage={self.stage!r}: use one of {STAGES}.')
        if self.quantize is not None and self.quantize not in quantize_lib.METHODS:
            raise DistillationConfigError(f"distill.quantize={self.quantize!r}: use None or one of "
                                          f"{quantize_lib.METHODS}.")
        if self.method not in ('tinybert', 'dynabert'):
            raise DistillationConfigError(f"distill.method={self.method!r}: use 'tinybert' or 'dynabert'.")
        if self.regression_target not in ('label', 'teacher'):
            raise DistillationConfigError(f"distill.regression_target={self.regression_target!r}: use 'label' or "
                                          "'teacher'.")


def layer_map(teacher_layers: int, student_layers: int, kind: Union[str, Sequence[int]] = 'uniform') -> tuple:
    """g: (g(1), ..., g(M)), the teacher layer (1-based) each student layer learns from."""
    n, m = teacher_layers, student_layers
    if m < 1 or m > n:
        raise DistillationConfigError(f'A {m}-layer student cannot distil a {n}-layer teacher (needs 1 <= M <= N).')
    if kind == 'uniform':
        if n % m:
            raise DistillationConfigError(f"layer_map='uniform' needs the teacher's {n} layers to be a multiple of "
                                          f"the student's {m} (TinyBERT's code asserts it): use 'top', 'bottom' or "
                                          'an explicit tuple of teacher layers.')
        return tuple(i * (n // m) for i in range(1, m + 1))
    if kind == 'top':
        return tuple(range(n - m + 1, n + 1))
    if kind == 'bottom':
        return tuple(range(1, m + 1))
    if isinstance(kind, str):
        raise DistillationConfigError(f"layer_map={kind!r}: use 'uniform', 'top', 'bottom' or a tuple of teacher "
                                      'layers.')
    g = tuple(int(layer) for layer in kind)
    if len(g) != m or not all(1 <= layer <= n for layer in g):
        raise DistillationConfigError(f'layer_map={tuple(kind)}: give one teacher layer in 1..{n} for each of the '
                                      f"student's {m} layers.")
    return g


def attention_indices(g: Sequence[int]) -> np.ndarray:
    """Teacher attention index (0-based layer) per student layer."""
    return np.asarray(g, np.int32) - 1


def hidden_indices(g: Sequence[int]) -> np.ndarray:
    """Teacher hidden-state index (0 = embeddings) per student hidden state 0..M."""
    return np.asarray((0, *g), np.int32)


def check_pair(teacher_config, student_config) -> None:
    """One clear error when the two models cannot see the same batches or compare their attention."""
    problems = []
    for field, why in (('vocab_size', 'they must read the same token ids'),
                       ('max_length', 'they must accept the same sequence length'),
                       ('type_vocab_size', 'they must read the same token types'),
                       ('pad_id', 'they must mask the same positions'),
                       ('num_heads', "the attention loss compares head by head (TinyBERT's students keep the "
                                     "teacher's head count)")):
        t, s = getattr(teacher_config, field), getattr(student_config, field)
        if t != s:
            problems.append(f'{field}: teacher {t}, student {s} ({why})')
    if problems:
        raise DistillationConfigError('The teacher and the student do not fit together: ' + '; '.join(problems)
                                      + '. Build the student config from the teacher\'s (same tokenizer, length and '
                                        'heads).')


def _depth(config) -> int:
    return config.num_encoder_layers


class _Held:
    """An unbound flax module kept out of flax's submodule registration: it is applied as a pure function."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __hash__(self):
        return hash(self.module)

    def __eq__(self, other):
        return isinstance(other, _Held) and other.module == self.module


class TeacherStudent(nn.Module):
    """The parameters {'teacher', 'student'} of a frozen teacher and a student applied as pure functions (the
    base of TinyBERT's `Distillation` and DynaBERT's `dynabert_train.AdaptiveDistillation`)."""
    teacher: Any  # _Held
    student: Any  # _Held

    @property
    def config(self):
        return self.student.module.config

    def pair_params(self, args, kwargs):
        """(the teacher's parameters behind stop_gradient, the student's), created at init from each model's own."""
        teacher, student = self.teacher.module, self.student.module
        teacher_params = self.param(TEACHER, lambda rng: teacher.init(rng, *args, **kwargs)['params'])
        student_params = self.param(STUDENT, lambda rng: student.init(rng, *args, **kwargs)['params'])
        return jax.tree.map(jax.lax.stop_gradient, teacher_params), student_params


class Distillation(TeacherStudent):
    """Runs the frozen teacher and the student on the same inputs. Outputs: the student's own outputs (so the
    model evaluates as the student), 'teacher_outputs', and unless the stage is 'prediction' the aligned pairs
    'student_scores' / 'teacher_scores' [M, batch, heads, q, k] and 'student_hidden' (projected, unless
    `fit_dense=False`) / 'teacher_hidden' [M + 1, batch, length, teacher width]."""
    options: DistillOptions = DistillOptions()

    @nn.compact
    def __call__(self, input_ids, *, deterministic: bool = True, **kwargs):
        teacher, student, options = self.teacher.module, self.student.module, self.options
        check_pair(teacher.config, student.config)
        if options.stage not in STAGES:
            raise DistillationConfigError(f'stage={options.stage!r}: use one of {STAGES}.')
        g = layer_map(_depth(teacher.config), _depth(student.config), options.layer_map)
        args = (input_ids,)
        frozen, student_params = self.pair_params(args, kwargs)
        what = () if options.stage == 'prediction' else ('hidden_states', 'attention_scores')
        teacher_out, teacher_inter = intermediates.capture(teacher, {'params': frozen}, *args, what=what,
                                                           deterministic=True, **kwargs)
        rngs = None if deterministic else {'dropout': self.make_rng('dropout')}
        student_out, student_inter = intermediates.capture(student, {'params': student_params}, *args, what=what,
                                                           deterministic=deterministic, rngs=rngs, **kwargs)
        outputs = {**student_out, 'teacher_outputs': teacher_out}
        if options.stage == 'prediction':
            return outputs
        (teacher_stack,), (student_stack,) = teacher_inter.values(), student_inter.values()
        hidden = student_stack['hidden_states']  # [M + 1, batch, length, student width]
        if options.fit_dense:
            hidden = Projection(teacher.config.emb_dim, options.separate_projections, name=PROJECTION)(hidden)
        outputs.update(
            student_scores=student_stack['attention_scores'],  # [M, batch, heads, q, k]
            teacher_scores=teacher_stack['attention_scores'][attention_indices(g)],
            student_hidden=hidden,
            teacher_hidden=teacher_stack['hidden_states'][hidden_indices(g)])
        return outputs


class Projection(nn.Module):
    """Student width -> teacher width for hidden states [M + 1, batch, length, width]: the code's one shared
    'fit_dense', or (separate) the paper's 'embedding' (W_e, hidden state 0) and 'hidden' (W_h, layers)."""
    width: int
    separate: bool = False

    @nn.compact
    def __call__(self, hidden):
        def dense(name):
            return nn.Dense(self.width, name=name, dtype=jnp.float32,
                            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ('embed', 'mlp')),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))
        if not self.separate:
            return dense('fit_dense')(hidden)
        return jnp.concatenate([dense('embedding')(hidden[:1]), dense('hidden')(hidden[1:])], axis=0)


def distillation_model(teacher: nn.Module, student: nn.Module, options: DistillOptions = DistillOptions()):
    """The wrapper module of `teacher` and `student` (plmjax modules, e.g. `build_model('encoder_classifier', ...)`)."""
    check_pair(teacher.config, student.config)
    if not options.fit_dense and teacher.config.emb_dim != student.config.emb_dim:
        raise DistillationConfigError(f"fit_dense=False compares hidden states directly, but the teacher is "
                                      f"{teacher.config.emb_dim} wide and the student {student.config.emb_dim}: keep "
                                      "the projection (fit_dense=True) or give the student the teacher's width.")
    layer_map(_depth(teacher.config), _depth(student.config), options.layer_map)
    return Distillation(_Held(teacher), _Held(student), options)


# ------------------------------------------------------------------------------------------------- losses


def masked_scores(scores, threshold: float = MASKED_SCORE):
    """The code's `torch.where(att <= -1e2, 0, att)`: masked keys (and any score that low) count as 0."""
    scores = scores.astype(jnp.float32)
    return jnp.where(scores <= threshold, 0.0, scores)


def _per_example_mse(a, b):
    """[layers, batch, ...] pairs -> [batch]: the sum over layers of each example's mean squared error."""
    errors = (a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2
    return jnp.sum(jnp.mean(errors.reshape(errors.shape[:2] + (-1,)), axis=-1), axis=0)


def attention_loss(student_scores, teacher_scores):
    """[batch]: sum over mapped layers of MSE of the masked-zeroed pre-softmax scores."""
    return _per_example_mse(masked_scores(student_scores), masked_scores(teacher_scores))


def hidden_loss(student_hidden, teacher_hidden):
    """[batch]: sum over hidden states 0..M of MSE(projected student, teacher)."""
    return _per_example_mse(student_hidden, teacher_hidden)


def soft_cross_entropy(student_logits, teacher_logits, temperature: float = 1.0):
    """[batch]: mean over labels of -softmax(t / T) * log_softmax(s / T) (the code's `.mean()` over batch and
    labels is the batch mean of this)."""
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.mean(-q * log_p, axis=-1)


def _weighted(per_example, weights):
    total = jnp.sum(weights)
    return jnp.sum(per_example * weights), total


def _prediction_loss(batch, outputs, weights, options: DistillOptions, regression: bool, metrics: dict):
    """[batch] prediction-layer loss; adds the accuracy against the labels (classification)."""
    logits = outputs['classification_logits']
    teacher_logits = outputs['teacher_outputs']['classification_logits']
    if regression:
        target = teacher_logits if options.regression_target == 'teacher' else batch['label_values']
        return (logits.astype(jnp.float32).reshape(-1) - target.reshape(-1).astype(jnp.float32)) ** 2
    if 'labels' in batch:
        labels = batch['labels'].reshape(-1)
        labelled = weights * (labels >= 0)
        metrics['accuracy'] = (jnp.sum((jnp.argmax(logits, -1) == labels) * labelled), jnp.sum(labelled))
    return soft_cross_entropy(logits, teacher_logits, options.temperature)


def loss_fn(batch, outputs, *, options: DistillOptions, regression: bool = False):
    """(loss, metrics) of `Distillation`'s outputs; metrics are (sum, count) pairs over examples."""
    weights = example_weights(batch)
    one = jnp.ones((), jnp.float32)
    metrics = {}
    per = jnp.zeros_like(weights, jnp.float32)
    if options.stage in ('prediction', 'all'):
        cls = _prediction_loss(batch, outputs, weights, options, regression, metrics)
        metrics['cls_loss'] = _weighted(cls, weights)
        per = per + cls
    if options.stage != 'prediction':
        att, rep = (attention_loss(outputs['student_scores'], outputs['teacher_scores']),
                    hidden_loss(outputs['student_hidden'], outputs['teacher_hidden']))
        metrics['att_loss'], metrics['rep_loss'] = _weighted(att, weights), _weighted(rep, weights)
        per = per + att + rep
    metrics['loss'] = _weighted(per, weights)
    metrics['num_examples'] = (metrics['loss'][1], one)
    return metrics['loss'][0] / jnp.maximum(metrics['loss'][1], 1.0), metrics


def objective(options: DistillOptions = DistillOptions(), task_kind: str = 'classification') -> Objective:
    """The trainer's objective for `options.stage`: task distillation reads fine-tuning batches ('classification'
    or 'regression' tasks), general distillation pre-training batches (the MLM feature converter; the masks
    are ignored, the teacher and the student read the same tokens)."""
    if options.stage not in STAGES:
        raise DistillationConfigError(f'stage={options.stage!r}: use one of {STAGES}.')
    if task_kind not in ('classification', 'regression'):
        raise DistillationConfigError(f'TinyBERT task distillation handles classification and regression tasks, not '
                                      f'{task_kind!r}.')
    fn = lambda batch, outputs: loss_fn(batch, outputs, options=options,  # noqa: E731
                                        regression=task_kind == 'regression')
    if options.stage == 'general':
        return Objective('tinybert_general', 'encoder', mlm_objective.MLM.feature_converter,
                         mlm_objective.model_inputs, fn)
    return Objective(f'tinybert_{options.stage}', 'encoder_classifier', 'classification',
                     finetune_objectives.model_inputs, fn)


# --------------------------------------------------------------------------------------- frozen teacher


def trainable_mask(params):
    """True on the student and the projection, False on every teacher parameter."""
    return {key: jax.tree.map(lambda _, trainable=key != TEACHER: trainable, value) for key, value in params.items()}


def optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` on the student and projection, `optax.set_to_zero` on the teacher (it stays bit-identical)."""
    labels = lambda p: jax.tree.map(lambda t: 'trainable' if t else 'frozen', trainable_mask(p))  # noqa: E731
    return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)
