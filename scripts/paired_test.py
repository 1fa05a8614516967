"""Are two models' dev accuracies different beyond noise? McNemar's exact test on their paired predictions (the
GLUE submission files `plmjax eval` / `plmjax train` write), against the gold labels of the split's TSV:

    python scripts/paired_test.py ../shared/data/glue/SST-2/dev.tsv runs/A/eval/submission/validation/SST-2.tsv \
        runs/B/eval/submission/validation/SST-2.tsv

Prints each model's accuracy, the sentences only A / only B gets right, and the two-sided exact p-value (the
binomial test of the discordant pairs at 1/2)."""
import csv
import sys

from scipy import stats


def _column(path, name):
    with open(path, newline="") as f:
        return [row[name] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def main(gold_path, a_path, b_path):
    gold = _column(gold_path, "label")
    a, b = _column(a_path, "prediction"), _column(b_path, "prediction")
    if not len(gold) == len(a) == len(b):
        raise SystemExit(f"{len(gold)} gold labels, {len(a)} and {len(b)} predictions: not the same split.")
    right_a = [x == g for x, g in zip(a, gold)]
    right_b = [x == g for x, g in zip(b, gold)]
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    n = len(gold)
    print(f"A {100 * sum(right_a) / n:.2f}  B {100 * sum(right_b) / n:.2f}  ({n} examples)")
    print(f"only A right: {only_a}, only B right: {only_b}; McNemar exact two-sided p = {p:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
