"""How much a quantizer's clip cuts: for each kind of product input that TernaryBERT's 8-bit activation
quantization sees (`quantize.quantized_inputs`: every Projection's input, the query and key of the scores, the
probabilities and value of the context), the largest |x| and the fraction of entries beyond each clip,
over a split's real tokens (padding left out), for a saved model (float, as trained without quantization).

    python scripts/activation_ranges.py runs/minilm_sst2 --task glue_sst2_tsv [--clips 2.5,4] [--batches 14]
"""
import argparse
import collections

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax import linen as nn

import plmjax.tasks  # noqa: F401  (registers the tasks)
from plmjax import models
from plmjax.compression import quantize
from plmjax.train import saved_model


def _token_mask(x, mask, site):
    """The [batch, length] mask of real tokens in x's layout at `site`; all of x for a pooled input [batch, d]."""
    if site == "query":  # [batch, q, heads, kv]
        return mask[:, :, None, None]
    if site in ("key", "value"):  # [batch, heads, k, kv]
        return mask[:, None, :, None]
    if site == "probabilities":  # [batch, heads, q, k]
        return mask[:, None, :, None] & mask[:, None, None, :]
    if x.ndim >= 3 and x.shape[1] == mask.shape[1]:  # a Projection's input [batch, length, ...]
        return mask.reshape(mask.shape + (1,) * (x.ndim - 2))
    return jnp.ones(x.shape, bool)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="glue_sst2_tsv")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=0, help="0: the whole split")
    parser.add_argument("--clips", default="2.5")
    args = parser.parse_args()
    clips = [float(c) for c in args.clips.split(",")]
    saved = saved_model.load_saved_model(args.checkpoint)
    model = models.build_model(saved.architecture, saved.config, **(saved.metadata.get("head_options") or {}))
    stats = collections.defaultdict(lambda: [0.0, 0, np.zeros(len(clips))])  # max, entries, beyond each clip
    batch_mask = []

    def record(site, x):
        m = jnp.broadcast_to(_token_mask(x, batch_mask[0], site), x.shape)
        a = jnp.abs(x.astype(jnp.float32))
        s = stats[site]
        s[0] = max(s[0], float(jnp.max(jnp.where(m, a, 0.0))))
        s[1] += int(jnp.sum(m))
        s[2] += np.array([float(jnp.sum(m & (a > c))) for c in clips])

    def intercept(next_fun, fargs, kwargs, context):
        for site, x in zip(quantize.quantized_inputs(context.module, context.method_name), fargs):
            record(site, x)
        return next_fun(*fargs, **kwargs)

    ds = seqio.get_mixture_or_task(args.task).get_dataset({"inputs": args.length}, split=args.split, shuffle=False)
    rows = list(ds.as_numpy_iterator())
    starts = range(0, len(rows), args.batch_size)
    for start in list(starts)[:args.batches or None]:
        chunk = rows[start:start + args.batch_size]
        ids = np.zeros((len(chunk), args.length), np.int32)
        types = np.zeros_like(ids)
        for i, ex in enumerate(chunk):
            n = min(args.length, len(ex["inputs"]))
            ids[i, :n], types[i, :n] = ex["inputs"][:n], ex["token_types"][:n]
        mask = np.arange(args.length)[None] < np.array([min(args.length, len(ex["inputs"])) for ex in chunk])[:, None]
        batch_mask[:] = [jnp.asarray(mask)]
        with nn.intercept_methods(intercept):
            model.apply({"params": saved.params}, jnp.asarray(ids), input_mask=jnp.asarray(mask),
                        token_type_ids=jnp.asarray(types), deterministic=True)
    print(f"{args.checkpoint}, {args.task} {args.split}, real tokens only\n")
    print("| product input | max abs | " + " | ".join(f"beyond {c:g}" for c in clips) + " |")
    print("|---|---:|" + "---:|" * len(clips))
    for site, (peak, entries, beyond) in stats.items():
        print(f"| {site} | {peak:.2f} | " + " | ".join(f"{100 * b / entries:.2f}%" for b in beyond) + " |")


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    main()
