"""The seqio Task definition of each pre-training objective, for `tasks/` to register.

`task_kwargs(objective, source, vocabulary)` returns the keyword arguments of `seqio.TaskRegistry.add`:
the output features and the preprocessor chain text -> tokens -> packed -> corrupted examples.

| objective         | task features                          | converter (feature_converters)         |
|-------------------|----------------------------------------|----------------------------------------|
| mlm               | inputs, targets, masked_lm_weights     | MLMFeatureConverter ('encoder')        |
| lm                | targets                                | LMFeatureConverter ('decoder')         |
| span_corruption   | inputs, targets (T5 sentinels, EOS)    | EncDecFeatureConverter ('encoder_decoder'), or PrefixLM |
"""
import functools

import seqio

from plmjax.data import masking
from plmjax.data import preprocessors
from plmjax.data import span_corruption

OBJECTIVES = ("mlm", "lm", "span_corruption")
MODEL_FAMILY = {"mlm": "encoder", "lm": "decoder", "span_corruption": "encoder_decoder"}


def task_feature_lengths(objective: str, length: int, noise_density: float = 0.15,
                         mean_noise_span_length: float = 3.0) -> dict[str, int]:
    """The `task_feature_lengths` for a model whose encoder (or decoder, for lm) takes `length` tokens.

    mlm -> {'inputs': L, 'targets': L}; lm -> {'targets': L}; span_corruption -> {'inputs': L, 'targets': the
    length T5's noise needs}, e.g. 512 -> 114.
    """
    if objective == "mlm":
        return {"inputs": length, "targets": length}
    if objective == "lm":
        return {"targets": length}
    if objective == "span_corruption":
        _, targets_length = span_corruption.span_corruption_lengths(length, noise_density, mean_noise_span_length)
        return {"inputs": length, "targets": targets_length}
    raise ValueError(f"Unknown pre-training objective {objective!r}; expected one of {OBJECTIVES}.")


def _text_to_tokens():
    return [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    ]


def task_kwargs(objective: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
                **objective_kwargs) -> dict:
    """kwargs for `seqio.TaskRegistry.add(name, **kwargs)`; objective_kwargs go to the corrupting step
    (mlm: noise_density, mask_token_rate, random_token_rate; span_corruption: noise_density,
    mean_noise_span_length)."""
    if objective == "mlm":
        output_features = {
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=False),
            masking.MASKED_LM_WEIGHTS: seqio.Feature(seqio.PassThroughVocabulary(size=2), add_eos=False,
                                                     required=False),
        }
        steps = [masking.pack_for_mlm, functools.partial(masking.mask_tokens, **objective_kwargs)]
    elif objective == "lm":
        if objective_kwargs:
            raise ValueError(f"The lm objective takes no options, got {objective_kwargs}.")
        output_features = {"targets": seqio.Feature(vocabulary, add_eos=False)}
        steps = [preprocessors.pack_for_lm]
    elif objective == "span_corruption":
        output_features = {"inputs": seqio.Feature(vocabulary, add_eos=True),
                           "targets": seqio.Feature(vocabulary, add_eos=True)}
        steps = [functools.partial(span_corruption.span_corruption, **objective_kwargs)]
    else:
        raise ValueError(f"Unknown pre-training objective {objective!r}; expected one of {OBJECTIVES}.")
    return {"source": source, "output_features": output_features, "preprocessors": _text_to_tokens() + steps}
