"""Cross-check of the quickstart's MLM learning curve against PyTorch (issue 16): reads batches from plmjax's own
input pipeline for `pydoc_mlm` (ids, targets and loss weights as the objective sees them), trains `transformers`
BertForMaskedLM of the quickstart's size on exactly those batches with plmjax's optimizer recipe (AdamW b1 0.9,
b2 0.999, eps 1e-6, weight decay 0.01 except biases/LayerNorm, clip 1.0, linear warmup then linear decay to 0), and
prints held-out MLM accuracy split by what the input holds at the predicted position ([MASK], kept, random):

    python scripts/mlm_reference_check.py --steps 1500      # ~5 min on 2 shared cores (1 torch thread)
"""
import argparse
import time

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM

import plmjax.tasks  # noqa: F401  (registers pydoc_mlm)
from plmjax.data import feature_converters, pipeline, vocabularies


def batches(split, n, length, batch_size):
    ds = pipeline.get_dataset("pydoc_mlm", task_feature_lengths={"inputs": length, "targets": length},
                              feature_converter=feature_converters.make_feature_converter("encoder"), split=split,
                              batch_size=batch_size, shuffle=split == "train", seed=0, repeat=split == "train")
    out = []
    for i, b in enumerate(ds.as_numpy_iterator()):
        if i >= n:
            break
        out.append((torch.tensor(b["encoder_input_tokens"], dtype=torch.long),
                    torch.tensor(b["encoder_target_tokens"], dtype=torch.long),
                    torch.tensor(b["encoder_loss_weights"]) > 0))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=75)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--eval_every", type=int, default=250)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train = batches("train", args.steps, args.length, args.batch_size)
    held_out = batches("validation", 100, args.length, args.batch_size)
    mask_id = vocabularies.special_tokens(pipeline.vocabulary("pydoc_mlm")).mask_id
    model = BertForMaskedLM(BertConfig(
        vocab_size=4096, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12))
    no_decay = lambda name: "bias" in name or "LayerNorm" in name  # noqa: E731
    groups = [{"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    warm, total = args.warmup, args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, (total - s) / (total - warm)))

    def evaluate():
        model.eval()
        correct, count, loss = {"mask": 0, "kept": 0, "random": 0}, {"mask": 0, "kept": 0, "random": 0}, 0.0
        with torch.no_grad():
            for x, y, w in held_out:
                logits = model(input_ids=x, attention_mask=(x != 0).long()).logits
                loss += torch.nn.functional.cross_entropy(logits[w], y[w], reduction="sum").item()
                hit = logits.argmax(-1) == y
                for kind, where in [("mask", x == mask_id), ("kept", x == y), ("random", (x != mask_id) & (x != y))]:
                    correct[kind] += (hit & w & where).sum().item()
                    count[kind] += (w & where).sum().item()
        model.train()
        n = sum(count.values())
        parts = ", ".join(f"{k} {correct[k] / max(count[k], 1):.3f} ({count[k] / n:.0%})" for k in count)
        return sum(correct.values()) / n, loss / n, parts

    start = time.time()
    for step, (x, y, w) in enumerate(train, 1):
        labels = torch.where(w, y, torch.full_like(y, -100))
        out = model(input_ids=x, attention_mask=(x != 0).long(), labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % args.eval_every == 0 or step == len(train):
            acc, loss, parts = evaluate()
            print(f"step {step}: held-out accuracy {acc:.4f}, loss {loss:.3f} [{parts}]; {time.time() - start:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
