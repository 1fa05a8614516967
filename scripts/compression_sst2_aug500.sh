#!/usr/bin/env bash
# Issue 15: does TinyBERT's data augmentation help when the task's labelled set is small? The 3-layer student cut
# from the teacher (its layers 1-3), on the first 500 sentences of SST-2's training set:
#   1. plainly fine-tuned on the 500 sentences;
#   2. TinyBERT task distillation (stage 1 then stage 2) on the 500 sentences alone;
#   3. the same on the 500 sentences and their augmented copies (K = 15, p = 0.4, N = 20).
# Each for the same number of steps (300 + 300 for distillation, 300 for fine-tuning); dev accuracy on the whole
# dev split in each run's summary.json (docs/compression.md has the results and times).
#   bash scripts/compression_sst2_aug500.sh      # after bash scripts/finetune_sst2.sh (the teacher)
set -euo pipefail
cd "$(dirname "$0")/.."
quiet=(--gin_param='train.progress = False')
t() { local start=$(date +%s); "$@"; echo "wall time (s) of $*: $(( $(date +%s) - start ))"; }
STEPS=${STEPS:-300}
# finetune DIR DATA STEPS [flags]: the 3-layer cut plainly fine-tuned on runs/glue_DATA
finetune() {
  local dir=$1 data=$2 steps=$3; shift 3
  t plmjax train --gin_file=gin_configs/experiments/minilm_sst2.gin --model_dir=runs/$dir "${quiet[@]}" \
    --gin_param="GLUE_DIR = 'runs/glue_${data}'" --gin_param='bert_base.num_encoder_layers = 3' \
    --gin_param="INIT_CHECKPOINT = 'runs/minilm_sst2_layers123'" --gin_param="NUM_STEPS = $steps" \
    --gin_param='LEARNING_RATE = 5e-5' "$@"
}
# stage1 DIR DATA [flags] / stage2 DIR DATA STAGE1_DIR STEPS [flags]: TinyBERT's two stages on runs/glue_DATA
stage1() {
  local dir=$1 data=$2; shift 2
  t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin --model_dir=runs/$dir "${quiet[@]}" \
    --gin_param="GLUE_DIR = 'runs/glue_${data}'" --gin_param="NUM_STEPS = $STEPS" --gin_param='LEARNING_RATE = 1e-4' \
    "$@"
}
stage2() {
  local dir=$1 data=$2 init=$3 steps=$4; shift 4
  t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin --model_dir=runs/$dir "${quiet[@]}" \
    --gin_param="GLUE_DIR = 'runs/glue_${data}'" --gin_param="DISTILL_STAGE = 'prediction'" \
    --gin_param="INIT_CHECKPOINT = 'runs/$init/student'" --gin_param="NUM_STEPS = $steps" \
    --gin_param='LEARNING_RATE = 5e-5' "$@"
}
paired() {  # McNemar's test of two runs' dev predictions
  python scripts/paired_test.py "${GLUE_DIR:-../shared/data/glue}/SST-2/dev.tsv" \
    runs/$1/eval/submission/validation/SST-2.tsv runs/$2/eval/submission/validation/SST-2.tsv
}
# the MLM that proposes the words, and the student cut from the teacher (skipped when compression_sst2.sh made them)
[ -d runs/minilm_mlm_wikitext2/checkpoints ] || t plmjax train \
  --gin_file=gin_configs/compression/minilm_mlm_wikitext2.gin --model_dir=runs/minilm_mlm_wikitext2 "${quiet[@]}"
[ -d runs/minilm_sst2_layers123/checkpoints ] || t plmjax convert --extract --keep_layers 1,2,3 \
  --model_dir runs/minilm_sst2 --out runs/minilm_sst2_layers123
t plmjax augment --gin_file=gin_configs/compression/augment.gin --mlm runs/minilm_mlm_wikitext2 --task SST-2 \
  --out runs/glue_aug500 --limit 500
t plmjax augment --gin_file=gin_configs/compression/augment.gin --mlm runs/minilm_mlm_wikitext2 --task SST-2 \
  --out runs/glue_500 --limit 500 --gin_param='augment.copies = 0'
finetune layers123_500_finetune 500 $STEPS --gin_param='train.eval_every = 100'
for data in aug500 500; do
  stage1 tinybert3_${data}_stage1 $data
  stage2 tinybert3_${data}_stage2 $data tinybert3_${data}_stage1 $STEPS --gin_param='train.eval_every = 100'
done
# the augmented rows are seen 1.2 times in 300 steps, the 500 sentences 19 times: the longer schedule, both sides
stage2 tinybert3_aug500_stage2_long aug500 tinybert3_aug500_stage1 $((3 * STEPS)) --gin_param='train.eval_every = 300'
finetune layers123_500_finetune_long 500 $((3 * STEPS)) --gin_param='train.eval_every = 300'
paired tinybert3_aug500_stage2 layers123_500_finetune  # augmentation + distillation against plain fine-tuning
paired tinybert3_aug500_stage2 tinybert3_500_stage2
paired tinybert3_aug500_stage2_long layers123_500_finetune_long
# two more seeds (train.seed: data order, dropout, the new head) of plain fine-tuning and augmented distillation
for seed in 1 2; do
  finetune layers123_500_finetune_s$seed 500 $STEPS --gin_param="train.seed = $seed"
  stage1 tinybert3_aug500_stage1_s$seed aug500 --gin_param="train.seed = $seed"
  stage2 tinybert3_aug500_stage2_s$seed aug500 tinybert3_aug500_stage1_s$seed $STEPS --gin_param="train.seed = $seed"
  paired tinybert3_aug500_stage2_s$seed layers123_500_finetune_s$seed
done
