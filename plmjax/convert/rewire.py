"""DynaBERT's network rewiring of a fine-tuned checkpoint (`plmjax convert --rewire --task T`): head and neuron
importance from the task loss's gradients over labelled batches of a split (the released code's
`compute_neuron_head_importance` runs on the dev set), then every layer's heads and FFN neurons reordered by it
(`compression.dynabert.rewire`: the same function). The rewired model is the teacher and the starting point of
width-adaptive training (`distill.method = 'dynabert'`), whose width multipliers keep the first heads and neurons."""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

from plmjax import models, objectives
from plmjax.compression import dynabert
from plmjax.convert import checkpoint
from plmjax.data import batching, feature_converters
from plmjax.train import saved_model


def rewire_checkpoint(model_dir: str, out_dir: str, task: str, *, split: str = 'validation',
                      sequence_length: int = 128, batch_size: int = 32, num_batches: Optional[int] = None) -> dict:
    """Writes the rewired model as step 0 of `<out_dir>` (with its config.gin and tokenizer); returns a summary with
    where the importance came from and each layer's head order."""
    saved = saved_model.load_saved_model(model_dir)
    if saved.architecture != 'encoder_classifier':
        raise ValueError(f'--rewire needs a fine-tuned classification or regression model (encoder_classifier); '
                         f'{model_dir} holds an {saved.architecture!r} model.')
    from plmjax.data.finetune import get_task_info  # data never imports convert: read at run time
    kind = get_task_info(task).kind
    objective = objectives.get_objective(kind)
    lengths = {'inputs': min(sequence_length, saved.config.max_length)}
    found = {}

    def transform(config, params):
        module = models.build_model('encoder_classifier', config, **(saved.metadata.get('head_options') or {}))

        def loss(p, batch):
            outputs = module.apply({'params': p}, **objective.model_inputs(batch), deterministic=True)
            return objective.loss_fn(batch, outputs)[0]
        converter = feature_converters.make_feature_converter(objective.feature_converter)
        batches = (b.features for b in batching.split_batches(task, split, lengths, converter, batch_size,
                                                                num_batches=num_batches))
        head, neuron = dynabert.importance(loss, jax.tree.map(np.asarray, params), batches, config)
        found.update(head_order=[np.argsort(-h, kind='stable').tolist() for h in head])
        return config, dynabert.rewire(params, config, head, neuron)
    converted = checkpoint._rewrite(model_dir, out_dir, None, transform,
                                    f'DynaBERT rewiring by importance on {task}/{split}')
    return {'architecture': converted.architecture, 'importance_from': f'{task}/{split}',
            'head_order': [f'layer {i}: {",".join(map(str, order))}' for i, order in enumerate(found['head_order'])],
            'checkpoint': os.path.abspath(os.path.join(out_dir, 'checkpoints', '0')),
            'gin_file': os.path.abspath(os.path.join(out_dir, 'config.gin'))}
