#!/usr/bin/env bash
# results/tin-search/run.sh: the expert search methods side by side (the paper's Table 5, at our scale) on four
# downstream sets, over the MoCE model of results/tin-moe (Tiny-ImageNet-32, 8 experts in blocks 10 and 11, 256
# clusters): MoCE's rule, k-NN, LogME, early stop and exhaustive search (which fine-tunes every candidate path and so
# gives each method's choice its accuracy, and the best and the worst path). summarize.py writes README.md.
#
#   results/tin-search/run.sh [MOCE_WEIGHTS]      (from the repository root; a set already searched is skipped)
#
# Sets (100 training images of each of 10 classes each; the held-out 20% of them scores the candidates):
#   cifar10      CIFAR-10's 10 classes (../shared/data/cifar10/train)
#   fmnist       Fashion-MNIST's 10 classes (Debian's dataset-fashion-mnist)
#   tin-A        10 classes of Tiny-ImageNet's A-inanimate group (every 14th of its 140 in wnid order; train split)
#   tin-B        10 classes of its B-organism group (every 6th of its 60)
# Environment: MOCE (build/bin/moce), PER_CLASS (100), EARLY_STEPS (10), FULL_STEPS (30), FT_BATCH (32), FT_LR (0.03),
# SETS (which, default all four).
set -euo pipefail

MODEL=${1:-results/tin-moe/moce/weights.safetensors}
MOCE=${MOCE:-build/bin/moce}
PER_CLASS=${PER_CLASS:-100}
EARLY_STEPS=${EARLY_STEPS:-10}
FULL_STEPS=${FULL_STEPS:-30}
FT_BATCH=${FT_BATCH:-32}
FT_LR=${FT_LR:-0.03}
SETS=${SETS:-"cifar10 fmnist tin-A tin-B"}
OUT=results/tin-search
TIN=../shared/data/tiny-imagenet-32

[ -f "$MODEL" ] || { echo "run.sh: MoCE weights $MODEL not found (make them with EPOCHS=2 results/tin-moe/run.sh)" >&2; exit 2; }
[ -x "$MOCE" ] || { echo "run.sh: $MOCE not built (make build/bin/moce)" >&2; exit 2; }

# Every STEP-th wnid of a group, in wnid order (splits.tsv: wnid, name, split, family).
group_classes() { awk -F'\t' -v g="$1" -v s="$2" 'NR > 1 && $3 == g { if (n++ % s == 0) printf "%s%s", (k++ ? "," : ""), $1 }' "$TIN/splits.tsv"; }

for set in $SETS; do
  case $set in
    cifar10) data=../shared/data/cifar10/train; classes="" ;;
    fmnist)  data=fashion-mnist; classes="" ;;
    tin-A)   data=$TIN/train; classes=$(group_classes A-inanimate 14) ;;
    tin-B)   data=$TIN/train; classes=$(group_classes B-organism 6) ;;
    *) echo "run.sh: unknown set $set" >&2; exit 2 ;;
  esac
  dir=$OUT/$set
  mkdir -p "$dir"
  if [ -f "$dir/search.json" ]; then echo "== $dir: done"; continue; fi
  echo "== $dir: $data ${classes:+(classes $classes)}"
  "$MOCE" search --model "$MODEL" --data "$data" ${classes:+--classes "$classes"} --per-class "$PER_CLASS" \
    --method every --early-steps "$EARLY_STEPS" --full-steps "$FULL_STEPS" --finetune-batch "$FT_BATCH" \
    --finetune-lr "$FT_LR" --out "$dir/search.json" 2>&1 | tee "$dir/search.log"
done
python3 "$OUT/summarize.py"
