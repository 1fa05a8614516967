#!/usr/bin/env bash
# FewCLUE eprstmt: pre-train a tiny Chinese BERT with MLM on FewCLUE's unlabeled text, then fine-tune it
# (classifier head) and train it with PET (cloze pattern + verbalizer on the MLM head); prints the dev accuracy
# of each (the official metric), and the same two runs from random initialization for comparison.
#   bash scripts/fewclue_runs.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/fewclue}
pretrained=$runs/tiny_chinese_bert
[ -f "$pretrained/summary.json" ] || plmjax train --gin_file=gin_configs/experiments/tiny_chinese_bert_mlm.gin \
  --model_dir="$pretrained"
for method in finetune pet; do
  plmjax train --gin_file=gin_configs/experiments/fewclue_eprstmt_$method.gin --model_dir="$runs/eprstmt_$method" \
    --gin_param="INIT_CHECKPOINT = '$pretrained'"
  plmjax train --gin_file=gin_configs/experiments/fewclue_eprstmt_$method.gin --model_dir="$runs/eprstmt_${method}_random"
done
for run in eprstmt_finetune eprstmt_pet eprstmt_finetune_random eprstmt_pet_random; do
  python -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2].ljust(24), 'dev accuracy', \
s.get('validation_accuracy'), 'wall', s['wall_time_s'], 's')" "$runs/$run/summary.json" "$run"
done
