#!/usr/bin/env bash
# Issue 15's SST-2 experiments on CPU, one after another (docs/compression.md has the results and times):
#   bash scripts/compression_sst2.sh [STEPS_SCALE]   # after bash scripts/finetune_sst2.sh (the teacher)
# The teacher is runs/minilm_sst2 (all-MiniLM-L6-v2 fine-tuned on SST-2); each student's dev accuracy is in its
# run's summary.json / eval/results.md, DynaBERT's sub-networks in runs/dynabert_w/eval/subnetworks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
quiet=(--gin_param='train.progress = False')
t() { local start=$(date +%s); "$@"; echo "wall time (s) of $*: $(( $(date +%s) - start ))"; }
# (a) a 3-layer student cut from the teacher (its layers 1-3), TinyBERT task distillation in two stages
t plmjax convert --extract --keep_layers 1,2,3 --model_dir runs/minilm_sst2 --out runs/minilm_sst2_layers123
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin --model_dir=runs/tinybert3_stage1 \
  "${quiet[@]}" --gin_param='NUM_STEPS = 500' --gin_param='LEARNING_RATE = 1e-4'
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin --model_dir=runs/tinybert3_stage2 \
  "${quiet[@]}" --gin_param="DISTILL_STAGE = 'prediction'" \
  --gin_param="INIT_CHECKPOINT = 'runs/tinybert3_stage1/student'" --gin_param='NUM_STEPS = 500' \
  --gin_param='LEARNING_RATE = 5e-5'
# the same 3-layer student fine-tuned without distillation (the baseline distillation must beat)
t plmjax train --gin_file=gin_configs/experiments/minilm_sst2.gin --model_dir=runs/layers123_finetune "${quiet[@]}" \
  --gin_param='bert_base.num_encoder_layers = 3' --gin_param="INIT_CHECKPOINT = 'runs/minilm_sst2_layers123'" \
  --gin_param='NUM_STEPS = 500' --gin_param='LEARNING_RATE = 5e-5'
# (a) with a longer stage 2 (1,500 steps) from the same stage-1 student
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin --model_dir=runs/tinybert3_stage2_long \
  "${quiet[@]}" --gin_param="DISTILL_STAGE = 'prediction'" \
  --gin_param="INIT_CHECKPOINT = 'runs/tinybert3_stage1/student'" --gin_param='NUM_STEPS = 1500' \
  --gin_param='LEARNING_RATE = 5e-5'
# (d) TernaryBERT: ternary weights, 8-bit activations (every product's inputs, Q, K, probabilities and V included),
# first at the code's clip of 2.5, then as the recipe gin now runs it, unclipped (docs/compression.md)
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_ternary.gin --model_dir=runs/ternary_sst2 "${quiet[@]}" \
  --gin_param='NUM_STEPS = 800' --gin_param='distill.clip = 2.5'
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_ternary.gin --model_dir=runs/ternary_noclip "${quiet[@]}" \
  --gin_param='NUM_STEPS = 800'
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_ternary.gin --model_dir=runs/ternary_noclip_1600 \
  "${quiet[@]}" --gin_param='NUM_STEPS = 1600'
# (d) the same with LAT (loss-aware ternarization), at the code's clip and unclipped
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_ternary.gin --model_dir=runs/lat_sst2 "${quiet[@]}" \
  --gin_param="QUANTIZE = 'lat'" --gin_param='NUM_STEPS = 800' --gin_param='distill.clip = 2.5'
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_ternary.gin --model_dir=runs/lat_noclip "${quiet[@]}" \
  --gin_param="QUANTIZE = 'lat'" --gin_param='NUM_STEPS = 800'
# (d) BinaryBERT: the ternary student split (TWS) into two binary weights a tensor, then binary fine-tuning
t plmjax convert --tws --model_dir runs/ternary_sst2/student --out runs/ternary_sst2_tws
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_binary.gin --model_dir=runs/binary_sst2 "${quiet[@]}" \
  --gin_param='distill.clip = 2.5'
t plmjax convert --tws --model_dir runs/ternary_noclip_1600/student --out runs/ternary_noclip_1600_tws
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_binary.gin --model_dir=runs/binary_noclip "${quiet[@]}" \
  --gin_param="INIT_CHECKPOINT = 'runs/ternary_noclip_1600_tws'"
# (c) DynaBERT: rewire, then width-adaptive training
t plmjax convert --rewire --task glue_sst2_tsv --sequence_length 64 --model_dir runs/minilm_sst2 \
  --out runs/minilm_sst2_rewired
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_dynabert.gin --model_dir=runs/dynabert_w "${quiet[@]}"
# (b) TinyBERT4's shape, task distillation in two stages (500 + 500 steps): tinybert4 RUN_PREFIX [stage-1 flags]
tinybert4() {
  local prefix=$1; shift
  t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert4.gin --model_dir=runs/${prefix}_stage1 \
    "${quiet[@]}" --gin_param='NUM_STEPS = 500' "$@"
  t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert4.gin --model_dir=runs/${prefix}_stage2 \
    "${quiet[@]}" --gin_param="DISTILL_STAGE = 'prediction'" \
    --gin_param="INIT_CHECKPOINT = 'runs/${prefix}_stage1/student'" --gin_param='NUM_STEPS = 500' \
    --gin_param='LEARNING_RATE = 5e-5'
}
tinybert4 tinybert4  # from random initialization
# from general distillation on WikiText-2 (the pre-trained MiniLM the teacher, attention and hidden states only)
t plmjax train --gin_file=gin_configs/compression/minilm_general_tinybert4.gin --model_dir=runs/tinybert4_general \
  "${quiet[@]}"
tinybert4 tinybert4_gd --gin_param="INIT_CHECKPOINT = 'runs/tinybert4_general/student'"
# TinyBERT's data augmentation on a 4,000-sentence subset of the training set: an MLM for the candidates
# (all-MiniLM-L6-v2 with an MLM head trained on WikiText-2), the subset with its augmented copies and alone; the
# 3-layer student distilled on each, and plainly fine-tuned on the subset
t plmjax train --gin_file=gin_configs/compression/minilm_mlm_wikitext2.gin --model_dir=runs/minilm_mlm_wikitext2 \
  "${quiet[@]}"
t plmjax augment --gin_file=gin_configs/compression/augment.gin --mlm runs/minilm_mlm_wikitext2 --task SST-2 \
  --out runs/glue_aug4k --limit 4000
t plmjax augment --gin_file=gin_configs/compression/augment.gin --mlm runs/minilm_mlm_wikitext2 --task SST-2 \
  --out runs/glue_4k --limit 4000 --gin_param='augment.copies = 0'
for data in aug4k 4k; do
  t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin \
    --model_dir=runs/tinybert3_${data}_stage1 "${quiet[@]}" --gin_param="GLUE_DIR = 'runs/glue_${data}'" \
    --gin_param='NUM_STEPS = 500' --gin_param='LEARNING_RATE = 1e-4'
  t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin \
    --model_dir=runs/tinybert3_${data}_stage2 "${quiet[@]}" --gin_param="GLUE_DIR = 'runs/glue_${data}'" \
    --gin_param="DISTILL_STAGE = 'prediction'" --gin_param="INIT_CHECKPOINT = 'runs/tinybert3_${data}_stage1/student'" \
    --gin_param='NUM_STEPS = 500' --gin_param='LEARNING_RATE = 5e-5'
done
t plmjax train --gin_file=gin_configs/experiments/minilm_sst2.gin --model_dir=runs/layers123_4k_finetune "${quiet[@]}" \
  --gin_param="GLUE_DIR = 'runs/glue_4k'" --gin_param='bert_base.num_encoder_layers = 3' \
  --gin_param="INIT_CHECKPOINT = 'runs/minilm_sst2_layers123'" --gin_param='NUM_STEPS = 500' \
  --gin_param='LEARNING_RATE = 5e-5'
# (c) DynaBERT's width- and depth-adaptive stage from DynaBERT_W (12 sub-networks a step)
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_dynabert.gin --model_dir=runs/dynabert_wd "${quiet[@]}" \
  --gin_param="TEACHER_CHECKPOINT = 'runs/dynabert_w/student'" --gin_param="INIT_CHECKPOINT = 'runs/dynabert_w/student'" \
  --gin_param="DEPTH_MULTS = (1.0, 0.75, 0.5)" --gin_param="LAMBDA2 = 1.0" --gin_param='NUM_STEPS = 100'
# augmentation with the longer stage 2, against plain fine-tuning on the same subset for as many steps
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert3.gin --model_dir=runs/tinybert3_aug4k_stage2_long \
  "${quiet[@]}" --gin_param="GLUE_DIR = 'runs/glue_aug4k'" --gin_param="DISTILL_STAGE = 'prediction'" \
  --gin_param="INIT_CHECKPOINT = 'runs/tinybert3_aug4k_stage1/student'" --gin_param='NUM_STEPS = 1500' \
  --gin_param='LEARNING_RATE = 5e-5'
t plmjax train --gin_file=gin_configs/experiments/minilm_sst2.gin --model_dir=runs/layers123_4k_finetune_long "${quiet[@]}" \
  --gin_param="GLUE_DIR = 'runs/glue_4k'" --gin_param='bert_base.num_encoder_layers = 3' \
  --gin_param="INIT_CHECKPOINT = 'runs/minilm_sst2_layers123'" --gin_param='NUM_STEPS = 1500' \
  --gin_param='LEARNING_RATE = 5e-5'
# (b) TinyBERT4's shape with augmentation (the 4,000-sentence subset and its copies)
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert4.gin --model_dir=runs/tinybert4_aug4k_stage1 \
  "${quiet[@]}" --gin_param="GLUE_DIR = 'runs/glue_aug4k'" --gin_param='NUM_STEPS = 500'
t plmjax train --gin_file=gin_configs/compression/minilm_sst2_tinybert4.gin --model_dir=runs/tinybert4_aug4k_stage2 \
  "${quiet[@]}" --gin_param="GLUE_DIR = 'runs/glue_aug4k'" --gin_param="DISTILL_STAGE = 'prediction'" \
  --gin_param="INIT_CHECKPOINT = 'runs/tinybert4_aug4k_stage1/student'" --gin_param='NUM_STEPS = 500' \
  --gin_param='LEARNING_RATE = 5e-5'
