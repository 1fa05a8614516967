"""The seqio Task definitions of the further pre-training objectives (`pretraining.py` holds mlm, lm and T5 span
corruption), for `tasks/objectives.py` to register.

| objective      | corruption (module)                            | converter family      | lengths(L)          |
|----------------|------------------------------------------------|-----------------------|---------------------|
| whole_word_mlm | whole words, 80/10/10 (whole_word_masking)     | encoder               | inputs L, targets L |
| pmlm           | per-sequence ratio ~ U[0, 1], 80/10/10 (pmlm)  | encoder               | inputs L, targets L |
| span_masking   | SpanBERT spans + SBO targets (span_masking)    | encoder_span_boundary | inputs L, targets L |
| nsp, sop       | sentence pairs (sentence_pairs) + BERT masking | encoder_sentence_pair | inputs L, targets L |
| electra        | 15% selected: 85% [MASK], 15% kept (masking)   | encoder               | inputs L, targets L |
| bart_denoising | sentence permutation + infilling (denoising)   | encoder_decoder       | inputs L, targets L |
| prefix_lm      | prefix + continuation (prefix_lm_split)        | prefix_lm             | L // 2, L - L // 2  |

`segmenter='jieba'` (whole_word_mlm only) tokenizes Chinese text with word boundaries from jieba.
"""
import functools
from typing import Mapping

import seqio
import tensorflow as tf

from plmjax.data import denoising
from plmjax.data import masking
from plmjax.data import pmlm
from plmjax.data import preprocessors
from plmjax.data import sentence_pairs
from plmjax.data import span_masking
from plmjax.data import whole_word_masking

OBJECTIVES = ("whole_word_mlm", "pmlm", "span_masking", "nsp", "sop", "electra", "bart_denoising", "prefix_lm")
MODEL_FAMILY = {"whole_word_mlm": "encoder", "pmlm": "encoder", "span_masking": "encoder_span_boundary",
                "nsp": "encoder_sentence_pair", "sop": "encoder_sentence_pair", "electra": "encoder",
                "bart_denoising": "encoder_decoder", "prefix_lm": "prefix_lm"}
SEGMENTERS = ("pieces", "jieba")


def task_feature_lengths(objective: str, length: int) -> dict[str, int]:
    """The `task_feature_lengths` for a model that reads `length` tokens (the decoder's total for prefix_lm)."""
    _check_objective(objective)
    if objective == "prefix_lm":
        return {"inputs": length // 2, "targets": length - length // 2}
    return {"inputs": length, "targets": length}


def prefix_lm_split(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """T5's prefix LM: chunks of inputs + targets - 1 tokens, split after `inputs` tokens; the targets end in EOS."""
    inputs_length = preprocessors.feature_length(sequence_length, "inputs", "prefix_lm_split")
    targets_length = preprocessors.feature_length(sequence_length, "targets", "prefix_lm_split")
    eos_id = output_features["targets"].vocabulary.eos_id
    dataset = preprocessors.concatenate_and_split(dataset, length=inputs_length + targets_length - 1,
                                                  separator_id=eos_id, min_length=2)

    def split(features):
        tokens = features["targets"]
        cut = tf.minimum(inputs_length, tf.size(tokens) - 1)  # at least one target token
        return {"inputs": tokens[:cut], "targets": tf.concat([tokens[cut:], [eos_id]], axis=0)}

    return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)


def _side_feature() -> seqio.Feature:
    """A per-token int feature that is not text (weights, positions, labels): passed through, never required."""
    return seqio.Feature(seqio.PassThroughVocabulary(size=2), add_eos=False, required=False)


def _tokenize(segmenter: str = "pieces"):
    rekey = functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})
    if segmenter == "jieba":
        return [rekey, whole_word_masking.tokenize_with_jieba_word_starts]
    return [rekey, functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)]


def task_kwargs(objective: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary, segmenter: str = "pieces",
                **objective_kwargs) -> dict:
    """kwargs for `seqio.TaskRegistry.add(name, **kwargs)`; objective_kwargs go to the corrupting step."""
    _check_objective(objective)
    if segmenter not in SEGMENTERS or (segmenter == "jieba" and objective != "whole_word_mlm"):
        raise ValueError(f"segmenter={segmenter!r} is not available for {objective!r}: 'jieba' serves "
                         "whole_word_mlm on Chinese text; every objective takes 'pieces'.")
    text = {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=False)}
    mlm_features = {**text, masking.MASKED_LM_WEIGHTS: _side_feature()}
    if objective == "whole_word_mlm":
        pack = whole_word_masking.pack_for_whole_word_mlm if segmenter == "jieba" else masking.pack_for_mlm
        steps = [pack, functools.partial(whole_word_masking.whole_word_mask, **objective_kwargs)]
        features = {**mlm_features, whole_word_masking.WORD_STARTS: _side_feature()}
    elif objective == "pmlm":
        steps = [masking.pack_for_mlm, functools.partial(pmlm.pmlm_mask_tokens, **objective_kwargs)]
        features = mlm_features
    elif objective == "span_masking":
        steps = [masking.pack_for_mlm, functools.partial(span_masking.span_mask, **objective_kwargs)]
        features = {**mlm_features, **{name: _side_feature() for name in span_masking.SPAN_FEATURES}}
    elif objective in ("nsp", "sop"):
        steps = [functools.partial(sentence_pairs.sentence_pairs, task=objective, **objective_kwargs),
                 masking.mask_tokens]
        features = {**mlm_features, sentence_pairs.TOKEN_TYPES: _side_feature(),
                    sentence_pairs.SENTENCE_LABELS: _side_feature()}
    elif objective == "electra":
        rates = {"mask_token_rate": 0.85, "random_token_rate": 0.0, **objective_kwargs}  # ELECTRA's masking
        steps = [masking.pack_for_mlm, functools.partial(masking.mask_tokens, **rates)]
        features = mlm_features
    elif objective == "bart_denoising":
        steps = [functools.partial(denoising.bart_denoising, **objective_kwargs)]
        features = {"inputs": seqio.Feature(vocabulary, add_eos=True),
                    "targets": seqio.Feature(vocabulary, add_eos=True)}
    else:  # prefix_lm
        if objective_kwargs:
            raise ValueError(f"The prefix_lm objective takes no options, got {objective_kwargs}.")
        steps = [prefix_lm_split]
        features = {"inputs": seqio.Feature(vocabulary, add_eos=False),
                    "targets": seqio.Feature(vocabulary, add_eos=True)}
    return {"source": source, "output_features": features, "preprocessors": _tokenize(segmenter) + steps}


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown pre-training objective {objective!r}; expected one of {OBJECTIVES} "
                         "(or mlm, lm, span_corruption of plmjax.data.pretraining).")
