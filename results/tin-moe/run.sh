#!/usr/bin/env bash
# results/tin-moe/run.sh: MoCE stage two on Tiny-ImageNet-32 (issue 13's experiment). From one dense MAE pre-trained
# there (results/tin-mae30) and its Sinkhorn clusters (results/tin-cluster/sinkhorn-M256, remade by that folder's
# run.sh when missing), train for the same epochs and steps:
#   moce            MoCE, 8 experts in the last two blocks, every loss at 0.01 (the paper's settings)
#   moce-nodistill  the same without the distillation loss (the ablation the issue asks for)
#   tokenmoe        V-MoE's TokenMoE, 8 experts in the last two even-numbered blocks, capacity 1.05
#   dense           the MAE continued (the paper's MAE*)
# then evaluate every encoder (k-NN, linear probe, PSNR: moce eval-mae on the val set) and the routing of both MoE
# methods (moce routing on the val set); summarize.py writes README.md from the files.
#
#   results/tin-moe/run.sh [MAE_WEIGHTS]       (from the repository root)
#
# Every run resumes where it stopped (moce train --resume): run the script again after an interruption. Environment:
# EPOCHS (5), BATCH (128), LIMIT (0 = all 50,000 images; a small number checks the script), DATA, MOCE, SEED (0),
# RUNS (which of the four, in order; default all: "moce tokenmoe dense moce-nodistill").
# Only small files go into git (.gitignore here): metrics, configs, eval/routing JSON and PNGs.
set -euo pipefail

MAE=${1:-results/tin-mae30/weights.safetensors}
DATA=${DATA:-../shared/data/tiny-imagenet-32}
MOCE=${MOCE:-build/bin/moce}
EPOCHS=${EPOCHS:-5}
BATCH=${BATCH:-128}
LIMIT=${LIMIT:-0}
SEED=${SEED:-0}
OUT=results/tin-moe
CLUSTERS=${CLUSTERS:-results/tin-cluster/sinkhorn-M256}
RUNS=${RUNS:-moce tokenmoe dense moce-nodistill}

[ -f "$MAE" ] || { echo "run.sh: MAE weights $MAE not found (argument 1)" >&2; exit 2; }
[ -x "$MOCE" ] || { echo "run.sh: $MOCE not built (make build/bin/moce)" >&2; exit 2; }
if [ ! -f "$CLUSTERS/assignments.safetensors" ]; then
  echo "== clusters missing: results/tin-cluster/run.sh $MAE"
  LIMIT=$LIMIT results/tin-cluster/run.sh "$MAE"
fi

train() {  # train NAME METHOD FLAGS...
  local name=$1 method=$2
  shift 2
  local dir=$OUT/$name
  if [ -f "$dir/weights.safetensors" ]; then echo "== $dir: finished"; return; fi
  if [ -f "$dir/checkpoint-last.safetensors" ]; then
    echo "== $dir: resuming"
    "$MOCE" train --resume "$dir"
    return
  fi
  echo "== $dir"
  "$MOCE" train --method "$method" --init "$MAE" --data "$DATA/train" --limit "$LIMIT" --epochs "$EPOCHS" \
    --batch "$BATCH" --seed "$SEED" --warmup-epochs 1 --force --out "$dir" "$@"
}

evaluate() {  # evaluate NAME
  local dir=$OUT/$1
  [ -f "$dir/eval/eval.json" ] || "$MOCE" eval-mae --checkpoint "$dir/weights.safetensors" --train-data "$DATA/train" \
    --test-data "$DATA/val" --limit-train "$LIMIT" --limit-test "$LIMIT" --out "$dir/eval"
}

route() {  # route NAME
  local dir=$OUT/$1
  [ -f "$dir/routing/routing.json" ] || "$MOCE" routing --model "$dir/weights.safetensors" --data "$DATA/val" \
    --limit "$LIMIT" --out "$dir/routing"
}

for r in $RUNS; do
  case $r in
    moce) train moce moce --clusters "$CLUSTERS" ;;
    tokenmoe) train tokenmoe tokenmoe ;;
    dense) train dense dense ;;
    moce-nodistill) train moce-nodistill moce --clusters "$CLUSTERS" --distill-weight 0 ;;
    *) echo "run.sh: RUNS holds '$r', not one of moce tokenmoe dense moce-nodistill" >&2; exit 2 ;;
  esac
done
for r in $RUNS; do evaluate $r; done
# The MAE every run starts from, evaluated the same way (the table's "init" row).
[ -f "$OUT/init/eval/eval.json" ] || "$MOCE" eval-mae --checkpoint "$MAE" --train-data "$DATA/train" \
  --test-data "$DATA/val" --limit-train "$LIMIT" --limit-test "$LIMIT" --out "$OUT/init/eval"
for r in $RUNS; do [ $r = dense ] || route $r; done
python3 $OUT/summarize.py
