#!/usr/bin/env bash
# scripts/moce_method.sh: the whole MoCE method end to end on one data set (Fashion-MNIST by default): what `make run`
# runs. Pre-train a tiny MAE, cluster its features (balanced Sinkhorn), continue it as MoCE and as dense (the paper's
# MAE*) for the same steps, then for two downstream tasks made of different class groups: search the expert (MoCE's
# rule, and the exhaustive search that fine-tunes every candidate to find the best and the worst), export the chosen
# path as a plain ViT, fine-tune it, the dense model and the worst expert the same way, and print the table.
#
#   scripts/moce_method.sh                 (from the repository root; every step is skipped when its output is there,
#                                           and a pre-training cut short resumes: run it again after an interruption)
#
# Environment (defaults sized for about 15 minutes on 2 CPU cores): RUN_DIR (runs/quickstart), MOCE (build/bin/moce),
# DATA (fashion-mnist), LIMIT (10000 images for pre-training, clustering and expert training), PRETRAIN_EPOCHS (4),
# BASE_LR (1.5e-3), TRAIN_EPOCHS (1), CLUSTERS (16), TASK_LIMIT (600 training images per task), TEST_LIMIT (600),
# STEPS (40 fine-tuning steps per run), FT_BATCH (32), FT_LR (0.01), DEVICE (cpu).
set -euo pipefail

MOCE=${MOCE:-build/bin/moce}
OUT=${RUN_DIR:-runs/quickstart}
DATA=${DATA:-fashion-mnist}
LIMIT=${LIMIT:-10000}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-4}
BASE_LR=${BASE_LR:-1.5e-3}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-1}
CLUSTERS=${CLUSTERS:-16}
TASK_LIMIT=${TASK_LIMIT:-600}
TEST_LIMIT=${TEST_LIMIT:-600}
STEPS=${STEPS:-40}
FT_BATCH=${FT_BATCH:-32}
FT_LR=${FT_LR:-0.01}
DEVICE=${DEVICE:-cpu}
# The two downstream tasks: name and classes (Fashion-MNIST's names; another DATA needs its own TASKS).
TASKS=${TASKS:-"footwear=Sandal,Sneaker,Ankle boot;tops=T-shirt/top,Pullover,Coat,Shirt"}

[ -x "$MOCE" ] || { echo "moce_method.sh: $MOCE is not built (make build/bin/moce)" >&2; exit 2; }
mkdir -p "$OUT"
say() { printf '\n== %s\n' "$*"; }
START=$(date +%s)

# 1. The dense MAE.
if [ ! -f "$OUT/mae/weights.safetensors" ]; then
  if [ -f "$OUT/mae/checkpoint-last.safetensors" ]; then
    say "pre-training: resuming $OUT/mae"
    "$MOCE" pretrain --resume "$OUT/mae"
  else
    say "pre-training mae_tiny_p4_32 on $LIMIT images of $DATA, $PRETRAIN_EPOCHS epochs"
    "$MOCE" pretrain --data "$DATA" --config mae_tiny_p4_32 --limit "$LIMIT" --epochs "$PRETRAIN_EPOCHS" --batch 128 \
      --base-lr "$BASE_LR" --warmup-epochs 1 --log-every 20 --device "$DEVICE" --force --out "$OUT/mae"
  fi
fi
if [ ! -f "$OUT/mae/eval/eval.json" ]; then
  say "evaluating the MAE: PSNR against flat patches, reconstructions, k-NN, linear probe"
  "$MOCE" eval-mae --checkpoint "$OUT/mae/weights.safetensors" --train-data "$DATA" --test-data "$DATA" \
    --limit-train 5000 --limit-test 1000 --out "$OUT/mae/eval"
fi

# 2. Clusters of its features.
if [ ! -f "$OUT/clusters/clusters.json" ]; then
  say "clustering $LIMIT images into $CLUSTERS balanced clusters"
  "$MOCE" cluster --checkpoint "$OUT/mae/weights.safetensors" --data "$DATA" --limit "$LIMIT" --clusters "$CLUSTERS" \
    --init kmeans++ --lr 0.01 --force --out "$OUT/clusters"
fi

# 3. MoCE and the dense MAE continued, the same images and steps.
train() {  # train NAME FLAGS...
  local name=$1
  shift
  [ -f "$OUT/$name/weights.safetensors" ] && return
  if [ -f "$OUT/$name/checkpoint-last.safetensors" ]; then
    "$MOCE" train --resume "$OUT/$name"
    return
  fi
  say "training $name for $TRAIN_EPOCHS epoch(s) from the MAE"
  "$MOCE" train --init "$OUT/mae/weights.safetensors" --data "$DATA" --limit "$LIMIT" --epochs "$TRAIN_EPOCHS" \
    --batch 128 --warmup-epochs 0 --log-every 20 --device "$DEVICE" --force --out "$OUT/$name" "$@"
}
train moce --method moce --clusters "$OUT/clusters"
train dense --method dense
if [ ! -f "$OUT/moce/routing/routing.json" ]; then
  say "where MoCE routes each class (heatmap)"
  "$MOCE" routing --model "$OUT/moce/weights.safetensors" --data "$DATA" --limit 2000 --out "$OUT/moce/routing"
fi
[ -f "$OUT/dense/vit.safetensors" ] || "$MOCE" export --model "$OUT/dense/weights.safetensors" --out "$OUT/dense/vit.safetensors"

# 4. Per task: search, export, fine-tune the chosen path, the dense model and the worst path.
finetune() {  # finetune MODEL OUT CLASSES
  [ -f "$2/finetune.json" ] && return
  "$MOCE" finetune --model "$1" --data "$DATA" --test-data "$DATA" --classes "$3" --limit "$TASK_LIMIT" \
    --limit-test "$TEST_LIMIT" --lrs "$FT_LR" --seeds 1 --steps "$STEPS" --batch "$FT_BATCH" --log-every 10 --out "$2"
}
IFS=';' read -r -a task_list <<< "$TASKS"
for entry in "${task_list[@]}"; do
  task=${entry%%=*}
  classes=${entry#*=}
  dir=$OUT/tasks/$task
  mkdir -p "$dir"
  if [ ! -f "$dir/search.json" ]; then
    say "task $task ($classes): expert search, MoCE's rule and exhaustive"
    "$MOCE" search --model "$OUT/moce/weights.safetensors" --data "$DATA" --classes "$classes" --limit "$TASK_LIMIT" \
      --method moce,exhaustive --full-steps "$STEPS" --finetune-batch "$FT_BATCH" --finetune-lr "$FT_LR" \
      --out "$dir/search.json"
  fi
  chosen=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['experts'])))" "$dir/search.json")
  worst=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['methods']['exhaustive']['worst_experts'])))" "$dir/search.json")
  [ -f "$dir/chosen.vit.safetensors" ] || "$MOCE" export --model "$OUT/moce/weights.safetensors" --experts "$chosen" \
    --data "$DATA" --classes "$classes" --limit "$TASK_LIMIT" --out "$dir/chosen.vit.safetensors"
  [ -f "$dir/worst.vit.safetensors" ] || "$MOCE" export --model "$OUT/moce/weights.safetensors" --experts "$worst" \
    --out "$dir/worst.vit.safetensors"
  say "task $task: fine-tuning the chosen experts ($chosen), the dense MAE* and the worst experts ($worst)"
  finetune "$dir/chosen.vit.safetensors" "$dir/finetune-chosen" "$classes"
  finetune "$OUT/dense/vit.safetensors" "$dir/finetune-dense" "$classes"
  finetune "$dir/worst.vit.safetensors" "$dir/finetune-worst" "$classes"
done

# 5. The table and where everything is.
python3 "$(dirname "$0")/method_table.py" "$OUT" | tee "$OUT/table.md"
echo
echo "finished in $(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s (steps already done were skipped)"
echo "pictures:"
for f in "$OUT"/mae/loss.png "$OUT"/mae/eval/reconstructions.png "$OUT"/clusters/cluster_samples.png \
         "$OUT"/moce/loss.png "$OUT"/dense/loss.png "$OUT"/moce/routing/*.png "$OUT"/tasks/*/finetune-*/loss_curves.png; do
  [ -f "$f" ] && echo "  $f"
done
echo "table: $OUT/table.md; every step's JSON beside its pictures"
