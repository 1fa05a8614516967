"""In-context few-shot classification with a decoder (Brown et al., 2020): rank classification by label likelihood.

Each query's prompt is k demonstrations drawn (seeded) from the demonstration split, then the query:

    Review: a gorgeous film\nSentiment: positive\n\nReview: dull\nSentiment: negative\n\nReview: <query>\nSentiment:

and the predicted label is the one whose answer (' positive', ' negative') has the highest log-likelihood after
the prompt: the sum of its tokens' log-probabilities, or their mean (`normalize='mean'`). Every (query, label)
pair is one row of a fixed-length batch (`plmjax.data.batching`), scored by one jitted forward pass.

    results = evaluate("runs/gpt2/", "glue_sst2_tsv", k=4)   # a plmjax or Hugging Face checkpoint directory
    results['accuracy'], results['predictions']
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from plmjax import convert
from plmjax.data import batching, bpe, finetune
from plmjax.evaluation import metrics as metrics_lib
from plmjax.models import build_model
from plmjax.prompting import templates
from plmjax.train import saved_model

NORMALIZATIONS = ("sum", "mean")


def sample_demonstrations(pool: Sequence[dict], query: dict, k: int, seed: int, query_index: int,
                          text_fields: Sequence[str]) -> list[dict]:
    """k examples of `pool`, drawn without replacement with a generator seeded by (seed, query_index); never the
    query itself (no pool example with the query's texts), so evaluating on the demonstration split is fair."""
    key = tuple(query[f] for f in text_fields)
    candidates = [i for i, example in enumerate(pool) if tuple(example[f] for f in text_fields) != key]
    if k > len(candidates):
        raise ValueError(f"k={k} demonstrations asked for, but the demonstration split has only {len(candidates)} "
                         "other examples; lower k.")
    chosen = np.random.default_rng([seed, query_index]).choice(len(candidates), size=k, replace=False)
    return [pool[candidates[i]] for i in chosen]


def demonstration_text(task: templates.PromptTask, example: dict) -> str:
    return task.prompt.format(**example) + task.answers[example["label"]]


def build_prompt(task: templates.PromptTask, demonstrations: Sequence[dict], query: dict) -> str:
    """The demonstrations with their answers, then the query's prompt (without an answer)."""
    return "".join(demonstration_text(task, d) + task.separator for d in demonstrations) + task.prompt.format(**query)


@dataclasses.dataclass
class ScoringRows:
    """One row per (query, label): `tokens` = prompt + answer, right-padded; `answer_mask` 1 on the answer."""
    tokens: np.ndarray  # [queries * labels, length] int32
    answer_mask: np.ndarray  # [queries * labels, length] float32
    num_demonstrations: np.ndarray  # [queries]: demonstrations that fit max_length


def encode_rows(vocab: seqio.Vocabulary, task: templates.PromptTask, queries: Sequence[dict],
                demonstrations: Sequence[Sequence[dict]], max_length: int, bucket: int = 16) -> ScoringRows:
    """Token rows for every (query, label). A prompt too long for `max_length` loses demonstrations from the front,
    then (with none left) the start of the query. An empty prompt starts with EOS (GPT-2's document start)."""
    answers = [list(vocab.encode(answer)) for answer in task.answers]
    longest_answer = max(len(a) for a in answers)
    if longest_answer >= max_length:
        raise ValueError(f"An answer of {task.name} has {longest_answer} tokens: no room in max_length={max_length}.")
    rows, used = [], []
    for query, demos in zip(queries, demonstrations):
        demos = list(demos)
        while True:
            prompt = list(vocab.encode(build_prompt(task, demos, query)))
            if len(prompt) + longest_answer <= max_length or not demos:
                break
            demos = demos[1:]
        prompt = prompt[len(prompt) + longest_answer - max_length:] if len(prompt) + longest_answer > max_length \
            else prompt
        if not prompt:
            if vocab.eos_id is None:
                raise ValueError("An empty prompt needs a start token, and the vocabulary has no EOS.")
            prompt = [vocab.eos_id]
        used.append(len(demos))
        rows.extend((prompt, answer) for answer in answers)
    length = min(max_length, bucket * math.ceil(max(len(p) + len(a) for p, a in rows) / bucket))
    tokens = np.zeros((len(rows), length), np.int32)
    answer_mask = np.zeros((len(rows), length), np.float32)
    for i, (prompt, answer) in enumerate(rows):
        tokens[i, :len(prompt) + len(answer)] = prompt + answer
        answer_mask[i, len(prompt):len(prompt) + len(answer)] = 1.0
    return ScoringRows(tokens, answer_mask, np.array(used))


def make_scorer(module):
    """A jitted `(params, tokens [b, l], answer_mask [b, l]) -> (log-likelihood sum [b], answer tokens [b])`."""
    @jax.jit
    def score(params, tokens, answer_mask):
        logits = module.apply({"params": params}, tokens, deterministic=True)["logits"]  # [b, l, vocab]
        logits = logits[:, :-1].astype(jnp.promote_types(logits.dtype, jnp.float32))  # position t predicts t + 1
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_log_probs = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]  # [b, l - 1]
        weights = answer_mask[:, 1:].astype(token_log_probs.dtype)
        return jnp.sum(token_log_probs * weights, axis=-1), jnp.sum(weights, axis=-1)
    return score


def answer_log_likelihoods(module, params, rows: ScoringRows, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(summed log-likelihood, answer token count), each [rows], in batches of `batch_size` rows (the last padded
    by `plmjax.data.batching`; its padding rows are dropped)."""
    score = make_scorer(module)
    sums, counts = [], []
    features = {"tokens": rows.tokens, "answer_weights": rows.answer_mask}
    for batch in batching.array_batches(features, batch_size):
        s, c = score(params, batch.features["tokens"], batch.features["answer_weights"])
        sums.append(np.asarray(s)[:batch.num_real])
        counts.append(np.asarray(c)[:batch.num_real])
    if not sums:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(sums), np.concatenate(counts)


def _load(checkpoint_or_params, config) -> tuple[Any, Any]:
    """(config, params) of a decoder from a plmjax checkpoint (`train.saved_model`) or Hugging Face directory, a
    `convert.Converted` / `saved_model.SavedModel`, or a parameter tree with its `config`."""
    if isinstance(checkpoint_or_params, str):
        loader = convert.load_hf if os.path.isfile(os.path.join(checkpoint_or_params, "config.json")) \
            else saved_model.load_saved_model
        checkpoint_or_params = loader(checkpoint_or_params)
    if isinstance(checkpoint_or_params, (convert.Converted, saved_model.SavedModel)):
        if checkpoint_or_params.architecture != "decoder":
            raise ValueError(f"In-context evaluation needs a decoder; the checkpoint holds a "
                             f"{checkpoint_or_params.architecture!r} model.")
        return checkpoint_or_params.config, checkpoint_or_params.params
    if config is None:
        raise ValueError("Parameters without a checkpoint need their model `config` (a TransformerConfig).")
    return config, checkpoint_or_params


def read_examples(task: templates.PromptTask, split: str) -> list[dict]:
    """The labelled examples of DATA's task (plmjax.data.finetune; `import plmjax.tasks` registers them), checked
    to use the prompts' label order."""
    info = finetune.get_task_info(task.name)
    if info.label_names != task.label_names:
        raise ValueError(f"{task.name}: the prompts' labels {task.label_names[:5]}... differ from the task's "
                         f"{info.label_names[:5]}...; fix plmjax/prompting/templates.py.")
    return finetune.read_examples(task.name, split)


def evaluate(checkpoint_or_params, task: str, k: int = 4, *, split: str = "validation",
             demonstration_split: str = "train", seed: int = 0, normalize: str = "sum", batch_size: int = 8,
             max_examples: Optional[int] = None, max_length: Optional[int] = None,
             vocabulary: Optional[seqio.Vocabulary] = None, config=None) -> dict:
    """In-context k-shot evaluation of a decoder on a classification task's split.

    Args:
      checkpoint_or_params: a plmjax checkpoint or Hugging Face directory (GPT-2), a `convert.Converted` or
        `train.saved_model.SavedModel`, or a parameter tree (then pass `config`).
      task: a task with prompts (`plmjax.prompting.templates.PROMPT_TASKS`, e.g. 'glue_sst2_tsv', 'fewclue_tnews').
      k: demonstrations per query, drawn from `demonstration_split` with (seed, query index).
      normalize: 'sum' (answer log-likelihood) or 'mean' (per answer token).
      max_examples: score only the first n queries of the split.
      max_length: longest row (default the model's max_length).
      vocabulary: default GPT-2's byte-level BPE.

    Returns:
      the task's official metrics (0-100) and 'predictions', 'targets', 'example_ids', 'scores' [n, labels],
      'num_examples', 'mean_demonstrations' (after dropping those that did not fit).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: use one of {NORMALIZATIONS}.")
    prompt_task = templates.get_prompt_task(task)
    config, params = _load(checkpoint_or_params, config)
    vocab = vocabulary or bpe.ByteLevelBpeVocabulary()
    if vocab.vocab_size > config.vocab_size:
        raise ValueError(f"The vocabulary has {vocab.vocab_size} ids but the model only {config.vocab_size}.")
    queries = read_examples(prompt_task, split)[:max_examples]
    pool = read_examples(prompt_task, demonstration_split)
    demos = [sample_demonstrations(pool, q, k, seed, i, prompt_task.text_fields) for i, q in enumerate(queries)]
    rows = encode_rows(vocab, prompt_task, queries, demos, max_length or config.max_length)
    sums, counts = answer_log_likelihoods(build_model("decoder", config), params, rows, batch_size)
    scores = (sums / np.maximum(counts, 1) if normalize == "mean" else sums).reshape(len(queries), -1)
    predictions = scores.argmax(axis=-1)
    targets = np.array([q["label"] for q in queries])
    scores_by_metric = metrics_lib.compute_metrics(finetune.get_task_info(task).metrics, list(targets),
                                                   list(predictions))
    return {**scores_by_metric, "predictions": predictions, "targets": targets,
            "example_ids": np.array([q["idx"] for q in queries]), "scores": scores, "num_examples": len(queries),
            "mean_demonstrations": float(rows.num_demonstrations.mean())}
