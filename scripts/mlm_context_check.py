"""Is there context to learn in the quickstart's MLM batches, and can gradient descent learn it fast? (issue 16)

Reads batches from plmjax's own `pydoc_mlm` pipeline (as scripts/mlm_reference_check.py does) and scores the
held-out [MASK] positions with
  - count models from the train targets: unigram, left bigram, left x right bigram (add-5 unigram smoothing);
  - a neural "neighbour" model (PyTorch): tied embeddings of the left and right input tokens -> dense, GELU,
    LayerNorm -> tied logits, trained on exactly the quickstart's batches with its AdamW recipe (lr 1e-3, no
    schedule) for --steps steps.
If these beat the unigram while a BERT stays at the unigram stage, the batches are fine and the model has not
learnt to route the neighbours' tokens to the [MASK] positions (attention over positions) within the budget.

    python scripts/mlm_context_check.py --steps 1500      # ~2 min on one core
"""
import argparse

import numpy as np
import torch

import plmjax.tasks  # noqa: F401  (registers pydoc_mlm)
from plmjax.data import feature_converters, pipeline, vocabularies


def read(split, n, length, batch_size):
    ds = pipeline.get_dataset("pydoc_mlm", task_feature_lengths={"inputs": length, "targets": length},
                              feature_converter=feature_converters.make_feature_converter("encoder"), split=split,
                              batch_size=batch_size, shuffle=split == "train", seed=0, repeat=split == "train")
    got = [b for _, b in zip(range(n), ds.as_numpy_iterator())]
    x, y, w = (np.concatenate([b[k] for b in got]) for k in
               ("encoder_input_tokens", "encoder_target_tokens", "encoder_loss_weights"))
    return x.astype(np.int64), y.astype(np.int64), w > 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vocab = pipeline.vocabulary("pydoc_mlm")
    size, mask_id = vocab.vocab_size, vocabularies.special_tokens(vocab).mask_id
    x, y, w = read("train", args.steps, args.length, args.batch_size)
    vx, vy, vw = read("validation", 100, args.length, args.batch_size)
    at_mask = vw & (vx == mask_id)
    at_mask[:, [0, -1]] = False  # every scored position has both neighbours
    rows, cols = np.nonzero(at_mask)
    truth = vy[rows, cols]
    print(f"train: {x.shape[0]} rows of {args.length}; held-out [MASK] positions: {truth.size}")

    unigram = np.bincount(y[y > 0], minlength=size) + 0.1
    unigram /= unigram.sum()
    left, right = np.zeros((size, size)), np.zeros((size, size))
    np.add.at(left, (y[:, :-1].ravel(), y[:, 1:].ravel()), 1)  # [previous token, token]
    np.add.at(right, (y[:, 1:].ravel(), y[:, :-1].ravel()), 1)  # [next token, token]

    def smoothed(counts, context):
        c = counts[context]
        return (c + 5.0 * unigram) / (c.sum(1, keepdims=True) + 5.0)

    def report(name, probs):
        print(f"{name:<36} held-out [MASK] accuracy {np.mean(probs.argmax(1) == truth):.3f}, "
              f"cross-entropy {-np.mean(np.log(probs[np.arange(truth.size), truth])):.3f}")

    report("unigram (counts)", np.broadcast_to(unigram, (truth.size, size)))
    report("left bigram (counts)", smoothed(left, vy[rows, cols - 1]))
    both = smoothed(left, vy[rows, cols - 1]) * smoothed(right, vy[rows, cols + 1]) / unigram
    report("left x right bigram (counts)", both / both.sum(1, keepdims=True))

    width = 128
    embed = torch.nn.Embedding(size, width)
    torch.nn.init.normal_(embed.weight, std=0.02)
    from_left, from_right = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
    bias = torch.nn.Parameter(torch.zeros(size))
    params = [embed.weight, bias, *from_left.parameters(), *from_right.parameters()]

    def logits(inputs):
        e = embed(inputs)
        before = torch.nn.functional.pad(e, (0, 0, 1, 0))[:, :-1]
        after = torch.nn.functional.pad(e, (0, 0, 0, 1))[:, 1:]
        h = torch.nn.functional.gelu(from_left(before) + from_right(after))
        return torch.nn.functional.layer_norm(h, (width,)) @ embed.weight.T + bias

    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    tx, ty, tw = torch.tensor(x), torch.tensor(y), torch.tensor(w)
    for step in range(args.steps):
        s = slice(step * args.batch_size, (step + 1) * args.batch_size)
        loss = torch.nn.functional.cross_entropy(logits(tx[s])[tw[s]], ty[s][tw[s]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        probs = torch.softmax(logits(torch.tensor(vx)), -1)[torch.tensor(rows), torch.tensor(cols)].numpy()
    report(f"neighbour model, {args.steps} steps", probs.astype(np.float64))


if __name__ == "__main__":
    main()
