"""DynaBERT's width- and depth-adaptive training (Hou et al., 2020) as a wrapper module and a pure objective, as the
released code computes it (huawei-noah/Pretrained-Language-Model, DynaBERT/run_glue.py, `train`):

- the teacher is a fixed fine-tuned model (stage 1: the fine-tuned, rewired BERT; stage 2: the width-adaptive
  DynaBERT_W), run once per batch at full size; the student is the rewired model itself (the same config, its
  parameters initialized from the teacher's checkpoint);
- every sub-network, each depth multiplier d (largest first) x each width multiplier w (largest first), runs on
  the same batch in the same step: w keeps the first round(w * heads) heads and round(w * mlp_dim) FFN neurons
  of every layer (hidden size unchanged), d keeps layers floor(i / d) (`dynabert.extract`, here on the traced
  parameters, so the gradient reaches the full model through the kept slices);
- loss per sub-network: lambda1 * soft cross-entropy of its logits against the teacher's (DynaBERT's own
  definition: summed over labels, averaged over the batch, no temperature; regression: 0, *code*) + lambda2 *
  sum over its hidden states j (the embeddings' output first) of MSE(student_j, teacher_{k(j)}), k = floor(j / d)
  for j < round(d * L) and L for the last (*code*: `kept_layers_index` + [n_layers]); the code calls
  `backward()` once per sub-network and steps once, i.e. the gradient of the sum, which is what is minimised
  here. The code's defaults: lambda1 = 1, lambda2 = 0.1 for width-only training (`--width_lambda*`), 1 and 1 with
  depth (`--depth_lambda*`).

*code*, not the paper: in stage 2 the code computes the teacher's outputs once per width but never sets the
teacher's width, so every sub-network learns from the full-size teacher; plmjax does the same (the paper says the
same-width DynaBERT_W).

Parameters: {'teacher': ..., 'student': ...} (`distill.optimizer` freezes the teacher). Outputs: the full
student's own outputs (the run evaluates as the full model) and 'subnetworks', per (w, d) its logits and its
aligned (student, teacher) hidden states.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from plmjax.compression import distill, dynabert
from plmjax.models import intermediates
from plmjax.objectives import finetune as finetune_objectives
from plmjax.objectives.base import Objective, example_weights


@dataclasses.dataclass(frozen=True)
class AdaptiveOptions:
    """width_mults / depth_mults: the sub-networks trained in every step (the code's `--width_mult_list`,
    `--depth_mult_list`); lambda1 / lambda2: the weights of the logit and hidden-state losses."""
    width_mults: Sequence[float] = (1.0, 0.75, 0.5, 0.25)
    depth_mults: Sequence[float] = (1.0,)
    lambda1: float = 1.0
    lambda2: float = 0.1

    def subnetworks(self) -> list[tuple[float, float]]:
        """(width, depth) pairs in the code's order: depth outer, width inner, each largest first."""
        return [(w, d) for d in sorted(self.depth_mults, reverse=True) for w in sorted(self.width_mults, reverse=True)]


def subnetwork_name(width: float, depth: float) -> str:
    return f"w{width:g}_d{depth:g}"


def teacher_hidden_indices(num_layers: int, depth: float) -> np.ndarray:
    """The teacher hidden state each student hidden state of the depth-d sub-network matches (0 = embeddings):
    the code's `kept_layers_index` (floor(i / d) for i < round(d L)) followed by L."""
    return np.asarray([math.floor(i / depth) for i in range(round(depth * num_layers))] + [num_layers], np.int32)


def check_options(config, options: AdaptiveOptions) -> None:
    for w, d in options.subnetworks():
        if not (0 < w <= 1 and 0 < d <= 1):
            raise distill.DistillationConfigError(f"distill.width_mults / depth_mults: {w}, {d}: use values in (0, 1].")
        if min(round(w * config.num_heads), round(w * config.mlp_dim), round(d * config.num_encoder_layers)) < 1:
            raise distill.DistillationConfigError(
                f"distill.width_mults / depth_mults: width {w} x depth {d} leaves no head, neuron or layer of a "
                f"{config.num_heads}-head, {config.num_encoder_layers}-layer model.")


class AdaptiveDistillation(distill.TeacherStudent):
    """The frozen teacher and every (width, depth) sub-network of the student on the same inputs."""
    options: AdaptiveOptions = AdaptiveOptions()

    @nn.compact
    def __call__(self, input_ids, *, deterministic: bool = True, **kwargs):
        teacher, student, options = self.teacher.module, self.student.module, self.options
        args = (input_ids,)
        frozen, student_params = self.pair_params(args, kwargs)
        teacher_out, teacher_inter = intermediates.capture(teacher, {'params': frozen}, *args, what=('hidden_states',),
                                                           deterministic=True, **kwargs)
        (teacher_stack,) = teacher_inter.values()
        teacher_hidden = teacher_stack['hidden_states']  # [L + 1, batch, length, width]
        rngs = None if deterministic else {'dropout': self.make_rng('dropout')}
        outputs, subnetworks = None, {}
        for width, depth in options.subnetworks():
            config, params = dynabert.extract(student_params, student.config, width, depth)
            sub_out, sub_inter = intermediates.capture(student.clone(config=config), {'params': params}, *args,
                                                       what=('hidden_states',), deterministic=deterministic,
                                                       rngs=rngs, **kwargs)
            (stack,) = sub_inter.values()
            subnetworks[subnetwork_name(width, depth)] = {
                'logits': sub_out['classification_logits'],
                'student_hidden': stack['hidden_states'],  # [round(d L) + 1, batch, length, width]
                'teacher_hidden': teacher_hidden[teacher_hidden_indices(student.config.num_encoder_layers, depth)]}
            if (width, depth) == (1.0, 1.0):
                outputs = sub_out
        if outputs is None:  # the full model is not among the trained sub-networks: its outputs, for evaluation
            outputs = student.apply({'params': student_params}, *args, deterministic=True, **kwargs)
        return {**outputs, 'teacher_outputs': teacher_out, 'subnetworks': subnetworks}


def adaptive_model(teacher: nn.Module, student: nn.Module, options: AdaptiveOptions = AdaptiveOptions()):
    """The wrapper of the fine-tuned `teacher` and the student to train at every (width, depth) of `options`."""
    distill.check_pair(teacher.config, student.config)
    if teacher.config.emb_dim != student.config.emb_dim:
        raise distill.DistillationConfigError(
            f"DynaBERT's student is the teacher's own (rewired) model: the teacher is {teacher.config.emb_dim} wide "
            f"and the student {student.config.emb_dim}; use the teacher's config for both.")
    check_options(student.config, options)
    return AdaptiveDistillation(distill._Held(teacher), distill._Held(student), options)


def soft_cross_entropy(student_logits, teacher_logits):
    """[batch]: DynaBERT's `-sum(softmax(t) * log_softmax(s), -1)` (its `.mean()` is the batch mean)."""
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1) * log_p, axis=-1)


def loss_fn(batch, outputs, *, options: AdaptiveOptions, regression: bool = False):
    """(loss, metrics): the sum over sub-networks of lambda1 * logit loss + lambda2 * hidden loss, per example;
    metrics per sub-network (`logit_loss/w0.5_d1`, `rep_loss/...`, `accuracy/...` against the labels)."""
    weights = example_weights(batch)
    teacher_logits = outputs['teacher_outputs']['classification_logits']
    per, metrics = jnp.zeros_like(weights), {}
    labels = batch['labels'].reshape(-1) if 'labels' in batch and not regression else None
    for name, sub in outputs['subnetworks'].items():
        logit = jnp.zeros_like(weights) if regression else soft_cross_entropy(sub['logits'], teacher_logits)
        rep = distill.hidden_loss(sub['student_hidden'], sub['teacher_hidden'])
        per = per + options.lambda1 * logit + options.lambda2 * rep
        metrics[f'logit_loss/{name}'] = (jnp.sum(logit * weights), jnp.sum(weights))
        metrics[f'rep_loss/{name}'] = (jnp.sum(rep * weights), jnp.sum(weights))
        if labels is not None:
            labelled = weights * (labels >= 0)
            metrics[f'accuracy/{name}'] = (jnp.sum((jnp.argmax(sub['logits'], -1) == labels) * labelled),
                                           jnp.sum(labelled))
    metrics['loss'] = (jnp.sum(per * weights), jnp.sum(weights))
    metrics['num_examples'] = (metrics['loss'][1], jnp.ones((), jnp.float32))
    return metrics['loss'][0] / jnp.maximum(metrics['loss'][1], 1.0), metrics


def objective(options: AdaptiveOptions = AdaptiveOptions(), task_kind: str = 'classification') -> Objective:
    """The trainer's objective of DynaBERT's adaptive training on a classification or regression task."""
    if task_kind not in ('classification', 'regression'):
        raise distill.DistillationConfigError(f'DynaBERT trains classification and regression tasks, not '
                                              f'{task_kind!r}.')
    fn = lambda batch, outputs: loss_fn(batch, outputs, options=options,  # noqa: E731
                                        regression=task_kind == 'regression')
    return Objective('dynabert', 'encoder_classifier', 'classification', finetune_objectives.model_inputs, fn)
